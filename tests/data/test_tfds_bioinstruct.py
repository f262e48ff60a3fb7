"""TFDS `bioinstruct` builder (array_record, no TensorFlow): built from the small fixture into a tmp
data_dir; category configs, nested size subsets, hash split, manual_dir, labels file, malformed
records; the real instruction file when ../shared has it."""

from __future__ import annotations

import json
import pathlib

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from bioinstruct_jax.data.records import RecordError  # noqa: E402
from bioinstruct_jax.data.tfds import bioinstruct as B  # noqa: E402
from bioinstruct_jax.data.tfds import common  # noqa: E402

FIXTURE = pathlib.Path(__file__).parents[1] / "fixtures" / "instructions_small.jsonl"
RECORDS = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


def ids(source) -> list[str]:
    return sorted(B.record_from_example(source[i])["id"] for i in range(len(source)))


def test_all_config_and_hash_split(tmp_path):
    builder, ds = B.data_sources(tmp_path, "all", source_path=FIXTURE, validation_fraction=0.25)
    want_val = sorted(r["id"] for r in RECORDS
                      if common.hash_split("\x00".join((r["instruction"], r["input"], r["output"])), 0.25, B.SPLIT_SALT)
                      == "validation")
    assert 0 < len(want_val) < 20
    assert ids(ds["validation"]) == want_val and len(ds["train"]) == 40 - len(want_val)
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 40 - len(want_val),
                                                                             "validation": len(want_val)}
    rec = B.record_from_example(ds["train"][0])
    assert set(rec) == {"id", "instruction", "input", "output", "category"}
    assert rec == next(r for r in RECORDS if r["id"] == rec["id"])
    assert builder.info.metadata["num_skipped"] == 0
    assert list(pathlib.Path(builder.data_dir).glob("*.array_record*"))  # array_record files, no TF
    # rebuilt from the prepared files: same records
    _, again = B.data_sources(tmp_path, "all", source_path=FIXTURE, validation_fraction=0.25)
    assert ids(again["train"]) == ids(ds["train"])


@pytest.mark.parametrize("category", ["qa", "ie", "gen", "other"])
def test_category_configs(tmp_path, category):
    _, ds = B.data_sources(tmp_path, category, source_path=FIXTURE)
    got = [B.record_from_example(ds[s][i]) for s in ("train", "validation") for i in range(len(ds[s]))]
    assert sorted(r["id"] for r in got) == sorted(r["id"] for r in RECORDS if r["category"] == category)
    assert {r["category"] for r in got} == {category}


def test_size_subsets_nested_and_seeded(tmp_path):
    subsets = {n: set(ids(B.data_sources(tmp_path, f"all_{n}", source_path=FIXTURE)[1]["train"])) for n in (5, 10, 20)}
    assert [len(subsets[n]) for n in (5, 10, 20)] == [5, 10, 20]
    assert subsets[5] < subsets[10] < subsets[20]
    full = set(ids(B.data_sources(tmp_path, "all", source_path=FIXTURE)[1]["train"]))
    assert subsets[20] < full
    _, val = B.data_sources(tmp_path, "all_5", source_path=FIXTURE)  # validation does not shrink
    assert len(val["validation"]) == 40 - len(full)
    other_seed = set(ids(B.data_sources(tmp_path, "all_10", source_path=FIXTURE, subset_seed=1)[1]["train"]))
    assert len(other_seed) == 10 and other_seed != subsets[10]
    assert set(ids(B.data_sources(tmp_path, "all_1k", source_path=FIXTURE)[1]["train"])) == full  # capped
    assert [c.name for c in B.Bioinstruct.BUILDER_CONFIGS] == [
        "all", "qa", "ie", "gen", "other", "all_5k", "all_10k", "all_15k", "all_20k", "all_25k"]
    assert B.config_from_name("all_5k").size == 5000 and B.config_from_name("qa_300").category == "qa"
    with pytest.raises(ValueError, match="expected <all"):
        B.config_from_name("medical")


def test_manual_dir_json_array_and_labels_file(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    unlabelled = [{k: r[k] for k in ("instruction", "input", "output")} for r in RECORDS]
    (manual / "biomed_instruct_25k.json").write_text(json.dumps(unlabelled, indent=2))
    _, ds = B.data_sources(tmp_path / "d", "all", manual_dir=manual)
    assert len(ds["train"]) + len(ds["validation"]) == 40
    with pytest.raises(ValueError, match="40 of 40 records have no category.*labels_path"):
        B.data_sources(tmp_path / "d", "qa", manual_dir=manual)
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"instruction": r["instruction"], "category": r["category"]}) + "\n"
                              for r in RECORDS))
    _, qa = B.data_sources(tmp_path / "d", "qa", manual_dir=manual, labels_path=labels)
    got = sorted(B.record_from_example(qa[s][i])["instruction"] for s in qa for i in range(len(qa[s])))
    assert got == sorted(r["instruction"] for r in RECORDS if r["category"] == "qa")
    with pytest.raises(FileNotFoundError):  # no source anywhere and (in tests) no download
        B.Bioinstruct(data_dir=str(tmp_path / "e"), source_path=tmp_path / "missing.json")


def test_malformed_records(tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps(r) for r in RECORDS[:6]]
    lines[2] = '{"instruction": 3, "output": "x"}'
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError, match=rf"{bad}:3: key 'instruction' must be a string"):
        B.data_sources(tmp_path / "a", "all", source_path=bad)
    builder, ds = B.data_sources(tmp_path / "b", "all", source_path=bad, skip_malformed=True)
    assert builder.info.metadata["num_skipped"] == 1 and len(ds["train"]) + len(ds["validation"]) == 5
    arr = tmp_path / "bad.json"
    arr.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}\n]')
    with pytest.raises(RecordError, match=rf"{arr}:3: not valid JSON"):
        B.read_instruction_file(arr)


def test_real_instruction_file(shared_dir, tmp_path):
    path = shared_dir / "data" / "instructions" / "chatdoctor5k.json"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    builder, ds = B.data_sources(tmp_path, "all_1k", source_path=path)
    assert len(ds["train"]) == 1000 and 60 < len(ds["validation"]) < 170  # ~2% of 5,452
    rec = B.record_from_example(ds["train"][0])
    assert rec["instruction"] and rec["output"] and rec["id"].startswith("chatdoctor5k-")
