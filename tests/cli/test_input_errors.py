"""Bad data, generation and eval inputs: each is refused with one line naming the file, line or
flag (the rows of docs/ERRORS.md, "Data, generation and eval")."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from bioinstruct_jax.cli import errors as cli_errors
from bioinstruct_jax.data.pipeline import read_records
from bioinstruct_jax.data.records import RecordError, read_instruction_file
from bioinstruct_jax.eval import __main__ as eval_main
from bioinstruct_jax.eval.runner import EvalConfig
from bioinstruct_jax.data.tokenizer import TokenizerFileError, load_tokenizer_files

REPO = pathlib.Path(__file__).resolve().parents[2]
GOOD = {"instruction": "Name a loop diuretic.", "input": "", "output": "Furosemide."}


def _jsonl(path: pathlib.Path, *lines: str | bytes) -> pathlib.Path:
    path.write_bytes(b"".join((l if isinstance(l, bytes) else l.encode()) + b"\n" for l in lines))
    return path


# ----------------------------------------------------------------------------- training records


def test_training_record_without_output_names_file_and_line(tmp_path):
    no_output = {"instruction": "Name a beta blocker.", "input": ""}
    f = _jsonl(tmp_path / "train.jsonl", json.dumps(GOOD), json.dumps(no_output))
    with pytest.raises(RecordError, match=r"train\.jsonl:2: missing key 'output'"):
        read_records(f)
    arr = tmp_path / "train.json"
    arr.write_text("[\n" + json.dumps(GOOD) + ",\n" + json.dumps({**no_output, "output": None}) + "\n]\n")
    with pytest.raises(RecordError, match=r"train\.json:3 \(record 1\): missing key 'output'"):
        read_instruction_file(arr)


@pytest.mark.parametrize("suffix", ["jsonl", "json"])
def test_non_utf8_training_file_names_file_and_line(tmp_path, suffix):
    bad = json.dumps({**GOOD, "output": "Furosemide XX."}).encode().replace(b"XX", b"\xff\xfe")
    if suffix == "jsonl":
        f = _jsonl(tmp_path / "train.jsonl", json.dumps(GOOD), json.dumps(GOOD), bad)
        line = 3
    else:
        f = tmp_path / "train.json"
        f.write_bytes(b"[\n" + json.dumps(GOOD).encode() + b",\n" + bad + b"\n]\n")
        line = 3
    with pytest.raises(RecordError, match=rf"train\.{suffix}:{line}: not UTF-8 text \(byte 0xff at column \d+\)"):
        read_records(f)


def test_non_utf8_labels_file_names_file_and_line(tmp_path):
    from bioinstruct_jax.data.tfds.bioinstruct import read_labels

    f = _jsonl(tmp_path / "labels.jsonl", '{"id": "a", "category": "qa"}', b'{"id": "b\xe9", "category": "qa"}')
    with pytest.raises(RecordError, match=r"labels\.jsonl:2: not UTF-8"):
        read_labels(f)


# ----------------------------------------------------------------------------- tokenizer files


def test_garbage_tokenizer_files_are_one_line_errors_naming_them(tmp_path):
    sp = tmp_path / "garbage.model"
    sp.write_bytes(bytes(range(256)) * 3)
    hf = tmp_path / "hf" / "tokenizer.json"
    hf.parent.mkdir()
    hf.write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": [oops')
    folder = tmp_path / "run_tokenizer"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(b"not a model")
    for path, named in ((sp, sp), (hf.parent, hf), (folder, folder / "tokenizer.model")):
        with pytest.raises(TokenizerFileError) as info:
            load_tokenizer_files(path)
        msg = str(info.value)
        assert msg.startswith(f"{named}: not a ") and "\n" not in msg, msg


# ----------------------------------------------------------------------------- numeric flags


def _argparse_error(parse, argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        parse(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err  # the error alone, not argparse's whole usage first
    return err


@pytest.mark.parametrize("flag,value", [("--max-new-tokens", "-1"), ("--max-new-tokens", "0"),
                                        ("--batch-size", "0"), ("--top-p", "1.5"), ("--temperature", "-0.1"),
                                        ("--top-k", "-3"), ("--temperature", "nan")])
def test_generate_cli_refuses_bad_numbers(flag, value, capsys):
    from bioinstruct_jax.infer.cli import build_parser

    err = _argparse_error(build_parser().parse_args, ["--model", "m", "--prompt", "p", flag, value], capsys)
    assert f"argument {flag}:" in err


@pytest.mark.parametrize("flag,value", [("--num-instructions", "0"), ("--concurrency", "0"), ("--top-p", "0"),
                                        ("--max-tokens", "-5"), ("--rouge-threshold", "1.2"),
                                        ("--label-batch-size", "0"), ("--timeout", "0"), ("--max-retries", "-1")])
def test_data_generate_cli_refuses_bad_numbers(flag, value, capsys):
    from bioinstruct_jax.data.self_instruct.cli import parse_args

    assert f"argument {flag}:" in _argparse_error(parse_args, [flag, value], capsys)


def test_eval_config_refuses_bad_numbers():
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        EvalConfig(output_dir="x", max_new_tokens=-1)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        EvalConfig(output_dir="x", limit=0)


# ----------------------------------------------------------------------------- eval data (CLI)


def _eval(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "BIOINSTRUCT_DEBUG"}
    cmd = [sys.executable, "-m", "bioinstruct_jax.eval", "--model", str(tmp_path / "no-model-needed"),
           "--output", str(tmp_path / "out"), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_eval_cli_data_errors_are_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """--model names nothing: each data error must come first, as one line with exit code 2."""
    empty = _jsonl(tmp_path / "empty.jsonl")
    blank = _jsonl(tmp_path / "blank.jsonl", "", "   ")
    broken = _jsonl(tmp_path / "broken.jsonl", '{"input": "BP", "output": "blood pressure"}', '{"input": "HR", "outp')
    no_output = _jsonl(tmp_path / "short.jsonl", '{"input": "BP", "output": "blood pressure"}', '{"input": "HR"}')
    broken_json = tmp_path / "broken.json"
    broken_json.write_text('[\n  {"input": "BP", "output": "blood pressure"},\n  {"input": "HR" "output": "x"}\n]\n')
    latin1 = _jsonl(tmp_path / "latin1.jsonl", '{"input": "BP", "output": "x"}', b'{"input": "caf\xe9", "output": "x"}')
    data_dir = tmp_path / "data"  # the named benchmarks' own formats: MTS-Dialog CSV and MTL IOB
    mts = data_dir / "mts_dialog" / "MTS-Dialog-TestSet-1-MEDIQA-Chat-2023.csv"
    mts.parent.mkdir(parents=True)
    mts.write_bytes(b"ID,section_header,section_text,dialogue\n0,GENHX,Fine.,Doctor: hi\n1,GENHX,caf\xe9,Doctor: ok\n")
    iob = data_dir / "ner" / "BC5CDR-IOB" / "test.tsv"
    iob.parent.mkdir(parents=True)
    iob.write_bytes(b"Aspirin\tB-Chemical\n\nna\xefve\tO\n")
    cases = [
        (["--tasks", "mts_dialog", "--data-dir", str(data_dir)], f"{mts}:3: not UTF-8 text (byte 0xe9 at column 12)"),
        (["--tasks", "bc5cdr", "--data-dir", str(data_dir)], f"{iob}:3: not UTF-8 text (byte 0xef at column 3)"),
        (["--tasks", f"jsonl:{empty}"], f"{empty}: no records"),
        (["--tasks", f"jsonl:{blank}"], f"{blank}: no records"),
        (["--tasks", f"jsonl:{broken}"], f"{broken}:2: not a JSON line"),
        (["--tasks", f"jsonl:{no_output}"], f"{no_output}:2: missing key(s) ['output']"),
        (["--tasks", f"jsonl:{broken_json}"], f"{broken_json}:3: not valid JSON"),
        (["--tasks", f"jsonl:{latin1}"], f"{latin1}:2: not UTF-8 text"),
        (["--tasks", f"jsonl:{tmp_path / 'missing.jsonl'}"], f"evaluation data file not found: {tmp_path / 'missing.jsonl'}"),
        (["--tasks", "medqa", "--data-dir", str(tmp_path / "nodata")],
         f"evaluation data file not found: {tmp_path / 'nodata' / 'medqa' / 'US_4_options_test.jsonl'}"),
        (["--tasks", f"jsonl:{broken}", "--max-new-tokens", "-1"], "argument --max-new-tokens: must be an integer >= 1"),
        (["--tasks", f"jsonl:{broken}", "--limit", "0"], "argument --limit: must be an integer >= 1"),
    ]
    # Two cases as `python -m bioinstruct_jax.eval` (a data error, an argument error), the rest through
    # the same `run(main)` its __main__ calls, in this process: one interpreter start instead of twelve.
    for i, (args, expected) in enumerate(cases):
        if i in (0, len(cases) - 1):
            proc = _eval(tmp_path, *args)
            code, err = proc.returncode, proc.stderr.strip()
        else:
            code, err = _eval_in_process(tmp_path, capsys, monkeypatch, *args)
        assert code == 2, (args, err)
        assert "Traceback" not in err and expected in err.splitlines()[-1], (args, err)
        assert len(err.splitlines()) == 1, err


def _eval_in_process(tmp_path, capsys, monkeypatch, *args) -> tuple[int, str]:
    """`cli_errors.run(eval main, argv)` as `python -m bioinstruct_jax.eval` runs it: (exit code, stderr)."""
    monkeypatch.delenv("BIOINSTRUCT_DEBUG", raising=False)
    monkeypatch.delenv(cli_errors.TRANSFORMERS_ADVISORY_ENV, raising=False)  # run() sets it; undone afterwards
    for hook in ("excepthook", "unraisablehook"):  # run() wraps them; the test process gets its own back
        monkeypatch.setattr(sys, hook, getattr(sys, hook))
    capsys.readouterr()
    try:
        code = cli_errors.run(eval_main.main, ["--model", str(tmp_path / "no-model-needed"),
                                               "--output", str(tmp_path / "out"), *args])
    except SystemExit as exit_:  # argparse's own exit
        code = exit_.code
    return code, capsys.readouterr().err.strip()


def test_non_utf8_prompt_file_names_file_and_line(tmp_path):
    from bioinstruct_jax.infer.cli import _read_prompts, build_parser

    f = tmp_path / "prompts.txt"
    f.write_bytes(b"What is metformin?\nWhat is caf\xe9ine?\n")
    args = build_parser().parse_args(["--model", "m", "--prompt-file", str(f)])
    with pytest.raises(RecordError, match=r"prompts\.txt:2: not UTF-8 text \(byte 0xe9 at column 12\)"):
        _read_prompts(args)
