"""A local OpenAI-protocol server for tests and benchmarks; no network, no key, no cost.

Standard library only (``ThreadingHTTPServer`` on 127.0.0.1, port 0, in a background thread).
It serves chat completions plus the files and batches endpoints the Batch API mode needs.
Answers come from a queue of scripted ``Reply`` objects (faults included), then from a
``responder`` function of the request. Every request is recorded, with its headers, so a test
can assert "the rerun made zero requests" or "the key was sent, and only in Authorization"::

    with FakeOpenAIServer(responder=lambda req: '{"ok": true}') as server:
        server.enqueue(Reply.rate_limited(0.1), Reply.server_error())
        config = LLMConfig(model="m", base_url=server.base_url, ...)
"""

from __future__ import annotations

import dataclasses
import email.parser
import email.policy
import itertools
import json
import math
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[dict[str, Any]], "str | Reply"]


@dataclass
class Reply:
    """One scripted answer to a chat request (an answer, an error, or a fault)."""

    content: str | Callable[[dict[str, Any]], str] | None = None  # None: the responder's
    status: int = 200
    error: str = ""
    error_code: str | None = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    finish_reason: str = "stop"
    truncate_body: bool = False
    #: alternatives for the first answer token, as (token, logprob), when logprobs are asked
    top_logprobs: list[tuple[str, float]] | None = None

    @classmethod
    def rate_limited(cls, retry_after: float = 0.1, *, header: str = "retry-after") -> Reply:
        """429; ``header`` is ``retry-after`` (seconds) or ``retry-after-ms``."""
        value = f"{retry_after * 1000:g}" if header == "retry-after-ms" else f"{retry_after:g}"
        return cls(
            status=429,
            error="Rate limit reached for requests",
            error_code="rate_limit_exceeded",
            headers={header: value},
        )

    @classmethod
    def server_error(cls, status: int = 500) -> Reply:
        return cls(status=status, error="The server had an error processing your request.")

    @classmethod
    def slow(cls, seconds: float) -> Reply:
        """A normal answer, after ``seconds`` (past the client's timeout, typically)."""
        return cls(delay=seconds)

    @classmethod
    def truncated_body(cls) -> Reply:
        """HTTP 200 whose JSON body is cut in half (consistent Content-Length)."""
        return cls(truncate_body=True)

    @classmethod
    def bad_request(cls, message: str = "Invalid request.", status: int = 400) -> Reply:
        return cls(status=status, error=message, error_code="invalid_request_error")

    @classmethod
    def reject_response_format(cls) -> Reply:
        """What endpoints without structured outputs answer to ``response_format``."""
        return cls.bad_request(
            "Invalid parameter: 'response_format' of type 'json_schema' is not supported "
            "with this model."
        )


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    received_at: float  # time.monotonic()

    def json(self) -> Any:
        return json.loads(self.body)


def last_user_text(request: dict[str, Any]) -> str:
    for message in reversed(request.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict))
    return ""


def echo_responder(request: dict[str, Any]) -> str:
    """Default answer: a JSON object echoing the last user message."""
    return json.dumps({"echo": last_user_text(request)})


