"""The converted F32 GGUF, run by llama.cpp, must reproduce transformers' forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import LAYOUT_CASES

PROMPTS = [
    "Hello, world! 12 + 34 = 46",
    "<|im_start|>user\nWhat shape is left of the red square?<|im_end|>\n<|im_start|>assistant\n",
    "Mixture-of-Experts layers route every token to a few experts. 0123456789",
]

TOKENIZE_STRINGS = [
    "Hello, world!",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n",
    "digits 1234567890 and 3.14159, 2026-11-23",
    "Ünïcödé: café, naïve, Größe, 東京, 数字 42, emoji 🙂👍🏽",
    "  leading spaces, tabs\tand\nnew\n\nlines  ",
    "<|vision_start|><|image_pad|><|vision_end|>Describe it.",
    "don't you'll we've I'M",
    "",
]


def _llama(path):
    import llama_cpp

    # F32 KV cache: llama.cpp's default F16 cache would add its own rounding to the diff
    return llama_cpp.Llama(
        str(path),
        n_ctx=512,
        n_batch=512,
        logits_all=True,
        verbose=False,
        n_threads=2,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
    )


def assert_tokenization_matches(tok, gguf, strings, add_special_tokens: bool = True) -> None:
    """llama.cpp's tokenizer of `gguf` gives transformers' ids on every string (special tokens
    parsed), and detokenizes them to the same text."""
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)
    try:
        for s in strings:
            ref = tok(s, add_special_tokens=add_special_tokens)["input_ids"]
            got = llm.tokenize(s.encode(), add_bos=False, special=True)
            assert got == ref, f"tokenization differs on {s!r}"
            assert llm.detokenize(got, special=True).decode() == tok.decode(ref, skip_special_tokens=False)
    finally:
        llm.close()


def assert_text_logits_match(model, model_dir, gguf, case: str) -> None:
    """Every prompt of PROMPTS through transformers' `model` and llama.cpp's `gguf`: max |logit
    difference| within 1e-3 of the logit range, the same argmax at every position."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    llm = _llama(gguf)
    try:
        for prompt in PROMPTS:
            ids = tok(prompt)["input_ids"]
            with torch.no_grad():
                ref = model(input_ids=torch.tensor([ids])).logits[0].numpy()
            llm.reset()
            llm.eval(ids)
            got = np.asarray(llm.scores[: len(ids)])
            tol = 1e-3 * float(ref.max() - ref.min())
            assert np.abs(ref - got).max() <= tol, f"{case}: {prompt!r}"
            assert (ref.argmax(-1) == got.argmax(-1)).all(), f"{case}: argmax differs on {prompt!r}"
    finally:
        llm.close()


@pytest.mark.runtime
@pytest.mark.parametrize("case", LAYOUT_CASES)
def test_logits_match_transformers(case, converted, hf_models, tiny_models):
    assert_text_logits_match(hf_models(case), tiny_models[case], converted[case][0], case)


@pytest.mark.runtime
def test_tokenizer_matches_transformers(converted, tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["transformers"])
    assert_tokenization_matches(tok, converted["transformers"][0], TOKENIZE_STRINGS)


def test_metadata_read_back_by_gguf_py(converted, tiny_models):
    """What llama.cpp needs, read with gguf-py's reader against config.json."""
    import json

    from gguf import GGUFReader

    cfg = json.loads((tiny_models["transformers"] / "config.json").read_text())
    t = cfg["text_config"]
    r = GGUFReader(converted["transformers"][0])

    def val(key):
        return r.get_field(key).contents()

    assert val("general.architecture") == "qwen3vlmoe"
    assert val("qwen3vlmoe.block_count") == t["num_hidden_layers"]
    assert val("qwen3vlmoe.expert_count") == t["num_local_experts"]
    assert val("qwen3vlmoe.expert_used_count") == t["num_experts_per_tok"]
    assert val("qwen3vlmoe.expert_feed_forward_length") == t["moe_intermediate_size"]
    assert val("qwen3vlmoe.rope.dimension_sections") == t["rope_parameters"]["mrope_section"] + [0]
    assert val("qwen3vlmoe.n_deepstack_layers") == len(cfg["vision_config"]["deepstack_visual_indexes"])
    assert val("tokenizer.ggml.pre") == "qwen2"
    assert "<|im_start|>" in val("tokenizer.chat_template")
    names = {t.name for t in r.tensors}
    for il in range(t["num_hidden_layers"]):
        for proj in ("gate", "up", "down"):
            assert f"blk.{il}.ffn_{proj}_exps.weight" in names
