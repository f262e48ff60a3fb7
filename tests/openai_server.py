"""A scripted OpenAI-compatible chat server for tests (stdlib only, 127.0.0.1, a free port).

    def reply(request: dict) -> Reply | str: ...
    with ScriptedOpenAIServer(reply) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x")

`POST /v1/chat/completions` (and `/chat/completions`) calls the reply function with the request
JSON and answers with what it returns: a normal completion with `usage` (`Reply.text`), an HTTP
error with an OpenAI-style JSON error body (`Reply.error(429)`), a reply held back for some
seconds so the client times out (`Reply.text(..., delay_s=5)`), or a raw body that is not valid
JSON (`Reply.malformed()`). Every request is recorded in `server.requests` (thread-safe).
`replies_in_order([...])` makes a reply function that returns a fixed list in turn.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import time
from typing import Any, Callable, Iterable


@dataclasses.dataclass
class Reply:
    """What the server sends for one request."""

    content: str | None = None
    status: int = 200
    error_message: str = ""
    raw_body: bytes | None = None
    delay_s: float = 0.0
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def text(cls, content: str, *, delay_s: float = 0.0, finish_reason: str = "stop", **kw: Any) -> "Reply":
        return cls(content=content, delay_s=delay_s, finish_reason=finish_reason, **kw)

    @classmethod
    def error(cls, status: int, message: str = "", *, delay_s: float = 0.0, **kw: Any) -> "Reply":
        return cls(status=status, error_message=message or f"scripted error {status}", delay_s=delay_s, **kw)

    @classmethod
    def malformed(cls, body: bytes = b'{"id": "cmpl-broken", "choices": [', **kw: Any) -> "Reply":
        return cls(raw_body=body, **kw)


def replies_in_order(replies: Iterable[Reply | str], *, then: Reply | str | None = None) -> Callable[[dict], Reply | str]:
    """A reply function returning the given replies one by one, then `then` (or an error 500
    saying the script ran out)."""
    items = list(replies)
    lock = threading.Lock()

    def fn(_request: dict) -> Reply | str:
        with lock:
            if items:
                return items.pop(0)
        return then if then is not None else Reply.error(500, "scripted replies exhausted")

    return fn


def _count_tokens(text: str) -> int:
    return len(text.split())


class _QuietHTTPServer(http.server.ThreadingHTTPServer):
    """Says nothing when a client drops its connection (a killed or timed-out client)."""

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class ScriptedOpenAIServer:
    """The server; start/stop it with `with` or `start()`/`stop()`."""

    def __init__(self, reply_fn: Callable[[dict], Reply | str], *, model: str = "scripted-model"):
        self.reply_fn = reply_fn
        self.model = model
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "ScriptedOpenAIServer":
        handler = self._make_handler()
        httpd = _QuietHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False
        self._httpd = httpd
        host, port = httpd.server_address[:2]
        self._base_url = f"http://{host}:{port}/v1"
        self._thread = threading.Thread(target=httpd.serve_forever, name="scripted-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "ScriptedOpenAIServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """The URL to give the client (stays readable after stop())."""
        assert self._base_url is not None, "server not started"
        return self._base_url

    @property
    def num_requests(self) -> int:
        with self._lock:
            return len(self.requests)

    # -- handler ----------------------------------------------------------------------------
    def _make_handler(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 (stdlib name)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                try:
                    request = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    self._send(400, {"error": {"message": "request body is not JSON", "type": "invalid_request_error"}})
                    return
                with server._lock:
                    server.requests.append(request)
                reply = server.reply_fn(request)
                if isinstance(reply, str):
                    reply = Reply.text(reply)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.raw_body is not None:
                    self._send_bytes(reply.status, reply.raw_body, reply.headers)
                elif reply.status != 200:
                    kind = "rate_limit_exceeded" if reply.status == 429 else "server_error"
                    body = {"error": {"message": reply.error_message, "type": kind, "code": None}}
                    self._send(reply.status, body, reply.headers)
                else:
                    self._send(200, server._completion(request, reply), reply.headers)

            def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
                self._send_bytes(status, json.dumps(body).encode(), headers)

            def _send_bytes(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) or was killed

        return Handler

    def _completion(self, request: dict, reply: Reply) -> dict:
        content = reply.content or ""
        prompt_text = " ".join(str(m.get("content", "")) for m in request.get("messages", []))
        prompt_tokens = reply.prompt_tokens if reply.prompt_tokens is not None else _count_tokens(prompt_text)
        completion_tokens = (
            reply.completion_tokens if reply.completion_tokens is not None else _count_tokens(content)
        )
        return {
            "id": f"chatcmpl-{time.monotonic_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", self.model),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
