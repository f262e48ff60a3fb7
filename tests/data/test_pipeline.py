"""Data pipeline: template, response-only loss mask (checked by decoding), truncation counts,
packing == unpacked per-example loss on the tiny LLaMA, resume from iterator state, per-host
slices, malformed records, and a real-data batch when ../shared has the instruction files."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import pytest

from bioinstruct_jax.data import pipeline as P
from bioinstruct_jax.data import templates
from bioinstruct_jax.data.records import RecordError
from bioinstruct_jax.data.tokenizer import load_tokenizer_files, train_sentencepiece

FIXTURE = pathlib.Path(__file__).parents[1] / "fixtures" / "instructions_small.jsonl"
RECORDS = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [r[k] for r in RECORDS for k in ("instruction", "input", "output") if r[k]]
    texts += [templates.format_prompt("x", "y"), templates.format_prompt("x"),
              templates.format_prompt("x", "y", "bioinstruct_paper")]
    return load_tokenizer_files(train_sentencepiece(texts, 512, tmp_path_factory.mktemp("sp")))


def cfg(**kw) -> P.DataConfig:
    base = dict(train_file=str(FIXTURE), max_length=160, batch_size=4, val_fraction=0.1)
    return P.DataConfig(**{**base, **kw})


def test_templates():
    assert templates.format_prompt("Do it.", "ctx") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nDo it.\n\n"
        "### Input:\nctx\n\n### Response:\n")
    assert templates.format_prompt("Do it.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nDo it.\n\n### Response:\n")
    assert "### Input:" not in templates.format_prompt("Do it.", "")
    assert templates.format_prompt("Q", "", "bioinstruct_paper").endswith("### Instruction:\nQ\n\n### Output::\n")
    assert templates.format_example({"instruction": "Q", "input": "", "output": "A"}) == (templates.format_prompt("Q"), "A")
    with pytest.raises(KeyError, match="nope"):
        templates.format_prompt("Q", template="nope")


def test_loss_mask_covers_exactly_the_response(tok):
    it = P.make_batch_iterator(cfg(shuffle=False, max_length=256), tok, "train", records=RECORDS, process_index=0,
                         process_count=1)
    b = next(it)
    assert {k: (b[k].shape, b[k].dtype) for k in P.BATCH_KEYS} == {
        **{k: ((4, 256), np.int32) for k in ("input_ids", "targets", "segment_ids", "positions")},
        "loss_mask": ((4, 256), np.float32)}
    for row, rec in enumerate(RECORDS[:4]):
        seg = b["segment_ids"][row]
        n = int((seg > 0).sum())
        assert b["input_ids"][row, 0] == tok.bos_id and b["targets"][row, n - 1] == tok.eos_id
        np.testing.assert_array_equal(b["input_ids"][row, 1:n], b["targets"][row, :n - 1])  # shifted
        masked = b["targets"][row][b["loss_mask"][row] > 0]
        assert tok.decode(masked, skip_special=False) == rec["output"] + "</s>"
        unmasked = b["targets"][row, :n][b["loss_mask"][row, :n] == 0]  # targets that are prompt tokens
        prompt, _ = templates.format_example(rec)
        assert list(unmasked) == tok.encode(prompt) and tok.decode(unmasked) == prompt
        assert (b["loss_mask"][row, n:] == 0).all() and (seg[n:] == 0).all()
        np.testing.assert_array_equal(b["positions"][row, :n], np.arange(n))


def test_truncation_prompt_first_and_drops_counted(tok):
    long_input = " ".join(["The patient reports intermittent chest tightness"] * 30)
    recs = [{"instruction": "Summarize.", "input": long_input, "output": "Chest tightness."},
            {"instruction": "Echo.", "input": "", "output": " ".join(["word"] * 400)},
            RECORDS[0]]
    enc = P.ExampleEncoder(tok, 64, "alpaca")
    ex = enc(recs[0])
    assert ex.prompt_truncated and len(ex.input_ids) == 64
    assert tok.decode(ex.targets[ex.loss_mask > 0], skip_special=False) == "Chest tightness.</s>"
    head = tok.decode(ex.targets[ex.loss_mask == 0])
    assert head.startswith("Below is an instruction") and head.endswith(" ### Response:\n")
    assert enc(recs[1]) is None
    counts = P.count_examples(recs, enc)
    assert counts["examples"] == 3 and counts["dropped_response_too_long"] == 1 and counts["prompt_truncated"] >= 1
    assert counts["kept"] == 2
    # the dropped example never reaches a batch
    it = P.make_batch_iterator(cfg(max_length=64, batch_size=2, shuffle=False, num_epochs=1), tok, "train", records=recs,
                         process_index=0, process_count=1)
    batches = list(it)
    assert len(batches) == 1 and (batches[0]["segment_ids"] > 0).any(axis=1).all()


def per_example_loss(logits: np.ndarray, batch: dict[str, np.ndarray]) -> dict[tuple[int, ...], float]:
    """Mean cross-entropy over loss_mask per example, keyed by the example's response targets."""
    logits = np.asarray(logits, np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, batch["targets"][..., None].astype(np.int64), -1)[..., 0]
    out = {}
    for r in range(batch["targets"].shape[0]):
        for s in np.unique(batch["segment_ids"][r]):
            if s == 0:
                continue
            m = (batch["segment_ids"][r] == s) & (batch["loss_mask"][r] > 0)
            out[tuple(batch["targets"][r][m])] = float(nll[r][m].mean())
    return out


