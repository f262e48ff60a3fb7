"""Generation loop end to end: the real `openai` client against the scripted local server."""

from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from bioinstruct_jax.data.self_instruct.prompt import GENERATION_PROMPT_HEADER, build_generation_prompt
from bioinstruct_jax.data.self_instruct.reply import parse_generation_reply
from bioinstruct_jax.data.self_instruct.run import run
from bioinstruct_jax.data.self_instruct.settings import GenerateConfig
from bioinstruct_jax.data.self_instruct.state import GenerationError, sidecar_paths
from bioinstruct_jax.data.labels import LABEL_PROMPT_HEADER, parse_labels
from bioinstruct_jax.data.records import InstructionRecord, read_jsonl_records, write_jsonl_records
from bioinstruct_jax.data.llm_client import LLMClient
from openai_server import Reply, ScriptedOpenAIServer, replies_in_order

REPO = pathlib.Path(__file__).resolve().parents[2]
VOCAB = [f"term{i}" for i in range(600)]

SEEDS = [
    InstructionRecord("Which drug class is first line for stable angina symptom relief?", "",
                      "Short-acting nitrates such as sublingual nitroglycerin.", "qa", "seed_001"),
    InstructionRecord("Extract every medication with its dose from the note.", "Started metformin 500 mg twice daily.",
                      "metformin - 500 mg twice daily", "ie", "seed_002"),
    InstructionRecord("Rewrite the discharge advice in plain language for the patient.",
                      "Maintain fluid restriction of 1.5 L per day and weigh daily.",
                      "Drink no more than about six cups of fluid a day and weigh yourself every morning.", "gen", "seed_003"),
    InstructionRecord("Recommend whether the patient should be referred to the stroke clinic.",
                      "72-year-old with a transient episode of right arm weakness lasting 20 minutes yesterday.",
                      "Yes: this is a likely TIA and needs urgent specialist assessment.", "other", "seed_004"),
    InstructionRecord("Summarize the consumer health question in one sentence.",
                      "My son is 4 and has had a barking cough at night for two days, what should I do?",
                      "How should a croup-like barking night cough in a 4-year-old be managed?", "gen", "seed_005"),
]


def synthetic_task(k: int) -> InstructionRecord:
    """Task number k: random words, so different k never come near ROUGE-L 0.7."""
    rng = random.Random(k)
    words = rng.sample(VOCAB, 8)
    return InstructionRecord(f"Describe {' '.join(words)}.", f"Context {k}: " + " ".join(rng.sample(VOCAB, 12)),
                             f"Answer {k}: " + " ".join(rng.sample(VOCAB, 6)))


def reply_text(tasks: list[InstructionRecord], first: int = 4) -> str:
    parts = []
    for n, t in enumerate(tasks, first):
        parts.append(f"{n}. Instruction: {t.instruction}\n{n}. Input: {t.input or '<noinput>'}\n{n}. Output: {t.output}")
    text = "\n\n".join(parts)
    return text.split("Instruction:", 1)[1].lstrip() if text.startswith(f"{first}. Instruction:") else text


def is_label_request(request: dict) -> bool:
    return request["messages"][0]["content"].startswith(LABEL_PROMPT_HEADER)


class TaskScript:
    """Generation request r (since reset) -> tasks per_reply*r .. per_reply*r + per_reply-1; label
    requests -> qa, ie, gen, other in turn. Can block after a number of generation replies."""

    def __init__(self, per_reply: int = 3):
        self.per_reply = per_reply
        self.lock = threading.Lock()
        self.served = 0
        self.block_after: int | None = None
        self.release = threading.Event()

    def reset(self) -> None:
        with self.lock:
            self.served = 0
            self.block_after = None
        self.release.set()

    def __call__(self, request: dict) -> Reply:
        if is_label_request(request):
            n = request["messages"][0]["content"].count("\n") - LABEL_PROMPT_HEADER.count("\n") + 1
            return Reply.text("\n".join(f"{i}. {['qa', 'ie', 'gen', 'other'][(i - 1) % 4]}" for i in range(1, n + 1)))
        with self.lock:
            r = self.served
            self.served += 1
            block = self.block_after is not None and r >= self.block_after
        if block:
            self.release.wait(30)
            return Reply.error(503, "released")
        k0 = self.per_reply * r
        return Reply.text(reply_text([synthetic_task(k) for k in range(k0, k0 + self.per_reply)]))


