"""Rate limiter arithmetic on a fake clock, and rate-limit header parsing."""

from __future__ import annotations

import datetime as dt
import email.utils

import pytest

from synthvg.llm.limits import RateLimiter, TokenBucket, estimate_tokens, parse_duration
from synthvg.llm.limits import parse_rate_limit_headers as parse_headers
from synthvg.llm.messages import image_part, text_part
from synthvg.llm.retry import retry_after_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("1s", 1.0),
        ("250ms", 0.25),
        ("1h2m3.5s", 3723.5),
        ("20ms", 0.02),
        ("2m", 120.0),
        ("0.5", 0.5),
        ("7.66s", 7.66),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5x", "1s garbage", "ms"])
def test_parse_duration_rejects_garbage(text):
    assert parse_duration(text) is None


def test_parse_rate_limit_headers():
    headers = {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "150000",
        "x-ratelimit-remaining-tokens": "149984",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    requests, tokens = parse_headers(headers, "requests"), parse_headers(headers, "tokens")
    assert (requests.limit, requests.remaining, requests.reset_seconds) == (60, 59, 1.0)
    assert (tokens.limit, tokens.remaining, tokens.reset_seconds) == (150000, 149984, 360.0)
    assert parse_headers({}, "requests") is None


def test_token_bucket_refills_at_the_per_minute_rate():
    clock = Clock()
    bucket = TokenBucket(60, burst_seconds=1.0, clock=clock)  # 1 per second, burst 1
    assert bucket.wait_seconds(1) == 0
    bucket.take(1)
    assert bucket.wait_seconds(1) == pytest.approx(1.0)
    clock.now += 0.25
    assert bucket.wait_seconds(1) == pytest.approx(0.75)
    clock.now += 10
    assert bucket.wait_seconds(1) == 0
    assert bucket.level == pytest.approx(1.0)  # never above the burst


def test_big_requests_go_into_debt_instead_of_blocking_forever():
    clock = Clock()
    bucket = TokenBucket(6000, burst_seconds=1.0, clock=clock)  # 100 tokens/s, capacity 100
    assert bucket.wait_seconds(500) == 0  # needs only a full bucket
    bucket.take(500)
    assert bucket.wait_seconds(100) == pytest.approx(5.0)  # 400 debt + 100 at 100/s


def test_headers_lower_the_rate_and_pause_when_exhausted():
    clock = Clock()
    limiter = RateLimiter(requests_per_minute=120, clock=clock)
    limiter.observe({"x-ratelimit-limit-requests": "600"})
    assert limiter.buckets["requests"].per_minute == 120  # ours is lower: keep it
    limiter.observe({"x-ratelimit-limit-requests": "30"})
    assert limiter.buckets["requests"].per_minute == 30
    limiter.observe({"x-ratelimit-limit-tokens": "90000"})  # learned, none configured
    assert limiter.buckets["tokens"].per_minute == 90000
    limiter.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "250ms"})
    assert limiter.wait_seconds(1) == pytest.approx(0.25)
    clock.now += 0.25
    assert limiter.wait_seconds(1) == 0


def test_remaining_caps_the_local_bucket():
    clock = Clock()
    limiter = RateLimiter(tokens_per_minute=60000, clock=clock)  # 1000/s, capacity 1000
    limiter.observe({"x-ratelimit-remaining-tokens": "300", "x-ratelimit-reset-tokens": "1s"})
    assert limiter.wait_seconds(300) == 0
    assert limiter.wait_seconds(500) == pytest.approx(0.2)


def test_settle_corrects_the_estimate():
    clock = Clock()
    limiter = RateLimiter(tokens_per_minute=60000, clock=clock)
    limiter.buckets["tokens"].take(100)
    limiter.settle(estimated=100, actual=600)
    assert limiter.buckets["tokens"].level == pytest.approx(400)
    limiter.settle(estimated=600, actual=100)
    assert limiter.buckets["tokens"].level == pytest.approx(900)


def test_unlimited_buckets_never_wait():
    limiter = RateLimiter()
    limiter.observe({"x-ratelimit-remaining-requests": "5"})  # no known rate: ignored
    assert limiter.wait_seconds(10**9) == 0


def test_estimate_tokens_counts_text_and_images():
    messages = [
        {"role": "system", "content": "x" * 40},
        {"role": "user", "content": [text_part("y" * 40), image_part(b"\x89PNG" * 1000)]},
    ]
    assert estimate_tokens(messages, image_tokens=765) == 20 + 765 + 8


def test_retry_after_forms():
    assert retry_after_seconds({"retry-after": "2"}) == 2
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "1"}) == 0.25
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    in_30s = retry_after_seconds({"retry-after": email.utils.format_datetime(when, usegmt=True)})
    assert 20 < in_30s <= 30
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None
