"""The one place that talks to an OpenAI-compatible chat server (OpenAI, a local vLLM, ...).

`LLMClient.chat` sends one chat-completions request through the official `openai` client with the
client's own retries switched off, and retries here instead: 408/409/429, 5xx, timeouts,
connection errors and unreadable response bodies are retried with capped exponential backoff and
jitter (a `Retry-After` header is honoured up to the cap); any other 4xx fails at once. When the
retries run out, `LLMError` says what happened, with the status code, model and base URL, never
the API key: every text that leaves this module (error messages, and reply text too) has the key
replaced by `[REDACTED]` (`redact`), in case a server echoes it (e.g. in a 401 message), and
errors are raised without the `openai` exception chained to them, since its text holds the raw
server message. The key is read only from the environment variable named in the config; with no
key set and a server on this machine (localhost), a dummy key is used. Token usage is counted
across threads in `LLMClient.usage`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import threading
import time
import urllib.parse
from typing import Any, Callable

import openai

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0"})
DUMMY_LOCAL_KEY = "sk-local-no-key"
RETRYABLE_STATUS = frozenset({408, 409, 429})
REDACTED = "[REDACTED]"


def redact(text: str, secret: str) -> str:
    """`text` with every occurrence of `secret` replaced by [REDACTED] (no-op for an empty secret)."""
    return text.replace(secret, REDACTED) if secret else text


@dataclasses.dataclass
class LLMClientConfig:
    """Where and how to reach the server. `base_url=None` means the OpenAI default endpoint."""

    model: str = "gpt-4"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_retries: int = 6  # retries after the first attempt
    backoff_s: float = 1.0  # first backoff; doubles each retry
    backoff_max_s: float = 30.0


@dataclasses.dataclass
class ChatResult:
    """One reply: its text (empty string when the server sent none) and its token counts."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None