@pytest.fixture
def seeds_file(tmp_path):
    path = tmp_path / "seeds.jsonl"
    write_jsonl_records(path, SEEDS)
    return path


def config(tmp_path, seeds_file, server, **kw) -> GenerateConfig:
    base = dict(output=str(tmp_path / "out" / "gen.jsonl"), seeds_path=str(seeds_file), base_url=server.base_url,
                api_key_env="BIOINSTRUCT_TEST_NO_KEY", model="scripted", progress=False, timeout_s=5.0,
                backoff_s=0.01, backoff_max_s=0.02, concurrency=1)
    base.update(kw)
    return GenerateConfig(**base)


def no_sleep_client(cfg: GenerateConfig) -> LLMClient:
    return LLMClient(cfg.client_config(), sleep=lambda s: None)


def gen_requests(server) -> list[dict]:
    return [r for r in server.requests if not is_label_request(r)]


def test_normal_run_to_n_with_labels(tmp_path, seeds_file):
    script = TaskScript(per_reply=3)
    with ScriptedOpenAIServer(script) as server:
        cfg = config(tmp_path, seeds_file, server, num_instructions=10, concurrency=3, label_batch_size=4,
                     temperature=0.9)
        summary = run(cfg)
        reqs = gen_requests(server)
    recs = read_jsonl_records(cfg.output)
    assert len(recs) == 10 == summary["accepted"] and summary["complete"]
    assert [r.id for r in recs] == [f"task_{i:06d}" for i in range(1, 11)]
    assert len({r.instruction for r in recs}) == 10
    assert {r.instruction for r in recs} <= {synthetic_task(k).instruction for k in range(3 * len(reqs))}
    assert all(r.category in ("qa", "ie", "gen", "other") for r in recs)
    assert summary["label_counts"]["qa"] == 3 and summary["label_failures"] == 0  # batches of 4,4,2
    assert 4 <= summary["requests"] <= len(reqs) and summary["rejected_total"] == 0  # in-flight extras dropped
    assert summary["prompt_tokens"] > 0 and summary["completion_tokens"] > 0
    assert json.loads(sidecar_paths(cfg.output)[1].read_text()) == summary
    # the prompt: rules, three seeds as items 1-3, continuation at item 4
    prompt = reqs[0]["messages"][0]["content"]
    assert prompt.startswith(GENERATION_PROMPT_HEADER) and prompt.endswith("\n\n4. Instruction:")
    assert all(f"\n{n}. Instruction: " in prompt and f"\n{n}. Output: " in prompt for n in (1, 2, 3))
    assert "5. Instruction" not in prompt
    assert sum(s.instruction in prompt for s in SEEDS) == 3
    # every drawn seed is rendered whole, an empty input as <noinput> (SEEDS[0], drawn in some request)
    def rendered(n, seed):
        return f"{n}. Instruction: {seed.instruction}\n{n}. Input: {seed.input or '<noinput>'}\n{n}. Output: {seed.output}"

    for req in reqs:
        text = req["messages"][0]["content"]
        drawn = [seed for seed in SEEDS if seed.instruction in text]
        assert len(drawn) == 3 and all(any(rendered(n, seed) in text for n in (1, 2, 3)) for seed in drawn)
    assert any(SEEDS[0].instruction in r["messages"][0]["content"] for r in reqs)
    assert reqs[0]["temperature"] == 0.9 and reqs[0]["model"] == "scripted"
    assert len({r["messages"][0]["content"] for r in reqs}) > 1  # seeds drawn anew per request