def test_packing_matches_unpacked_loss_on_tiny_llama(tok):
    config_module = pytest.importorskip("bioinstruct_jax.model.config")
    decoder = pytest.importorskip("bioinstruct_jax.model.decoder")
    import jax.numpy as jnp
    from flax import nnx

    config = dataclasses.replace(config_module.LlamaConfig.preset("tiny"), vocab_size=tok.vocab_size)
    model = decoder.Llama(config, rngs=nnx.Rngs(0), param_dtype=jnp.float32, dtype=jnp.float32)
    recs = [dict(r, input="") for r in RECORDS[:12]]  # short examples, several per packed row
    common = dict(max_length=320, batch_size=2, shuffle=False, num_epochs=1)
    packed = list(P.make_batch_iterator(cfg(packing=True, **common), tok, "train", records=recs, process_index=0, process_count=1))
    plain = list(P.make_batch_iterator(cfg(**common), tok, "train", records=recs, process_index=0, process_count=1))
    assert max(int(b["segment_ids"].max()) for b in packed) >= 3  # really packed
    got, want = {}, {}
    for batches, into in ((packed, got), (plain, want)):
        for b in batches:
            logits = model(jnp.asarray(b["input_ids"]), positions=jnp.asarray(b["positions"]),
                           segment_ids=jnp.asarray(b["segment_ids"]))
            into.update(per_example_loss(np.asarray(logits), b))
    assert set(got) == set(want) and len(got) == 12
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5)
    b = packed[0]  # segment layout: 1, 2, 3 ... then 0 padding; positions restart per segment
    for r in range(b["segment_ids"].shape[0]):
        seg = b["segment_ids"][r]
        ids = [s for s in dict.fromkeys(seg.tolist()) if s]
        assert ids == list(range(1, len(ids) + 1))
        for s in ids:
            np.testing.assert_array_equal(b["positions"][r][seg == s], np.arange((seg == s).sum()))
            assert b["input_ids"][r][seg == s][0] == tok.bos_id


@pytest.mark.parametrize("packing", [False, True])
def test_restore_from_state_yields_same_batches(tok, packing):
    c = cfg(packing=packing, num_epochs=3, batch_size=2)
    it = P.make_batch_iterator(c, tok, "train", process_index=0, process_count=1)
    for _ in range(7):  # crosses into the second epoch (34 training records)
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # JSON-able
    want = [next(it) for _ in range(20)]
    again = P.make_batch_iterator(c, tok, "train", process_index=0, process_count=1)
    again.set_state(state)
    for a, b in zip(want, (next(again) for _ in range(20))):
        for k in P.BATCH_KEYS:
            np.testing.assert_array_equal(a[k], b[k])
    # deterministic for a seed, different for another
    first = next(P.make_batch_iterator(c, tok, "train", process_index=0, process_count=1))
    assert np.array_equal(first["input_ids"], next(P.make_batch_iterator(c, tok, "train", process_index=0, process_count=1))["input_ids"])
    other = next(P.make_batch_iterator(dataclasses.replace(c, seed=1), tok, "train", process_index=0, process_count=1))
    assert not np.array_equal(first["input_ids"], other["input_ids"])