@dataclasses.dataclass
class Usage:
    """Running totals over every call made through one client."""

    requests: int = 0  # successful calls
    failed_requests: int = 0  # calls that raised LLMError
    retries: int = 0  # extra attempts made
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class LLMError(RuntimeError):
    """A chat call that failed for good. `status` is the HTTP status (None for timeouts and
    connection errors); `retryable` tells whether more retries could have helped."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status = status
        self.retryable = retryable


def is_local_url(base_url: str | None) -> bool:
    """Whether base_url points at this machine."""
    if not base_url:
        return False
    host = urllib.parse.urlsplit(base_url).hostname or ""
    return host.lower() in LOCAL_HOSTS


def resolve_api_key(config: LLMClientConfig) -> str:
    """The key from the environment; a dummy key for a local server; otherwise an error naming
    the variable (the key itself is never shown)."""
    key = os.environ.get(config.api_key_env, "")
    if key:
        return key
    if is_local_url(config.base_url):
        return DUMMY_LOCAL_KEY
    where = config.base_url or "the default OpenAI endpoint"
    raise LLMError(
        f"environment variable {config.api_key_env} is not set; it must hold the API key for "
        f"{where} (model {config.model})"
    )


class LLMClient:
    """Thread-safe chat client with our own retry/backoff. `sleep` and `rng` are injectable so
    tests can run without real waiting."""

    def __init__(
        self,
        config: LLMClientConfig | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        self.config = config or LLMClientConfig()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self.usage = Usage()
        self._key = resolve_api_key(self.config)
        self._client = openai.OpenAI(
            api_key=self._key,
            base_url=self.config.base_url,
            timeout=self.config.timeout_s,
            max_retries=0,
        )

    # -- public -----------------------------------------------------------------------------
    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        **extra: Any,
    ) -> ChatResult:
        """One chat completion, retried on transient failures. Extra keyword arguments go to
        `chat.completions.create` unchanged (e.g. top_p, stop, seed)."""
        kwargs: dict[str, Any] = dict(extra)
        if temperature is not None:
            kwargs["temperature"] = temperature
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        attempt = 0
        while True:
            try:
                result = self._once(messages, kwargs)
            except _Transient as exc:
                if attempt >= self.config.max_retries:
                    self._count(failed=True)
                    raise LLMError(  # not chained: the openai exception's text is not redacted
                        f"{exc.describe} from {self._where()} after {attempt + 1} attempts "
                        f"(max_retries={self.config.max_retries})",
                        status=exc.status,
                        retryable=True,
                    ) from None
                delay = self.backoff_delay(attempt, exc.retry_after)
                attempt += 1
                self._count(retry=True)
                self._sleep(delay)
                continue
            except LLMError:
                self._count(failed=True)
                raise
            self._count(result=result)
            return result

    def backoff_delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number attempt+1: capped exponential with jitter in
        [base/2, base]; a server's Retry-After wins when it is longer (still capped)."""
        cfg = self.config
        base = min(cfg.backoff_max_s, cfg.backoff_s * (2.0**attempt))
        with self._lock:
            delay = base * (0.5 + 0.5 * self._rng.random())
        if retry_after is not None:
            delay = max(delay, min(retry_after, cfg.backoff_max_s))
        return delay

    # -- internals --------------------------------------------------------------------------
    def _where(self) -> str:
        return f"model {self.config.model!r} at {self.config.base_url or 'default OpenAI endpoint'}"

    def _count(self, *, result: ChatResult | None = None, retry: bool = False, failed: bool = False):
        with self._lock:
            if result is not None:
                self.usage.requests += 1
                self.usage.prompt_tokens += result.prompt_tokens
                self.usage.completion_tokens += result.completion_tokens
            if retry:
                self.usage.retries += 1
            if failed:
                self.usage.failed_requests += 1

    def _once(self, messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> ChatResult:
        try:
            return self._once_unredacted(messages, kwargs)
        except _Transient as exc:
            exc.describe = redact(exc.describe, self._key)
            raise
        except LLMError as exc:
            raise LLMError(redact(str(exc), self._key), status=exc.status, retryable=exc.retryable) from None

    def _once_unredacted(self, messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> ChatResult:
        try:
            resp = self._client.chat.completions.create(
                model=self.config.model, messages=messages, **kwargs
            )
        except openai.APITimeoutError as exc:
            raise _Transient(f"timeout after {self.config.timeout_s:g} s", None, exc) from None
        except openai.APIConnectionError as exc:
            raise _Transient(f"connection error ({exc})", None, exc) from None
        except openai.APIStatusError as exc:
            status = exc.status_code
            message = _error_message(exc)
            if status in RETRYABLE_STATUS or status >= 500:
                raise _Transient(
                    f"HTTP {status} ({message})", status, exc, _retry_after(exc)
                ) from None
            raise LLMError(
                f"HTTP {status} ({message}) from {self._where()}; not retried", status=status
            ) from None
        except (json.JSONDecodeError, openai.APIResponseValidationError) as exc:  # unreadable body
            raise _Transient(f"unreadable response body ({type(exc).__name__}: {exc})", None, exc) from None
        try:
            choice = resp.choices[0]
            text = choice.message.content or ""
            finish = choice.finish_reason
        except (AttributeError, IndexError, TypeError) as exc:
            raise _Transient(f"response without choices ({exc})", None, exc) from None
        usage = getattr(resp, "usage", None)
        return ChatResult(
            text=redact(text, self._key),
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            finish_reason=finish,
        )


class _Transient(Exception):
    """Internal: a failure worth retrying."""

    def __init__(self, describe: str, status: int | None, cause: BaseException, retry_after: float | None = None):
        super().__init__(describe)
        self.describe = describe
        self.status = status
        self.cause = cause
        self.retry_after = retry_after


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
    return str(getattr(exc, "message", "") or exc)[:300]


def _retry_after(exc: openai.APIStatusError) -> float | None:
    try:
        value = exc.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, ValueError, TypeError):
        return None
