"""Batched KV-cache generation, sampling, stop sequences, scoring and the eval predictor
(`bioinstruct_jax.infer.engine` / `bioinstruct_jax.infer.sampling`), against transformers and plain forwards;
sharded generation on 8 virtual CPU devices (tests/conftest.py sets them before jax is imported).

(`tests/data/test_generate.py` holds the tests of `bioinstruct_jax.data.self_instruct`, the instruction
generator; this file is the model-side generator.)
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="reference tests need torch (pip install -e '.[test]')")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bioinstruct_jax.checkpoint.hf import load_pretrained  # noqa: E402
from bioinstruct_jax.infer.engine import Generator, batch_bucket  # noqa: E402
from bioinstruct_jax.infer.predictor import JaxPredictor, stop_token_sequences, trim_at_stop  # noqa: E402
from bioinstruct_jax.infer.sampling import SamplingConfig  # noqa: E402
from bioinstruct_jax.model.decoder import padded_positions  # noqa: E402
from bioinstruct_jax.infer.sampling import filter_logits, sample_next  # noqa: E402
from hf_fixtures import write_tiny_llama  # noqa: E402

# Larger random weights than HF's default 0.02 so greedy continuations vary instead of repeating
# one token: a wrong position or mask then changes the tokens.
INIT = dict(initializer_range=0.3)


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    out = {}
    for variant in ("mha_untied", "gqa_tied"):
        d = tmp_path_factory.mktemp(variant)
        ref = write_tiny_llama(d, variant, **INIT)
        out[variant] = (d, ref)
    return out


def _loaded(hf_models, variant):
    d, ref = hf_models[variant]
    model, _ = load_pretrained(d, dtype=jnp.float32)
    return model, ref, Generator(model, eos_ids=[])  # one generator per model: programs compile once


@pytest.fixture(scope="module")
def gqa(hf_models):
    return _loaded(hf_models, "gqa_tied")


@pytest.fixture(scope="module")
def mha(hf_models):
    return _loaded(hf_models, "mha_untied")


def _prompts(lengths, seed=0, vocab=128):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=n).tolist() for n in lengths]


def _left_pad(prompts):
    width = max(map(len, prompts))
    ids = np.zeros((len(prompts), width), np.int64)
    mask = np.zeros((len(prompts), width), np.int64)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = p
        mask[r, width - len(p):] = 1
    return ids, mask


def _hf_greedy(ref, prompts, n):
    ids, mask = _left_pad(prompts)
    ref.generation_config.eos_token_id = None
    with torch.no_grad():
        out = ref.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                           max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
    return out[:, ids.shape[1]:].tolist()


@pytest.mark.parametrize("variant", ["mha", "gqa"])
def test_greedy_matches_transformers_generate_on_left_padded_batch(request, variant):
    _, ref, gen = request.getfixturevalue(variant)
    prompts = _prompts((11, 7, 3), seed=1)
    ours = gen.generate(prompts, max_new_tokens=12).tokens
    theirs = _hf_greedy(ref, prompts, 12)
    assert ours == theirs
    assert len({t for row in ours for t in row}) > 6  # not a degenerate repeat of one token


def test_kv_cache_decode_equals_full_recompute(gqa):
    """Each step recomputes the whole (left-padded, fixed-width) sequence without a cache."""
    from flax import nnx

    model, _, gen = gqa
    graphdef, state = nnx.split(model)

    @jax.jit
    def next_tokens(state, ids, seg):
        m = nnx.merge(graphdef, state)
        return jnp.argmax(m(ids, positions=padded_positions(seg), segment_ids=seg)[:, -1], axis=-1)

    prompts = _prompts((9, 4, 6), seed=2)
    seqs = [list(p) for p in prompts]
    for _ in range(10):
        ids, seg = np.zeros((3, 32), np.int32), np.zeros((3, 32), np.int32)
        for r, s in enumerate(seqs):
            ids[r, 32 - len(s):], seg[r, 32 - len(s):] = s, 1
        for s, t in zip(seqs, np.asarray(next_tokens(state, ids, seg)).tolist()):
            s.append(t)
    ours = gen.generate(prompts, max_new_tokens=10).tokens
    assert ours == [s[len(p):] for s, p in zip(seqs, prompts)]


def test_compilations_bounded_over_200_prompt_eval(gqa):
    """An eval of 203 mixed-length prompts in batches of 8 (last batch 3), as the eval runner calls
    the predictor: a handful of programs, not one per batch."""
    model = gqa[0]
    rng = np.random.default_rng(3)
    prompts = _prompts(rng.integers(2, 100, size=203).tolist(), seed=4)
    gen = Generator(model, eos_ids=[2], max_batch_size=32)
    for i in range(0, len(prompts), 8):
        gen.generate(prompts[i:i + 8], max_new_tokens=4)
    print("compilations over 203 prompts:", gen.compilations)
    assert gen.compilations["generate"] <= 6, gen.compilations
    for i in range(0, 16, 8):
        gen.score_continuations(prompts[i:i + 8], [[5, 6, 7]] * len(prompts[i:i + 8]))
    print("compilations after scoring:", gen.compilations)
    assert gen.compilations["score"] <= 2, gen.compilations


def test_batch_buckets():
    assert [batch_bucket(n) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 16]
    assert [batch_bucket(n, 4) for n in (1, 3, 5)] == [4, 4, 8]


# -- sampling ------------------------------------------------------------------------------------


def test_top_p_and_top_k_filtering_match_transformers_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    probs = np.array([[0.5, 0.2, 0.15, 0.1, 0.05]], np.float32)
    logits = jnp.log(probs)
    keep = lambda k, p: np.isfinite(np.asarray(filter_logits(logits, jnp.int32(k), jnp.float32(p))))[0]  # noqa: E731
    assert keep(0, 0.6).tolist() == [True, True, False, False, False]
    assert keep(0, 0.5).tolist() == [True, False, False, False, False]
    assert keep(0, 1.0).all()
    assert keep(2, 1.0).tolist() == [True, True, False, False, False]
    assert keep(3, 0.8).tolist() == [True, True, False, False, False]  # renormalised after top-k: .59, .24
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 50)).astype(np.float32) * 2
    for k, p in [(0, 0.9), (0, 0.3), (10, 1.0), (10, 0.7), (1, 0.5)]:
        t = torch.tensor(x)
        if k:
            t = TopKLogitsWarper(k)(None, t)
        if p < 1:
            t = TopPLogitsWarper(p)(None, t)
        ours = np.isfinite(np.asarray(filter_logits(jnp.asarray(x), jnp.int32(k), jnp.float32(p))))
        np.testing.assert_array_equal(ours, np.isfinite(t.numpy()), err_msg=f"top_k={k} top_p={p}")


def test_sampling_frequencies_follow_softmax():
    probs = np.array([0.5, 0.3, 0.15, 0.05], np.float32)
    logits = jnp.broadcast_to(jnp.log(probs), (20000, 4))
    t, k, p = SamplingConfig(temperature=1.0).traced_values()
    draws = np.asarray(sample_next(logits, jax.random.key(0), greedy=False, filtered=False,
                                   temperature=t, top_k=k, top_p=p))
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / len(draws), probs, atol=0.015)


def test_sampling_key_reproducible_and_limits_equal_greedy(gqa):
    gen = gqa[2]
    prompts = _prompts((8, 5, 4), seed=5)
    greedy = gen.generate(prompts, max_new_tokens=10).tokens
    hot = SamplingConfig(temperature=1.5, top_p=0.95)
    a = gen.generate(prompts, max_new_tokens=10, sampling=hot, key=jax.random.key(7)).tokens
    b = gen.generate(prompts, max_new_tokens=10, sampling=hot, key=jax.random.key(7)).tokens
    c = gen.generate(prompts, max_new_tokens=10, sampling=hot, key=jax.random.key(8)).tokens
    assert a == b and a != c and a != greedy
    assert gen.generate(prompts, max_new_tokens=10, sampling=SamplingConfig(temperature=1.0, top_k=1),
                        key=jax.random.key(1)).tokens == greedy
    assert gen.generate(prompts, max_new_tokens=10, sampling=SamplingConfig(temperature=1e-5),
                        key=jax.random.key(2)).tokens == greedy
    with pytest.raises(ValueError, match="key"):
        gen.generate(prompts, max_new_tokens=10, sampling=hot)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(temperature=1.0, top_p=0.0)


# -- stopping --------------------------------------------------------------------------------------


def test_eos_and_stop_sequences_end_the_loop_early(gqa):
    gen = gqa[2]
    prompt = _prompts((7,), seed=6)
    free = gen.generate(prompt, max_new_tokens=16)
    assert free.decode_steps == [15] and free.finish_reasons == ["length"]
    toks = free.tokens[0]
    # EOS = the 4th generated token (at its first occurrence): the row ends there, EOS removed.
    k = toks.index(toks[3])
    eos_run = gen.generate(prompt, max_new_tokens=16, eos_ids=[toks[3]])
    assert eos_run.tokens == [toks[:k]] and eos_run.finish_reasons == ["eos"]
    assert eos_run.decode_steps == [k]
    # a two-token stop sequence (tokens 5 and 6): kept in the ids (the text level trims it)
    stop = toks[5:7]
    j = next(i for i in range(1, 16) if toks[i - 1:i + 1] == stop)
    stop_run = gen.generate(prompt, max_new_tokens=16, stop_ids=[stop])
    assert stop_run.tokens == [toks[:j + 1]] and stop_run.finish_reasons == ["stop"]
    assert stop_run.decode_steps == [j]
    # in a batch, a finished row is not extended while the others run on
    batch = gen.generate(prompt + _prompts((3, 5), seed=7), max_new_tokens=16, eos_ids=[toks[3]])
    assert batch.tokens[0] == toks[:k]


class CharTokenizer:
    """A test double: one id per character (id = code point - 29), BOS 1, EOS 2, pad 0."""

    bos_id, eos_id, pad_id, vocab_size = 1, 2, 0, 128

    def encode(self, text, *, add_bos=False, add_eos=False):
        return [1] * add_bos + [ord(ch) - 29 for ch in text] + [2] * add_eos

    def decode(self, ids, skip_special=True):
        return "".join(chr(i + 29) for i in ids if i >= 3)

    def id_to_piece(self, i):
        return {0: "<pad>", 1: "<s>", 2: "</s>"}.get(i, chr(i + 29))


def test_predictor_text_stop_trims_and_stops_decoding(gqa):
    tok = CharTokenizer()
    pred = JaxPredictor(gqa[2], tok)
    prompts = ["Question: dose?", "Answer", "Drug:"]
    full = pred.generate(prompts, max_new_tokens=16)
    assert all(len(t) > 0 for t in full)
    stop = full[0][4:6]
    cut = full[0].find(stop)
    stopped = pred.generate(prompts, max_new_tokens=16, stop=[stop, "\n\n"])
    assert stopped[0] == full[0][:cut]
    assert stopped[1] == trim_at_stop(full[1], [stop, "\n\n"])
    assert trim_at_stop("ab\n\ncd###", ["###", "\n\n"]) == "ab"
    assert stop_token_sequences(tok, ["##"]) == [[6, 6]]


# -- scoring ---------------------------------------------------------------------------------------


def test_score_continuations_equals_full_forward_and_transformers(gqa):
    model, ref, gen = gqa
    prompts = _prompts((6, 3, 9), seed=8)
    conts = _prompts((4, 1, 2), seed=9)
    ours = gen.score_continuations(prompts, conts)
    width = max(len(p) + len(c) for p, c in zip(prompts, conts))
    ids, mask = np.zeros((3, width), np.int64), np.zeros((3, width), np.int64)  # right padding
    for r, (p, c) in enumerate(zip(prompts, conts)):
        ids[r, :len(p) + len(c)], mask[r, :len(p) + len(c)] = p + c, 1
    plain = np.asarray(jax.nn.log_softmax(model(jnp.asarray(ids), segment_ids=jnp.asarray(mask)), axis=-1))
    with torch.no_grad():
        logits = ref(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.float()
    theirs = torch.log_softmax(logits, -1).numpy()
    for r, (p, c, s) in enumerate(zip(prompts, conts, ours)):
        targets = range(len(p), len(p) + len(c))
        assert s == pytest.approx(sum(plain[r, t - 1, ids[r, t]] for t in targets), abs=1e-4)
        assert s == pytest.approx(sum(theirs[r, t - 1, ids[r, t]] for t in targets), abs=1e-3)
        assert s < 0


def test_predictor_score_matches_generator_on_joint_tokenisation(gqa):
    pred = JaxPredictor(gqa[2], CharTokenizer())
    got = pred.score(["Q: yes or no?\nA:", "Q: 1+1?\nA:"], [" yes", " 2"])
    want = pred.generator.score_continuations([[1] + CharTokenizer().encode("Q: yes or no?\nA:")],
                                              [CharTokenizer().encode(" yes")])
    assert got[0] == pytest.approx(want[0], abs=1e-6) and len(got) == 2


# -- sharding -----------------------------------------------------------------------------------------


def test_sharded_generation_on_8_devices_equals_single_device(hf_models, gqa):
    from bioinstruct_jax.parallel import sharding as parallel

    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS before jax is imported)")
    d, _ = hf_models["gqa_tied"]
    prompts = _prompts((11, 7, 3, 9), seed=10)
    mesh = parallel.make_mesh(parallel.MeshConfig(data=2, fsdp=2, tensor=2))
    sharded, _ = load_pretrained(d, dtype=jnp.float32, mesh=mesh)
    parallel.set_constraint(sharded, parallel.activation_constraint(mesh))
    assert len(sharded.layers[0].self_attn.q_proj.kernel[...].sharding.device_set) == 8
    hot = SamplingConfig(temperature=1.0, top_k=20)
    a, b = gqa[2], Generator(sharded, mesh=mesh, eos_ids=[])
    assert b.generate(prompts, max_new_tokens=8).tokens == a.generate(prompts, max_new_tokens=8).tokens
    key = jax.random.key(3)
    assert (b.generate(prompts, max_new_tokens=8, sampling=hot, key=key).tokens
            == a.generate(prompts, max_new_tokens=8, sampling=hot, key=key).tokens)
    sa = a.score_continuations(prompts, [[4, 5]] * 4)
    np.testing.assert_allclose(b.score_continuations(prompts, [[4, 5]] * 4), sa, atol=1e-4)


# -- LoRA ---------------------------------------------------------------------------------------------


def test_lora_model_generates_the_same_unmerged_and_merged(hf_models, mha):
    from flax import nnx

    from bioinstruct_jax.model.lora import LoraConfig, apply_lora, lora_modules, merge_lora

    d, _ = hf_models["mha_untied"]
    model, _ = load_pretrained(d, dtype=jnp.float32)
    prompts = _prompts((8, 4, 6), seed=11)
    base = mha[2].generate(prompts, max_new_tokens=10).tokens
    apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.1, targets=("q_proj", "v_proj", "down_proj")),
               nnx.Rngs(0))
    rng = np.random.default_rng(12)
    for _, m in lora_modules(model):
        m.lora_b.set_value(jnp.asarray(rng.normal(size=m.lora_b.shape).astype(np.float32) * 0.5))
    model.eval()
    gen = Generator(model, eos_ids=[])
    unmerged = gen.generate(prompts, max_new_tokens=10).tokens
    merge_lora(model)
    gen.update(model)
    merged = gen.generate(prompts, max_new_tokens=10).tokens
    assert unmerged == merged
    assert unmerged != base  # the adapter changes the model