def format_duration(seconds: float) -> str:
    """The ``x-ratelimit-reset-*`` style: ``"250ms"``, ``"1s"``, ``"6m0s"``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    rest_text = f"{round(rest, 3):g}s"
    return f"{int(minutes)}m{rest_text}" if minutes else rest_text


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: FakeOpenAIServer

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]):
        super().__init__(address, handler)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake handler threads parked on idle keep-alive connections so they exit."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is expected here, not an error


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.fake._handle(self)

    def do_POST(self) -> None:
        self.server.fake._handle(self)


def _send(
    h: BaseHTTPRequestHandler,
    status: int,
    payload: bytes,
    *,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> None:
    try:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(payload)
        h.wfile.flush()
    except (BrokenPipeError, ConnectionResetError):
        h.close_connection = True


def _json(data: Any) -> bytes:
    return json.dumps(data).encode()


def _error(message: str, code: str | None = None) -> bytes:
    kind = "rate_limit_error" if code == "rate_limit_exceeded" else "invalid_request_error"
    return _json({"error": {"message": message, "type": kind, "param": None, "code": code}})


class FakeOpenAIServer:
    """See the module docstring. All recorded state is safe to read from the test thread."""

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        latency: float = 0.0,
        requests_per_minute: float | None = None,
        batch_polls: int = 2,
        api_key: str | None = None,
        models: list[str] | None = None,
    ) -> None:
        """``requests_per_minute``: enforce a token-bucket limit (429 past it) and send
        ``x-ratelimit-*-requests`` headers. ``batch_polls``: a batch completes on that many
        ``GET /v1/batches/{id}``. ``api_key``: answer 401 to any other bearer token, as a
        provider does to a wrong key. ``models``: what ``GET /v1/models`` lists, and chat
        requests for any other model get 404 ``model_not_found``; None: every model is
        served and ``/v1/models`` is not (some OpenAI-compatible servers lack it)."""
        self.responder: Responder = responder or echo_responder
        self.latency = latency
        self.batch_polls = batch_polls
        self._rpm = requests_per_minute
        self._bucket = requests_per_minute or 0.0
        self._bucket_stamp = time.monotonic()
        self._lock = threading.Lock()
        self._queue: deque[Reply] = deque()
        self._requests: list[RecordedRequest] = []
        self._in_flight = 0
        self.max_in_flight = 0
        self.rate_limited = 0  # 429s sent by the requests_per_minute limit
        self.api_key = api_key
        self.models = models
        #: (model, prompt_tokens, completion_tokens) of every chat answer delivered whole with
        #: HTTP 200, online or in a batch: what a provider bills.
        self.billed: list[tuple[str, int, int]] = []
        self._ids = itertools.count(1)
        self._files: dict[str, bytes] = {}
        self._batches: dict[str, dict[str, Any]] = {}
        self._batch_polls: dict[str, int] = {}
        self._batch_lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeOpenAIServer:
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-openai",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._httpd is None or self._thread is None:
            return
        self._stop.set()  # cut scripted sleeps short
        self._httpd.shutdown()
        self._httpd.close_connections()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    # ---- scripting and inspection ----------------------------------------------------------

    def enqueue(self, *replies: Reply) -> None:
        """Answer the next chat requests with these, in order, before using the responder."""
        with self._lock:
            self._queue.extend(replies)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        return [r.json() for r in self.requests if r.path == "/v1/chat/completions"]

    @property
    def authorizations(self) -> list[str]:
        return [r.headers.get("authorization", "") for r in self.requests]

    @property
    def batches(self) -> list[dict[str, Any]]:
        with self._batch_lock:
            return [dict(b) for b in self._batches.values()]

    # ---- HTTP --------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        path = h.path.split("?", 1)[0]
        record = RecordedRequest(
            h.command, path, {k.lower(): v for k, v in h.headers.items()}, body, time.monotonic()
        )
        with self._lock:
            self._requests.append(record)
        route = (h.command, path)
        if (
            self.api_key is not None
            and record.headers.get("authorization") != f"Bearer {self.api_key}"
        ):
            _send(
                h,
                401,
                _json(
                    {
                        "error": {
                            "message": "Incorrect API key provided. You can find your API key at https://example.invalid.",
                            "type": "invalid_request_error",
                            "param": None,
                            "code": "invalid_api_key",
                        }
                    }
                ),
            )
        elif route == ("GET", "/v1/models") and self.models is not None:
            models = [
                {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models
            ]
            _send(h, 200, _json({"object": "list", "data": models}))
        elif route == ("POST", "/v1/chat/completions"):
            self._chat(h, record.json())
        elif route == ("POST", "/v1/files"):
            self._upload(h, body)
        elif route == ("POST", "/v1/batches"):
            self._create_batch(h, record.json())
        elif h.command == "GET" and (m := re.fullmatch(r"/v1/files/([\w-]+)/content", path)):
            data = self._files.get(m.group(1))
            if data is None:
                _send(h, 404, _error("No such file"))
            else:
                _send(h, 200, data, content_type="application/octet-stream")
        elif h.command == "GET" and (m := re.fullmatch(r"/v1/batches/([\w-]+)", path)):
            self._get_batch(h, m.group(1))
        else:
            _send(h, 404, _error(f"Unknown route {h.command} {path}"))

    def _rate_check(self) -> tuple[float | None, dict[str, str]]:
        """(seconds to wait when over the limit else None, the x-ratelimit headers)."""
        if self._rpm is None:
            return None, {}
        with self._lock:
            now = time.monotonic()
            rate = self._rpm / 60
            self._bucket = min(self._rpm, self._bucket + (now - self._bucket_stamp) * rate)
            self._bucket_stamp = now
            wait = None if self._bucket >= 1 else (1 - self._bucket) / rate
            if wait is None:
                self._bucket -= 1
            else:
                self.rate_limited += 1
            headers = {
                "x-ratelimit-limit-requests": f"{self._rpm:g}",
                "x-ratelimit-remaining-requests": str(max(0, math.floor(self._bucket))),
                "x-ratelimit-reset-requests": format_duration((self._rpm - self._bucket) / rate),
            }
        return wait, headers

    def _answer(self, request: dict[str, Any], reply: Reply | None) -> Reply:
        if reply is None:
            out = self.responder(request)
            reply = out if isinstance(out, Reply) else Reply(content=out)
        if reply.status == 200 and not isinstance(reply.content, str):
            out = (reply.content or self.responder)(request)
            content = out.content if isinstance(out, Reply) else out
            reply = dataclasses.replace(reply, content=content)
        return reply

    def _completion(self, request: dict[str, Any], reply: Reply) -> dict[str, Any]:
        content = reply.content if isinstance(reply.content, str) else ""
        prompt_tokens = len(json.dumps(request.get("messages", []))) // 4 + 1
        completion_tokens = len(content) // 4 + 1
        logprobs = None
        if request.get("logprobs"):
            tokens = [
                {"token": tok, "logprob": -0.1, "bytes": list(tok.encode()), "top_logprobs": []}
                for tok in re.findall(r"\S+|\s+", content)
            ]
            if tokens and reply.top_logprobs:
                tokens[0]["top_logprobs"] = [
                    {"token": t, "logprob": lp, "bytes": list(t.encode())}
                    for t, lp in reply.top_logprobs
                ]
                tokens[0]["logprob"] = next(
                    (lp for t, lp in reply.top_logprobs if t == tokens[0]["token"]), -0.1
                )
            logprobs = {"content": tokens}
        return {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", "fake-model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": logprobs,
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _unknown_model(self, request: dict[str, Any]) -> Reply | None:
        model = request.get("model")
        if self.models is None or model in self.models:
            return None
        return Reply(
            status=404,
            error=f"The model `{model}` does not exist or you do not have access to it.",
            error_code="model_not_found",
        )

    def _bill(self, completion: dict[str, Any]) -> None:
        usage = completion["usage"]
        with self._lock:
            self.billed.append(
                (completion["model"], usage["prompt_tokens"], usage["completion_tokens"])
            )

    @property
    def paid_requests(self) -> int:
        with self._lock:
            return len(self.billed)

    def _chat(self, h: BaseHTTPRequestHandler, request: dict[str, Any]) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            scripted = self._queue.popleft() if self._queue else None
        try:
            wait, headers = self._rate_check()
            if (unknown := self._unknown_model(request)) is not None:
                reply = unknown
            elif wait is not None:
                reply = Reply.rate_limited(round(wait, 3))
            else:
                reply = self._answer(request, scripted)
            self._stop.wait(self.latency + reply.delay)
            headers = {**headers, **reply.headers}
            if reply.status != 200:
                status, payload = reply.status, _error(reply.error, reply.error_code)
            else:
                completion = self._completion(request, reply)
                status, payload = 200, _json(completion)
                if reply.truncate_body:
                    payload = payload[: len(payload) // 2]
                else:
                    self._bill(completion)
        finally:
            with self._lock:  # before answering: the client may send its next request at once
                self._in_flight -= 1
        _send(h, status, payload, headers=headers)

    # ---- files and batches ---------------------------------------------------------------------

    def _upload(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        head = f"Content-Type: {h.headers.get('Content-Type')}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            fields[str(name)] = (
                part.get_filename(),
                payload if isinstance(payload, bytes) else b"",
            )
        filename, data = fields.get("file", (None, b""))
        file_id = f"file-{next(self._ids)}"
        with self._lock:
            self._files[file_id] = data
        _send(
            h,
            200,
            _json(
                {
                    "id": file_id,
                    "object": "file",
                    "bytes": len(data),
                    "created_at": int(time.time()),
                    "filename": filename or "upload",
                    "purpose": fields.get("purpose", (None, b""))[1].decode(),
                    "status": "processed",
                }
            ),
        )

    def _create_batch(self, h: BaseHTTPRequestHandler, request: dict[str, Any]) -> None:
        input_id = request.get("input_file_id", "")
        if input_id not in self._files:
            _send(h, 400, _error(f"No such file: {input_id}"))
            return
        batch_id = f"batch_{next(self._ids)}"
        lines = self._files[input_id].decode().splitlines()
        batch = {
            "id": batch_id,
            "object": "batch",
            "endpoint": request.get("endpoint"),
            "input_file_id": input_id,
            "completion_window": request.get("completion_window"),
            "status": "validating",
            "created_at": int(time.time()),
            "output_file_id": None,
            "error_file_id": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
        }
        with self._batch_lock:
            self._batches[batch_id] = batch
            self._batch_polls[batch_id] = 0
        _send(h, 200, _json(batch))

    def _get_batch(self, h: BaseHTTPRequestHandler, batch_id: str) -> None:
        with self._batch_lock:
            batch = self._batches.get(batch_id)
            if batch is not None:
                self._batch_polls[batch_id] += 1
                if batch["status"] == "validating":
                    batch["status"] = "in_progress"
                if self._batch_polls[batch_id] >= self.batch_polls:
                    if batch["status"] == "in_progress":
                        self._run_batch(batch)
                snapshot = dict(batch)
        if batch is None:
            _send(h, 404, _error(f"No such batch: {batch_id}"))
        else:
            _send(h, 200, _json(snapshot))

    def _run_batch(self, batch: dict[str, Any]) -> None:
        outputs: list[str] = []
        errors: list[str] = []
        for line in self._files[batch["input_file_id"]].decode().splitlines():
            item = json.loads(line)
            reply = self._unknown_model(item["body"]) or self._answer(item["body"], None)
            row_id = f"batch_req_{next(self._ids)}"
            if reply.status == 200:
                body = self._completion(item["body"], reply)
                self._bill(body)
                outputs.append(
                    json.dumps(
                        {
                            "id": row_id,
                            "custom_id": item["custom_id"],
                            "error": None,
                            "response": {"status_code": 200, "request_id": row_id, "body": body},
                        }
                    )
                )
            else:
                errors.append(
                    json.dumps(
                        {
                            "id": row_id,
                            "custom_id": item["custom_id"],
                            "error": None,
                            "response": {
                                "status_code": reply.status,
                                "request_id": row_id,
                                "body": json.loads(_error(reply.error, reply.error_code)),
                            },
                        }
                    )
                )
        with self._lock:
            for kind, rows in (("output_file_id", outputs), ("error_file_id", errors)):
                if rows:
                    file_id = f"file-{next(self._ids)}"
                    self._files[file_id] = ("\n".join(rows) + "\n").encode()
                    batch[kind] = file_id
            batch["status"] = "completed"
            batch["request_counts"] = {
                "total": len(outputs) + len(errors),
                "completed": len(outputs),
                "failed": len(errors),
            }
