"""What the client returns and counts: answers, token usage, running totals, prepared requests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel


class TokenUsage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class LLMResult(BaseModel):
    """One answer. ``cost_usd`` is what this call spent: 0 for a cache hit."""

    content: str
    parsed: dict[str, Any] | None = None
    usage: TokenUsage
    cost_usd: float
    cached: bool
    attempts: int
    request_key: str
    model: str
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


@dataclass
class UsageTotals:
    """Running totals of one client (``requests`` counts HTTP attempts, retries included;
    ``paid_requests`` the answers received and paid for, usable or not)."""

    requests: int = 0
    paid_requests: int = 0
    cached_hits: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class PreparedRequest:
    """The exact chat/completions body, its cache key and its pre-send size estimates."""

    key: str
    body: dict[str, Any]
    est_prompt_tokens: int
    max_output_tokens: int | None

    @property
    def model(self) -> str:
        return self.body["model"]

    @property
    def rate_tokens(self) -> int:
        """What the provider's TPM limit charges up front: prompt estimate + max_tokens."""
        return self.est_prompt_tokens + (self.max_output_tokens or 0)

    def batch_line(self, custom_id: str) -> dict[str, Any]:
        return {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": self.body,
        }


def result_from_response(
    response: Mapping[str, Any], req: PreparedRequest, *, cost: float, cached: bool, attempts: int
) -> LLMResult:
    choice = response["choices"][0]
    message = choice.get("message") or {}
    usage = response.get("usage") or {}
    return LLMResult(
        content=message.get("content") or "",
        usage=TokenUsage(
            prompt_tokens=usage.get("prompt_tokens") or 0,
            completion_tokens=usage.get("completion_tokens") or 0,
        ),
        cost_usd=cost,
        cached=cached,
        attempts=attempts,
        request_key=req.key,
        model=response.get("model") or req.model,
        finish_reason=choice.get("finish_reason"),
        logprobs=choice.get("logprobs"),
    )


def combine(first: LLMResult, second: LLMResult) -> LLMResult:
    """A repaired answer: the second answer, with the cost and attempts of both."""
    return second.model_copy(
        update={
            "usage": TokenUsage(
                prompt_tokens=first.usage.prompt_tokens + second.usage.prompt_tokens,
                completion_tokens=first.usage.completion_tokens + second.usage.completion_tokens,
            ),
            "cost_usd": first.cost_usd + second.cost_usd,
            "cached": first.cached and second.cached,
            "attempts": first.attempts + second.attempts,
        }
    )
