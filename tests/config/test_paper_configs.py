"""What the paper configs state about themselves (in the file or the base files it extends): the
template they train with and why, the 2% validation hold-out, and (16 GiB TPU configs) what
max_length 512 drops — the last re-measured with the real LLaMA tokenizer on the 25K-like files in
../shared when they are present. Each paper config is a short overlay on a hardware base."""

from __future__ import annotations

import pathlib
import re

import pytest

from bioinstruct_jax.config import config_files, load_run_config
from conftest import shared_path

REPO = pathlib.Path(__file__).resolve().parents[2]
PAPER_CONFIGS = sorted((REPO / "configs" / "paper").glob("*.yaml"))
SHORT = [p for p in PAPER_CONFIGS if "tpu-v3-8" in p.stem or "tpu-v5e-8" in p.stem]


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_config_states_template_and_validation_hold_out(path):
    cfg = load_run_config(path)
    text = "\n".join(p.read_text() for p in config_files(path))  # the overlay and its bases
    assert cfg.data.template == "bioinstruct_paper"
    assert re.search(r"template: bioinstruct_paper\s+# the paper's own prompt", text)
    assert cfg.data.val_fraction == 0.02 and "24,505 train" in text
    if path in SHORT:
        assert cfg.data.max_length == 512 and "512 drops 89" in text and "1024 drops 10" in text
    else:
        assert cfg.data.max_length == 1024


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_config_is_a_short_overlay_on_a_hardware_base(path):
    files = config_files(path)
    assert files[0] == REPO / "configs" / "paper" / "base" / "common.yaml" and files[-1] == path
    assert files[-2].parent.name == "base" and files[-2].stem in path.stem  # e.g. base/tpu-v3-8.yaml
    assert len(path.read_text().splitlines()) <= 20


@pytest.mark.slow  # tokenizes 11,394 records twice: ~1 min on the 2-core machine
def test_max_length_figures_stated_in_the_tpu_configs(shared_dir):
    from bioinstruct_jax.data.pipeline import ExampleEncoder, count_examples, read_records
    from bioinstruct_jax.data.tokenizer import load_tokenizer_files

    tok = load_tokenizer_files(shared_path(shared_dir, "tokenizers/llama/tokenizer.model"))
    recs = []
    for name in ("medical_meadow_small.json", "chatdoctor5k.json"):
        recs += read_records(shared_path(shared_dir, f"data/instructions/{name}"), skip_malformed=True)
    assert len(recs) == 11_394
    at512 = count_examples(recs, ExampleEncoder(tok, 512, "bioinstruct_paper"))
    at1024 = count_examples(recs, ExampleEncoder(tok, 1024, "bioinstruct_paper"))
    # 43 prompts lose tokens; one more is over the budget only as one string and fits once its head
    # and response header are encoded apart (nothing of it is dropped, so it is not counted as cut)
    assert (at512["dropped_response_too_long"], at512["prompt_truncated"]) == (89, 43)
    assert (at1024["dropped_response_too_long"], at1024["prompt_truncated"]) == (10, 1)