def test_epochs_and_validation_pass(tok):
    c = cfg(num_epochs=2, batch_size=4)
    train = P.load_split(c, "train")
    val = P.load_split(c, "val")
    assert len(train) + len(val) == 40 and 0 < len(val) < 10
    n = sum(1 for _ in P.make_batch_iterator(c, tok, "train", process_index=0, process_count=1))
    assert n == (2 * len(train)) // 4
    vb = list(P.make_batch_iterator(c, tok, "val", process_index=0, process_count=1))
    assert len(vb) == -(-len(val) // 4) and all(b["input_ids"].shape == (4, 160) for b in vb)
    assert sum(int((b["segment_ids"].max(axis=1) > 0).sum()) for b in vb) == len(val)
    factory = P.make_data_factory(c, tok)
    assert factory.num_examples == len(train)


def test_an_epoch_of_packed_rows_counts_packed_batches_not_records(tok):
    # train.epochs is turned into steps by this count: with packing a row holds several records, so
    # records / batch_size would make "one epoch" several passes over the data.
    c = cfg(batch_size=2, packing=True, max_length=640)  # several records a row
    factory = P.make_data_factory(c, tok)
    one_pass = list(P.make_batch_iterator(dataclasses.replace(c, num_epochs=1), tok, "train", process_index=0,
                                          process_count=1))
    assert factory.batches_per_epoch() == len(one_pass)
    assert len(one_pass) < factory.num_examples / 2
    assert sum(int(b["segment_ids"].max(axis=1).sum()) for b in one_pass) >= factory.num_examples - 2
    unpacked = P.make_data_factory(dataclasses.replace(c, packing=False), tok)
    assert unpacked.batches_per_epoch() == unpacked.num_examples / 2


def test_per_host_slices_partition_the_stream(tok):
    c = cfg(batch_size=4, shuffle=True, num_epochs=1)
    whole = [tuple(r) for b in P.make_batch_iterator(dataclasses.replace(c, batch_size=2), tok, "train",
                                               process_index=0, process_count=1) for r in b["targets"]]
    hosts = [[tuple(r) for b in P.make_batch_iterator(c, tok, "train", process_index=p, process_count=2) for r in b["targets"]]
             for p in range(2)]
    assert all(len(h) % 2 == 0 for h in hosts) and len(hosts[1]) > 0
    # host p loads rows 2p, 2p+1 of every global batch of 4 consecutive records of the one stream,
    # so the hosts' batches side by side are the single-process batch
    assert len(whole) // 4 == len(hosts[1]) // 2
    for b in range(len(whole) // 4):
        assert hosts[0][2 * b: 2 * b + 2] + hosts[1][2 * b: 2 * b + 2] == whole[4 * b: 4 * b + 4]
    assert set(hosts[0]).isdisjoint(hosts[1])
    # explicit rows (what distributed.host_batch_rows gives with grad_accum=2): rows 0 and 2
    mine = [tuple(r) for b in P.make_batch_iterator(c, tok, "train", host_rows=[0, 2]) for r in b["targets"]]
    assert mine[:4] == [whole[0], whole[2], whole[4], whole[6]]
    with pytest.raises(ValueError, match="not divisible by process_count=3"):
        P.make_batch_iterator(c, tok, "train", process_index=0, process_count=3)


def test_malformed_record_named_or_skipped(tmp_path, tok):
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps(r) for r in RECORDS[:5]]
    lines.insert(3, '{"instruction": "x", "output": ')
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError, match=rf"{bad}:4"):
        P.make_batch_iterator(cfg(train_file=str(bad)), tok, "train", process_index=0, process_count=1)
    assert len(P.read_records(bad, skip_malformed=True)) == 5
    arr = tmp_path / "bad.json"
    arr.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"output": "no instruction"}\n]\n')
    with pytest.raises(RecordError, match=rf"{arr}:3.*record 1.*missing key 'instruction'"):
        P.read_records(arr)
    assert len(P.read_records(arr, skip_malformed=True)) == 1


def test_real_instruction_file_batch(shared_dir, tmp_path, tok):
    path = shared_dir / "data" / "instructions" / "chatdoctor5k.json"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    c = P.DataConfig(train_file=str(path), tfds_config="all", tfds_data_dir=str(tmp_path), val_fraction=0.02,
                     max_length=256, batch_size=8, packing=True)
    factory = P.make_data_factory(c, tok)
    assert 5000 < factory.num_examples < 5452
    b = next(factory("train"))
    assert b["input_ids"].shape == (8, 256) and b["loss_mask"].sum() > 0
    assert len(P.load_split(c, "val")) == 5452 - factory.num_examples


def test_no_record_fitting_max_length_is_an_error_not_an_endless_search():
    """Every response longer than max_length: the repeating training stream would look for a batch
    forever; instead the first batch raises, naming the setting to change."""
    from train_helpers import WordTokenizer

    tok = WordTokenizer("a b c".split())
    recs = [{"instruction": "a", "input": "", "output": "b " * 50}] * 5
    cfg = P.DataConfig(train_file="unused", batch_size=2, max_length=16)
    it = P.make_batch_iterator(cfg, tok, "train", records=recs, process_index=0, process_count=1)
    with pytest.raises(ValueError, match=r"none of the 5 training records fits data.max_length=16"):
        next(it)
    recs.append({"instruction": "a", "input": "", "output": "b"})  # one that fits: batches flow
    it = P.make_batch_iterator(cfg, tok, "train", records=recs, process_index=0, process_count=1)
    batch = next(it)
    assert batch["loss_mask"].sum() == 2 * 2  # both rows are the short record: "b" + EOS