def test_prompt_sampling_is_deterministic(tmp_path, seeds_file):
    prompts = []
    for attempt in range(2):
        with ScriptedOpenAIServer(TaskScript()) as server:
            cfg = config(tmp_path / str(attempt), seeds_file, server, num_instructions=9, label_with_model=False)
            run(cfg)
            prompts.append([r["messages"][0]["content"] for r in gen_requests(server)])
    assert prompts[0] == prompts[1]


def test_each_filter_rejects_what_it_should(tmp_path, seeds_file):
    good1, good2 = synthetic_task(1), synthetic_task(2)
    items = [
        good1,
        InstructionRecord("Which drug class is first line for stable angina symptom relief today?", "", "Nitrates."),  # rouge vs seed
        InstructionRecord(good1.instruction.replace(".", "!"), "x", "y"),  # rouge vs earlier item in reply
        InstructionRecord("Describe the chest X-ray image of this patient.", "PA film.", "Clear lungs."),  # media
        InstructionRecord("Summarize.", "Long note.", "Short."),  # too short
        InstructionRecord("Explain " + " ".join(VOCAB[:150]) + ".", "", "Done."),  # too long (151 words)
        InstructionRecord("Copy the medication list exactly as written.", "Aspirin 81 mg daily.", "aspirin 81 mg daily"),
        good2,
    ]
    text = reply_text(items) + "\n\n12. Instruction: Missing the other fields entirely"
    with ScriptedOpenAIServer(replies_in_order([text])) as server:
        cfg = config(tmp_path, seeds_file, server, num_instructions=2, label_with_model=False)
        summary = run(cfg)
    assert [r.instruction for r in read_jsonl_records(cfg.output)] == [good1.instruction, good2.instruction]
    assert summary["rejected"] == {"rouge": 2, "banned_word": 1, "too_short": 1, "too_long": 1,
                                   "empty_output": 0, "output_repeats_input": 1}
    assert summary["malformed_items"] == 1 and summary["requests"] == 1


def test_429_500_and_timeout_are_retried(tmp_path, seeds_file):
    good = reply_text([synthetic_task(k) for k in range(3)])
    script = replies_in_order([Reply.error(429), Reply.error(500), Reply.text(good, delay_s=2.0), Reply.text(good)])
    with ScriptedOpenAIServer(script) as server:
        cfg = config(tmp_path, seeds_file, server, num_instructions=3, label_with_model=False, timeout_s=0.5)
        client = no_sleep_client(cfg)
        summary = run(cfg, client)
        assert server.num_requests == 4
    assert summary["accepted"] == 3 and summary["requests"] == 1 and summary["failed_requests"] == 0
    assert client.usage.retries == 3


def test_malformed_replies_are_counted_not_fatal(tmp_path, seeds_file):
    tasks = [synthetic_task(k) for k in range(6)]
    script = replies_in_order([
        Reply.malformed(),  # body that is not JSON: retried by the client
        Reply.text("I'm sorry, I can't produce that list."),  # no items at all
        Reply.text("4. Instruction: Only an instruction\n5. Output: wrong number\n###"),
        Reply.text(reply_text(tasks[:3]), finish_reason="length"),  # last item may be cut: dropped
        Reply.text(reply_text(tasks[3:])),
    ])
    with ScriptedOpenAIServer(script) as server:
        cfg = config(tmp_path, seeds_file, server, num_instructions=5, label_with_model=False)
        summary = run(cfg, no_sleep_client(cfg))
    got = [r.instruction for r in read_jsonl_records(cfg.output)]
    assert got == [t.instruction for t in tasks[:2] + tasks[3:]]
    assert summary["malformed_items"] == 3 and summary["requests"] == 4


