"""GPT-4 judge: reply parsing, and end to end against the scripted OpenAI-compatible server on
127.0.0.1 (a reply it cannot parse is counted, not fatal; a rerun is served from the cache)."""

from __future__ import annotations

import json
import math
import pathlib
import random

import pytest

from bioinstruct_jax.eval import runner, tasks as T
from bioinstruct_jax.eval.judge import JUDGE_PROMPT, Judge, aggregate, parse_judge_reply
from bioinstruct_jax.data.llm_client import LLMClient, LLMClientConfig
from openai_server import Reply, ScriptedOpenAIServer

FIX = pathlib.Path(__file__).parents[1] / "fixtures" / "eval"
GOOD = '{"coherence": 4, "completeness": 3, "naturalness": 5}'


@pytest.mark.parametrize("reply,want", [
    (GOOD, {"coherence": 4, "completeness": 3, "naturalness": 5}),
    ('```json\n{"Coherence": "5", "completeness": 2, "naturalness": 4.0}\n```',
     {"coherence": 5, "completeness": 2, "naturalness": 4}),
    ("Scores -- coherence: 3, completeness: 4, naturalness: 2.", {"coherence": 3, "completeness": 4, "naturalness": 2}),
    ('{"coherence": 6, "completeness": 3, "naturalness": 5}', None),  # out of range
    ('{"coherence": 4, "completeness": 3}', None),  # missing one
    ('{"coherence": 3.5, "completeness": 3, "naturalness": 5}', None),  # not an integer
    ("I cannot rate this.", None), ("", None),
])
def test_parse_judge_reply(reply, want):
    assert parse_judge_reply(reply) == want


def _client(server) -> LLMClient:
    cfg = LLMClientConfig(model="judge-test", base_url=server.base_url, api_key_env="BIOINSTRUCT_TEST_NO_KEY",
                          timeout_s=5.0, max_retries=0)
    return LLMClient(cfg, sleep=lambda s: None, rng=random.Random(0))


class Echo:
    """Test-double model: replies with a fixed note."""

    def generate(self, prompts, *, max_new_tokens, stop=None):
        return ["Patient reports a headache for two days." for _ in prompts]

    def score(self, prompts, continuations):
        raise AssertionError("not a choice task")


def _reply(request: dict) -> Reply | str:
    """Good scores for the headache dialogue, an unreadable reply for the other one."""
    prompt = request["messages"][-1]["content"]
    return GOOD if "headache for two days" in prompt.split("Reference response:")[0] else "Looks fine to me!"


def test_judge_in_runner_counts_unparseable_and_caches(tmp_path, monkeypatch):
    monkeypatch.delenv("BIOINSTRUCT_TEST_NO_KEY", raising=False)
    data = T.DataSource(str(FIX))
    cfg = runner.EvalConfig(output_dir=str(tmp_path))
    task = T.get_task("mts_dialog")
    with ScriptedOpenAIServer(_reply) as server:
        judge = Judge(_client(server), "judge-test", tmp_path / "judge_cache.jsonl")
        res = runner.run_eval([task], Echo(), data, cfg, judge=judge, paper_model="LLaMA 2 7B + BioInstruct")
        assert server.num_requests == 2
        req = server.requests[0]
        assert req["model"] == "judge-test" and req["temperature"] == 0.0
        assert "Doctor: What brings you in?" in req["messages"][-1]["content"]
        assert "Candidate response:\nPatient reports a headache for two days." in req["messages"][-1]["content"]
    m = res["tasks"]["mts_dialog"]["metrics"]
    assert (m["judge_coherence"], m["judge_completeness"], m["judge_naturalness"]) == (4, 3, 5)
    assert m["judge_mean"] == pytest.approx(4.0)
    assert (m["judge_n"], m["judge_unparseable"], m["judge_errors"]) == (2, 1, 0)
    assert res["tasks"]["mts_dialog"]["headline"] == "judge_coherence"
    assert res["tasks"]["mts_dialog"]["paper"] == 4.45
    cache = [json.loads(l) for l in (tmp_path / "judge_cache.jsonl").read_text().splitlines()]
    assert len(cache) == 2 and sum(c["scores"] is None for c in cache) == 1

    # rerun: predictions and judge replies all come from disk; the server gets nothing
    with ScriptedOpenAIServer(lambda req: Reply.error(500)) as server2:
        judge2 = Judge(_client(server2), "judge-test", tmp_path / "judge_cache.jsonl")
        res2 = runner.run_eval([task], Echo(), data, cfg, judge=judge2)
        assert server2.num_requests == 0
    assert res2["tasks"]["mts_dialog"]["metrics"] == m


def test_failed_call_is_counted_not_cached(tmp_path, monkeypatch):
    monkeypatch.delenv("BIOINSTRUCT_TEST_NO_KEY", raising=False)
    with ScriptedOpenAIServer(lambda req: Reply.error(500, "down")) as server:
        judge = Judge(_client(server), "judge-test", tmp_path / "c.jsonl")
        r = judge.judge(instruction="i", input_text="x", reference="ref", prediction="pred")
    assert r.scores is None and r.error and not r.cached
    assert not (tmp_path / "c.jsonl").exists()
    agg = aggregate([r])
    assert agg["judge_errors"] == 1 and agg["judge_unparseable"] == 0 and math.isnan(agg["judge_coherence"])


def test_cache_key_depends_on_model_and_texts(tmp_path):
    j = Judge(object(), "m1", tmp_path / "c.jsonl")
    k = j.key("p", "pred", "ref")
    assert k != j.key("p", "pred2", "ref") and k != Judge(object(), "m2", tmp_path / "c.jsonl").key("p", "pred", "ref")
    assert "{instruction}" in JUDGE_PROMPT and '"coherence": n' in JUDGE_PROMPT
