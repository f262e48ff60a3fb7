"""Tokenizer interface: a tiny SentencePiece model trained on the fly, an HF tokenizer.json built
with `tokenizers`, export loadable by transformers' AutoTokenizer, and (when ../shared has it)
the real LLaMA tokenizer's ids against sentencepiece and transformers."""

from __future__ import annotations

import json
import pathlib

import pytest
import sentencepiece as spm

from bioinstruct_jax.data.tokenizer import (HFTokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer_files,
                                       train_sentencepiece)

FIXTURE = pathlib.Path(__file__).parents[1] / "fixtures" / "instructions_small.jsonl"
TEXT = "The patient's HbA1c was 7.2% (elevated); recheck in 3 months.\nNo aspirin."


def corpus() -> list[str]:
    recs = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
    return [r[k] for r in recs for k in ("instruction", "input", "output") if r[k]]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> pathlib.Path:
    return train_sentencepiece(corpus(), 512, tmp_path_factory.mktemp("sp"))


def test_train_sentencepiece_llama_layout_and_deterministic(tmp_path, sp_model):
    again = train_sentencepiece(corpus(), 512, tmp_path)
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    sp2 = spm.SentencePieceProcessor(model_file=str(again))  # deterministic (the file also records its path)
    assert [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())] == [
        (sp2.id_to_piece(i), sp2.get_score(i)) for i in range(sp2.get_piece_size())]
    assert sp.get_piece_size() == 512
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert sp.id_to_piece(3) == "<0x00>"  # byte fallback pieces follow the specials


def test_sentencepiece_round_trip_and_specials(sp_model):
    tok = load_tokenizer_files(sp_model)
    assert isinstance(tok, SentencePieceTokenizer) and isinstance(tok, Tokenizer)
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 512)
    assert tok.pad_id == 0  # no pad piece: defaults to unk
    ids = tok.encode(TEXT)
    assert ids == list(spm.SentencePieceProcessor(model_file=str(sp_model)).encode(TEXT))
    assert tok.decode(ids) == TEXT
    unseen = "Zebrafish ñandú 漢字 🙂"  # byte fallback: never <unk>
    assert 0 not in tok.encode(unseen) and tok.decode(tok.encode(unseen)) == unseen
    both = tok.encode(TEXT, add_bos=True, add_eos=True)
    assert both == [1] + ids + [2]
    assert tok.encode(TEXT, add_eos=True) == ids + [2]
    assert tok.decode(both) == TEXT
    assert tok.decode(both, skip_special=False) == "<s>" + TEXT + "</s>"
    assert load_tokenizer_files(sp_model, pad_id=2).pad_id == 2
    with pytest.raises(ValueError, match="pad_id=999"):
        load_tokenizer_files(sp_model, pad_id=999)


def test_sentencepiece_save_loads_in_transformers(tmp_path, sp_model):
    transformers = pytest.importorskip("transformers")
    tok = load_tokenizer_files(sp_model)
    out = tok.save(tmp_path / "export")
    assert {p.name for p in out.iterdir()} >= {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"}
    hf = transformers.AutoTokenizer.from_pretrained(str(out))
    assert type(hf).__name__ in ("LlamaTokenizer", "LlamaTokenizerFast")
    assert (hf.bos_token_id, hf.eos_token_id, hf.unk_token_id) == (1, 2, 0)
    assert hf.encode(TEXT) == tok.encode(TEXT, add_bos=True)  # HF adds BOS, as LLaMA's does
    assert hf.decode(hf.encode(TEXT), skip_special_tokens=True) == TEXT
    assert isinstance(load_tokenizer_files(out), SentencePieceTokenizer)  # the directory loads back


def _hf_tokenizer_json(directory: pathlib.Path) -> pathlib.Path:
    from tokenizers import Tokenizer as Tok, decoders, models, pre_tokenizers, trainers

    tok = Tok(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return directory / "tokenizer.json"


def test_hf_tokenizer_json_backend(tmp_path):
    path = _hf_tokenizer_json(tmp_path / "hf")
    tok = load_tokenizer_files(path)
    assert isinstance(tok, HFTokenizer)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 0)
    from tokenizers import Tokenizer as Tok

    ref = Tok.from_file(str(path)).encode(TEXT, add_special_tokens=False).ids
    ids = tok.encode(TEXT, add_bos=True, add_eos=True)
    assert ids == [1] + ref + [2]
    assert tok.decode(ids) == TEXT
    assert tok.vocab_size == Tok.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    out = tok.save(tmp_path / "export")
    again = load_tokenizer_files(out)
    assert isinstance(again, HFTokenizer) and again.encode(TEXT) == ref
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(out))
    assert hf.encode(TEXT, add_special_tokens=False) == ref and hf.eos_token_id == 2


def test_missing_path_errors_name_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        load_tokenizer_files(tmp_path / "nothing_here")
    with pytest.raises(FileNotFoundError, match="no tokenizer.model"):
        load_tokenizer_files(tmp_path)


SENTENCE = "Metformin is the first-line treatment for type 2 diabetes; HbA1c fell from 8.1% to 6.9%."


def test_real_llama_tokenizer(shared_dir, tmp_path):
    model = shared_dir / "tokenizers" / "llama" / "tokenizer.model"
    if not model.is_file():
        pytest.skip(f"{model} is missing")
    transformers = pytest.importorskip("transformers")
    tok = load_tokenizer_files(model)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (32000, 1, 2, 0)
    ids = tok.encode(SENTENCE, add_bos=True)
    assert ids[:6] == [1, 4737, 689, 262, 338, 278]  # pinned: "<s>", "▁Met", "form", "in", "▁is", "▁the"
    assert ids == [1] + sp.encode(SENTENCE)
    # transformers 5: LlamaTokenizer is tokenizers-backed (converted from the .model) ...
    hf = transformers.AutoTokenizer.from_pretrained(str(tok.save(tmp_path / "llama")))
    assert type(hf).__name__ in ("LlamaTokenizer", "LlamaTokenizerFast")
    assert hf.encode(SENTENCE) == ids
    # ... and its sentencepiece-based slow path matches even on whitespace runs, where the fast one differs.
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    slow = SentencePieceBackend(vocab_file=str(model), legacy=True, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tricky = " two  spaces   and a lead"
    assert slow.encode(tricky, add_special_tokens=False) == tok.encode(tricky) == sp.encode(tricky)
    assert tok.decode(ids) == SENTENCE
