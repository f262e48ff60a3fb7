"""LLMClient against the scripted OpenAI-compatible server: the real `openai` client over HTTP."""

from __future__ import annotations

import random

import pytest

from bioinstruct_jax.data.llm_client import (
    DUMMY_LOCAL_KEY,
    LLMClient,
    LLMClientConfig,
    LLMError,
    resolve_api_key,
)
from openai_server import Reply, ScriptedOpenAIServer, replies_in_order

MSG = [{"role": "user", "content": "Name one loop diuretic."}]


def make_client(server, sleeps, **overrides):
    cfg = LLMClientConfig(model="test-model", base_url=server.base_url, api_key_env="BIOINSTRUCT_TEST_NO_KEY",
                          timeout_s=overrides.pop("timeout_s", 5.0), **overrides)
    return LLMClient(cfg, sleep=sleeps.append, rng=random.Random(0))


@pytest.fixture(autouse=True)
def _no_key(monkeypatch):
    monkeypatch.delenv("BIOINSTRUCT_TEST_NO_KEY", raising=False)


def test_plain_reply_tokens_and_request_body():
    with ScriptedOpenAIServer(lambda req: Reply.text("Furosemide", prompt_tokens=11, completion_tokens=2)) as server:
        client = make_client(server, [])
        result = client.chat(MSG, temperature=0.3, max_tokens=50, top_p=0.9)
        assert result.text == "Furosemide"
        assert (result.prompt_tokens, result.completion_tokens, result.finish_reason) == (11, 2, "stop")
        req = server.requests[0]
        assert req["model"] == "test-model" and req["messages"] == MSG
        assert req["temperature"] == 0.3 and req["max_tokens"] == 50 and req["top_p"] == 0.9
        client.chat(MSG)
        assert "temperature" not in server.requests[1]
        assert client.usage.requests == 2 and client.usage.prompt_tokens == 22 and client.usage.total_tokens == 26


def test_retries_429_500_and_timeout_then_succeeds():
    script = replies_in_order([Reply.error(429), Reply.error(500), Reply.error(503),
                               Reply.text("late", delay_s=1.5), Reply.text("ok")])
    sleeps: list[float] = []
    with ScriptedOpenAIServer(script) as server:
        client = make_client(server, sleeps, timeout_s=0.5, backoff_s=1.0, backoff_max_s=3.0)
        assert client.chat(MSG).text == "ok"
        assert server.num_requests == 5
    assert client.usage.retries == 4 and client.usage.requests == 1 and client.usage.failed_requests == 0
    # capped exponential backoff with jitter in [base/2, base]
    for attempt, delay in enumerate(sleeps):
        base = min(3.0, 2.0**attempt)
        assert base / 2 <= delay <= base


def test_retry_after_header_is_honoured_up_to_cap():
    script = replies_in_order([Reply.error(429, headers={"Retry-After": "7"}), Reply.text("ok")])
    sleeps: list[float] = []
    with ScriptedOpenAIServer(script) as server:
        make_client(server, sleeps, backoff_s=0.1, backoff_max_s=5.0).chat(MSG)
    assert sleeps == [5.0]


def test_malformed_body_is_retried():
    script = replies_in_order([Reply.malformed(), Reply.text("fine")])
    with ScriptedOpenAIServer(script) as server:
        client = make_client(server, [])
        assert client.chat(MSG).text == "fine"
        assert client.usage.retries == 1


def test_retries_exhausted_raises_clear_error_without_key(monkeypatch):
    monkeypatch.setenv("BIOINSTRUCT_TEST_NO_KEY", "sk-secret-value-123")
    with ScriptedOpenAIServer(lambda req: Reply.error(500, "overloaded")) as server:
        client = make_client(server, [], max_retries=2)
        with pytest.raises(LLMError) as info:
            client.chat(MSG)
        assert server.num_requests == 3
    msg = str(info.value)
    assert "500" in msg and "test-model" in msg and server.base_url in msg and "overloaded" in msg
    assert "sk-secret" not in msg
    assert info.value.status == 500 and info.value.retryable
    assert client.usage.failed_requests == 1


def test_other_4xx_fails_at_once():
    with ScriptedOpenAIServer(lambda req: Reply.error(400, "bad model name")) as server:
        client = make_client(server, [])
        with pytest.raises(LLMError, match="HTTP 400.*bad model name") as info:
            client.chat(MSG)
        assert server.num_requests == 1
    assert not info.value.retryable


def test_api_key_resolution(monkeypatch):
    monkeypatch.delenv("SOME_KEY_VAR", raising=False)
    local = LLMClientConfig(base_url="http://127.0.0.1:8000/v1", api_key_env="SOME_KEY_VAR")
    assert resolve_api_key(local) == DUMMY_LOCAL_KEY
    remote = LLMClientConfig(base_url="https://llm.example.org/v1", api_key_env="SOME_KEY_VAR")
    with pytest.raises(LLMError, match="SOME_KEY_VAR"):
        resolve_api_key(remote)
    with pytest.raises(LLMError, match="SOME_KEY_VAR"):
        LLMClient(LLMClientConfig(api_key_env="SOME_KEY_VAR"))
    monkeypatch.setenv("SOME_KEY_VAR", "k-123")
    assert resolve_api_key(remote) == "k-123"


def test_key_echoed_by_the_server_is_redacted_everywhere(monkeypatch):
    """A server that puts the key in its error messages and its reply text: no message, traceback
    or reply text that leaves the client holds it."""
    import traceback

    secret = "sk-live-echoed-4242"
    monkeypatch.setenv("BIOINSTRUCT_TEST_NO_KEY", secret)
    script = replies_in_order([Reply.error(401, f"Incorrect API key provided: {secret}"),
                               Reply.error(500, f"backend saw key {secret}"),
                               Reply.text(f"your key is {secret}")])
    with ScriptedOpenAIServer(script) as server:
        client = make_client(server, [], max_retries=0)
        texts = []
        for _ in range(2):
            with pytest.raises(LLMError) as info:
                client.chat(MSG)
            texts += [str(info.value), "".join(traceback.format_exception(info.value))]
        reply = client.chat(MSG).text
    assert "401" in texts[0] and "[REDACTED]" in texts[0] and "500" in texts[2]
    assert reply == "your key is [REDACTED]"
    assert all(secret not in t for t in texts + [reply]), texts