def test_unreadable_labels_stay_unlabelled_and_a_rerun_asks_only_for_them(tmp_path, seeds_file):
    tasks = [synthetic_task(k) for k in range(3)]
    gen = reply_text(tasks).replace("4. Output:", "4. Category: ie\n4. Output:")
    label_replies = ["1. gen\n2. banana"]

    def fn(request):
        return Reply.text(label_replies[0]) if is_label_request(request) else Reply.text(gen)

    with ScriptedOpenAIServer(fn) as server:
        cfg = config(tmp_path / "a", seeds_file, server, num_instructions=3, label_attempts=1)
        summary = run(cfg)
        assert summary["label_counts"] == {"qa": 0, "ie": 0, "gen": 1, "other": 0, "": 2}
        assert summary["label_failures"] == summary["unlabelled"] == 2 and not summary["complete"]
        assert summary["generation_complete"] and summary["accepted"] == 3
        labels_file = pathlib.Path(summary["labels_file"])
        assert [json.loads(l)["category"] for l in labels_file.read_text().splitlines()] == ["gen"]
        # the rerun generates nothing and asks the labeller only for the two tasks still unlabelled
        label_replies[0] = "1. qa\n2. other"
        n_before = len(server.requests)
        summary = run(cfg)
        asked = server.requests[n_before:]
        assert len(asked) == 1 and is_label_request(asked[0])
        assert tasks[0].instruction not in asked[0]["messages"][0]["content"]
        assert summary["label_counts"] == {"qa": 1, "ie": 0, "gen": 1, "other": 1, "": 0} and summary["complete"]
        assert [r.category for r in read_jsonl_records(cfg.output)] == ["gen", "qa", "other"]
        # --no-label keeps the category the model wrote in its reply
        summary = run(config(tmp_path / "b", seeds_file, server, num_instructions=3, label_with_model=False))
        assert summary["label_counts"] == {"qa": 0, "ie": 1, "gen": 0, "other": 0, "": 2}


def test_resume_drops_truncated_line_without_duplicates(tmp_path, seeds_file):
    script = TaskScript(per_reply=3)
    with ScriptedOpenAIServer(script) as server:
        cfg = config(tmp_path, seeds_file, server, num_instructions=3, label_with_model=False)
        run(cfg)
        out = pathlib.Path(cfg.output)
        with out.open("a") as f:
            f.write('{"id": "task_000004", "instruction": "half a li')
        script.reset()  # the server replays its replies from the start
        cfg.num_instructions = 7
        summary = run(cfg)
    recs = read_jsonl_records(out)
    assert [r.instruction for r in recs] == [synthetic_task(k).instruction for k in range(7)]
    assert [r.id for r in recs] == [f"task_{i:06d}" for i in range(1, 8)]
    assert summary["truncated_lines_dropped"] == 1 and summary["rejected"]["rouge"] == 3


def test_broken_line_in_the_middle_is_an_error(tmp_path, seeds_file):
    with ScriptedOpenAIServer(TaskScript()) as server:
        cfg = config(tmp_path, seeds_file, server, num_instructions=3, label_with_model=False)
        out = pathlib.Path(cfg.output)
        out.parent.mkdir(parents=True)
        out.write_text('{"instruction": "a b c", "output": "d"}\nnot json\n{"instruction": "e f g", "output": "h"}\n')
        with pytest.raises(Exception, match=r"gen\.jsonl:2"):
            run(cfg)


def test_non_retryable_error_stops_the_run(tmp_path, seeds_file):
    with ScriptedOpenAIServer(lambda r: Reply.error(401, "invalid api key")) as server:
        with pytest.raises(GenerationError, match="401"):
            run(config(tmp_path, seeds_file, server, num_instructions=3))
        assert server.num_requests == 1


