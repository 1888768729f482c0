"""Qwen3.5-MoE: the converted F32 GGUF (hybrid Gated DeltaNet / full attention, shared experts)
and its mmproj, run by llama.cpp, against transformers' own forward pass; tokenization; what the
file holds, read back with gguf-py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from testbed.tiny_qwen3_5_moe import LAYOUTS, build_tiny_model
from tests.arch.test_mmproj import _f16_vision_reference
from tests.arch.test_qwen3_vl_moe import (
    TOKENIZE_STRINGS,
    assert_text_logits_match,
    assert_tokenization_matches,
)

# combining marks (\p{M}): where the qwen35 pre-tokenizer splits differently from qwen2. Marks
# without a precomposed form: transformers NFC-normalizes first, llama.cpp does not normalize.
TOKENIZE_35 = [*TOKENIZE_STRINGS, "नमस्ते दुनिया, x\u0301z\u0330 q\u0323"]


@pytest.fixture(scope="module")
def q35(tmp_path_factory):
    """{layout: (model dir, F32 text GGUF, F16 mmproj)}; both layouts hold the same weights."""
    from mode_edge.gguf.export import export_model

    out = {}
    for layout in LAYOUTS:
        d = build_tiny_model(tmp_path_factory.mktemp("q35") / f"tiny-{layout}", layout=layout)
        r = export_model(d, tmp_path_factory.mktemp(f"q35-gguf-{layout}"), "f32")
        out[layout] = (d, r.text_path, r.mmproj_path)
    return out


@pytest.fixture(scope="module")
def hf_q35(q35):
    from transformers import Qwen3_5MoeForConditionalGeneration

    return Qwen3_5MoeForConditionalGeneration.from_pretrained(
        q35["per_expert"][0], dtype=torch.float32
    ).eval()


@pytest.mark.runtime
@pytest.mark.parametrize("layout", LAYOUTS)
def test_logits_match_transformers(q35, hf_q35, layout):
    model_dir, text, _ = q35[layout]
    assert_text_logits_match(hf_q35, model_dir, text, layout)


@pytest.mark.runtime
def test_tokenizer_matches_transformers(q35):
    from transformers import AutoTokenizer

    model_dir, text, _ = q35["fused"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert type(tok).__name__ == "Qwen3_5Tokenizer"  # its own pre-tokenizer, not tokenizer.json's
    assert_tokenization_matches(tok, text, TOKENIZE_35)


def test_metadata_read_back_by_gguf_py(q35):
    from gguf import GGMLQuantizationType, GGUFReader

    model_dir, text, _ = q35["fused"]
    t = json.loads((model_dir / "config.json").read_text())["text_config"]
    r = GGUFReader(text)

    def val(key):
        return r.get_field(key).contents()

    a = "qwen35moe"
    assert val("general.architecture") == a
    assert val(f"{a}.block_count") == t["num_hidden_layers"]  # no MTP block
    assert r.get_field(f"{a}.nextn_predict_layers") is None
    assert val(f"{a}.attention.recurrent_layers") == [lt == "linear_attention" for lt in t["layer_types"]]
    assert val(f"{a}.attention.key_length") == t["head_dim"]
    assert val(f"{a}.rope.dimension_count") == int(t["head_dim"] * 0.25)
    assert val(f"{a}.rope.dimension_sections") == t["rope_parameters"]["mrope_section"] + [0]
    assert val(f"{a}.expert_shared_feed_forward_length") == t["shared_expert_intermediate_size"]
    assert val(f"{a}.ssm.inner_size") == t["linear_value_head_dim"] * t["linear_num_value_heads"]
    assert val(f"{a}.ssm.group_count") == t["linear_num_key_heads"]
    assert val("tokenizer.ggml.pre") == "qwen35"
    tensors = {x.name: x for x in r.tensors}
    assert not any(n.startswith("mtp") or "nextn" in n for n in tensors)  # skipped on purpose
    for name in (
        "blk.0.ssm_a",
        "blk.0.ssm_dt.bias",
        "blk.0.ssm_conv1d.weight",
        "blk.0.ffn_gate_inp_shexp.weight",
    ):
        assert tensors[name].tensor_type == GGMLQuantizationType.F32
    # ssm_a = -exp(A_log) in ggml's V-head order, norms as 1 + w (the gated norm as w)
    from safetensors import safe_open

    def hf(name):
        for f in model_dir.glob("*.safetensors"):
            with safe_open(f, "np") as g:
                if name in g.keys():
                    return g.get_tensor(name)
        raise KeyError(name)

    p = "model.language_model.layers.0."
    a_log = hf(p + "linear_attn.A_log").reshape(t["linear_num_key_heads"], -1).T.reshape(-1)
    np.testing.assert_allclose(np.asarray(tensors["blk.0.ssm_a"].data), -np.exp(a_log), rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(tensors["blk.0.attn_norm.weight"].data), 1 + hf(p + "input_layernorm.weight"), rtol=1e-6
    )
    np.testing.assert_array_equal(
        np.asarray(tensors["blk.0.ssm_norm.weight"].data), hf(p + "linear_attn.norm.weight")
    )


def test_unsupported_linear_attention_is_refused(tmp_path):
    from mode_edge.arch import architecture_for
    from mode_edge.errors import UserError
    from mode_edge.formats.checkpoint import Checkpoint

    d = build_tiny_model(tmp_path / "m", with_mtp=False)
    cfg = json.loads((d / "config.json").read_text())
    cfg["text_config"]["linear_value_head_dim"] = 32
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="equal head dims"):
        architecture_for(Checkpoint(d))


@pytest.fixture(scope="module")
def session35(q35):
    from mode_edge.run.mtmd import MtmdSession

    _, text, mmproj = q35["fused"]
    with MtmdSession(text, mmproj, f32_kv=True) as s:
        yield s


@pytest.mark.runtime
def test_image_embeddings_and_logits_match_transformers(q35, hf_q35, session35, test_image):
    """mmproj (no deepstack) against the vision tower, then image + text through both models:
    M-RoPE positions of image tokens in the full-attention layers and the linear layers' state."""
    from transformers import AutoImageProcessor, AutoTokenizer

    model_dir = q35["fused"][0]
    ref_model = _f16_vision_reference(hf_q35)
    inputs = AutoImageProcessor.from_pretrained(model_dir)(
        images=[Image.fromarray(test_image)], return_tensors="pt"
    )
    with torch.no_grad():
        out = ref_model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    ref = out.pooler_output.numpy()
    got = session35.image_embeddings(test_image)
    assert got.shape == ref.shape == (12, 256)
    assert np.abs(got - ref).max() <= 2e-3 * float(ref.max() - ref.min())  # as tests/arch/test_mmproj.py

    tok = AutoTokenizer.from_pretrained(model_dir)
    question = "What shape is this?<|im_end|>\n<|im_start|>assistant\n"
    hf_text = "<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * 12 + "<|vision_end|>" + question
    ids = tok(hf_text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref_logits = (
            ref_model(
                input_ids=ids,
                mm_token_type_ids=(ids == ref_model.config.image_token_id).int(),
                pixel_values=inputs["pixel_values"],
                image_grid_thw=inputs["image_grid_thw"],
            )
            .logits[0, -1]
            .numpy()
        )
    got_logits = session35.last_logits("<|im_start|>user\n" + session35.marker + question, [test_image])
    assert np.abs(got_logits - ref_logits).max() <= 2e-3 * float(ref_logits.max() - ref_logits.min())
    assert got_logits.argmax() == ref_logits.argmax()