# ---------------------------------------------------------------------------------------------
# subprocess: the CLI, killed with SIGKILL midway and resumed
# ---------------------------------------------------------------------------------------------
def cli(server, out, seeds_file, n, env_extra=None, extra_args=()):
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "bioinstruct_jax.data.generate", "--base-url", server.base_url,
           "--model", "scripted", "--output", str(out), "--seeds", str(seeds_file), "--num-instructions", str(n),
           "--concurrency", "1", "--no-label", "--backoff", "0.01", "--timeout", "20", "--seed", "3", *extra_args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_cli_killed_midway_resumes_with_same_result(tmp_path, seeds_file):
    script = TaskScript(per_reply=3)
    with ScriptedOpenAIServer(script) as server:
        straight = tmp_path / "straight.jsonl"
        proc = cli(server, straight, seeds_file, 15)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert json.loads(out)["accepted"] == 15
        expected = [r.instruction for r in read_jsonl_records(straight)]

        script.reset()
        script.release.clear()
        script.block_after = 2  # two replies, then the third request hangs
        killed = tmp_path / "killed.jsonl"
        proc = cli(server, killed, seeds_file, 15)
        wait_for(lambda: script.served >= 3 and killed.exists() and len(killed.read_text().splitlines()) == 6)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        assert len(read_jsonl_records(killed)) == 6

        script.reset()  # replays replies 0, 1 (all duplicates now), then new ones
        proc = cli(server, killed, seeds_file, 15)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    resumed = read_jsonl_records(killed)
    assert [r.instruction for r in resumed] == expected
    assert len({r.instruction for r in resumed}) == len({r.id for r in resumed}) == 15
    summary = json.loads(out)
    assert summary["accepted"] == 15 and summary["rejected"]["rouge"] == 6 and summary["complete"]


def test_cli_error_never_shows_the_key(tmp_path, seeds_file):
    secret = "sk-very-secret-987"
    with ScriptedOpenAIServer(lambda r: Reply.error(401, f"Incorrect API key provided: {secret}.")) as server:
        proc = cli(server, tmp_path / "x.jsonl", seeds_file, 3, {"OPENAI_API_KEY": secret})
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "401" in err and "scripted" in err and "[REDACTED]" in err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: HTTP 401")
    assert "sk-very-secret" not in out + err
    for f in tmp_path.iterdir():
        assert "sk-very-secret" not in f.read_text(), f


def test_key_in_retried_errors_and_replies_reaches_no_file_or_message(tmp_path, seeds_file):
    """A 500 echoing the key until the retries run out (the request is skipped and reported), then
    a reply that repeats the key inside a task: neither the messages nor any file written hold it."""
    secret = "sk-echo-in-500-and-reply"
    task = InstructionRecord(f"Explain why the key {secret} must stay private.", "", "Because it grants access.")
    script = replies_in_order([Reply.error(500, f"upstream rejected {secret}")] * 2
                              + [Reply.text(reply_text([task, synthetic_task(1)]))])
    with ScriptedOpenAIServer(script) as server:
        proc = cli(server, tmp_path / "x.jsonl", seeds_file, 2, {"OPENAI_API_KEY": secret},
                   extra_args=["--max-retries", "1"])
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "request 0 failed" in err and "[REDACTED]" in err
    assert secret not in out + err
    written = [f for f in tmp_path.iterdir() if f.is_file()]
    assert any("[REDACTED]" in f.read_text() for f in written)
    for f in written:
        assert secret not in f.read_text(), f


def test_parse_helpers():
    p = parse_generation_reply("Name a loop diuretic.\n4. Input: <noinput>\n4. Output: Furosemide.\n\n"
                               "**5. Instruction:** Extract the dose.\n5. Input: Furosemide 40 mg IV.\n5. Output: 40 mg")
    assert [(t.instruction, t.input, t.output) for t in p.tasks] == [
        ("Name a loop diuretic.", "", "Furosemide."), ("Extract the dose.", "Furosemide 40 mg IV.", "40 mg")]
    assert parse_labels("1. QA\n2) **ie**\n3 - Generation\n4. other\n6. qa", 5) == ["qa", "ie", "gen", "other", None]
    prompt = build_generation_prompt(SEEDS[:3])
    assert "1. Input: <noinput>" in prompt and prompt.endswith("4. Instruction:")
