"""GLM-4.5V: the converted F32 GGUF (leading dense layer, shared expert, sigmoid router with a
score-correction bias and grouped top-k, routed scaling, partial M-RoPE) and its mmproj, run by
llama.cpp, against transformers' own forward pass; tokenization; what the file holds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from testbed.tiny_glm4v_moe import LAYOUTS, build_tiny_model, sample_image
from tests.arch.test_qwen3_vl_moe import assert_text_logits_match, assert_tokenization_matches

GLM_PROMPT = "[gMASK]<sop><|user|>\nWhat shape is left of the red square?<|assistant|>\n"
TOKENIZE_GLM = [
    "Hello, world!",
    GLM_PROMPT,
    "digits 1234567890 and 3.14159, 2026-11-23",
    "Ünïcödé: café, naïve, Größe, 東京, 数字 42, emoji 🙂👍🏽",
    "  leading spaces, tabs\tand\nnew\n\nlines  ",
    "<|begin_of_image|><|image|><|end_of_image|>Describe it.",
    "don't you'll we've I'M",
]


@pytest.fixture(scope="module")
def glm(tmp_path_factory):
    """{layout: (model dir, F32 text GGUF, F32 mmproj)}; both layouts hold the same weights."""
    from mode_edge.gguf.export import export_model

    out = {}
    for layout in LAYOUTS:
        d = build_tiny_model(tmp_path_factory.mktemp("glm") / f"tiny-{layout}", layout=layout)
        r = export_model(d, tmp_path_factory.mktemp(f"glm-gguf-{layout}"), "f32")
        out[layout] = (d, r.text_path, r.mmproj_path)
    return out


@pytest.fixture(scope="module")
def hf_glm(glm):
    from transformers import Glm4vMoeForConditionalGeneration

    return Glm4vMoeForConditionalGeneration.from_pretrained(glm["per_expert"][0], dtype=torch.float32).eval()


def test_layouts_hold_the_same_weights(glm):
    from gguf import GGUFReader

    a, b = (GGUFReader(glm[k][1]) for k in LAYOUTS)
    ta, tb = ({t.name: np.asarray(t.data) for t in r.tensors} for r in (a, b))
    assert ta.keys() == tb.keys()
    for name in ta:
        np.testing.assert_array_equal(ta[name], tb[name], err_msg=name)


@pytest.mark.runtime
@pytest.mark.parametrize("layout", LAYOUTS)
def test_logits_match_transformers(glm, hf_glm, layout):
    model_dir, text, _ = glm[layout]
    assert_text_logits_match(hf_glm, model_dir, text, layout)


@pytest.mark.runtime
def test_tokenizer_matches_transformers(glm):
    from transformers import AutoTokenizer

    model_dir, text, _ = glm["per_expert"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert_tokenization_matches(tok, text, TOKENIZE_GLM, add_special_tokens=False)


def test_metadata_read_back_by_gguf_py(glm):
    from gguf import GGUFReader

    model_dir, text, mmproj = glm["per_expert"]
    t = json.loads((model_dir / "config.json").read_text())["text_config"]
    r = GGUFReader(text)

    def val(key):
        return r.get_field(key).contents()

    a = "glm4moe"
    assert val("general.architecture") == a
    assert val(f"{a}.leading_dense_block_count") == t["first_k_dense_replace"]
    assert val(f"{a}.expert_group_count") == t["n_group"]
    assert val(f"{a}.expert_group_used_count") == t["topk_group"]
    assert val(f"{a}.expert_weights_scale") == pytest.approx(t["routed_scaling_factor"])
    assert val(f"{a}.expert_gating_func") == 2  # sigmoid
    assert val(f"{a}.rope.dimension_count") == t["head_dim"] // 2
    assert val(f"{a}.rope.dimension_sections") == t["rope_parameters"]["mrope_section"] + [0]
    assert val("tokenizer.ggml.pre") == "glm4"
    names = {x.name for x in r.tensors}
    assert "blk.0.ffn_gate.weight" in names and "blk.0.ffn_gate_inp.weight" not in names  # dense
    assert {"blk.1.exp_probs_b.bias", "blk.1.ffn_gate_shexp.weight", "blk.1.ffn_gate_exps.weight"} <= names
    m = GGUFReader(mmproj)
    assert m.get_field("clip.projector_type").contents() == "glm4v"
    mnames = {x.name for x in m.tensors}
    assert {
        "v.patch_embd.weight",
        "v.patch_embd.weight.1",
        "v.patch_embd.bias",
        "mm.patch_merger.weight",
    } <= mnames


def test_inconsistent_configs_are_refused(tmp_path):
    from mode_edge.arch import architecture_for
    from mode_edge.errors import UserError
    from mode_edge.formats.checkpoint import Checkpoint

    d = build_tiny_model(tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    for key, value, message in (
        ("topk_group", 3, "topk_group < n_group"),  # (2 of 2 groups is no grouping: accepted)
        ("n_shared_experts", 0, "requires a shared expert"),
        ("first_k_dense_replace", 3, "leaves no MoE layer"),
    ):
        bad = json.loads(json.dumps(cfg))
        bad["text_config"][key] = value
        (d / "config.json").write_text(json.dumps(bad))
        with pytest.raises(UserError, match=message):
            architecture_for(Checkpoint(d))


@pytest.fixture(scope="module")
def session_glm(glm):
    from mode_edge.run.mtmd import MtmdSession

    _, text, mmproj = glm["per_expert"]
    with MtmdSession(text, mmproj, f32_kv=True) as s:
        yield s


@pytest.mark.runtime
def test_image_embeddings_and_logits_match_transformers(glm, hf_glm, session_glm):
    """mmproj against the vision tower (a 112x84 picture: no resize on either side), then
    image + text through both models: M-RoPE positions of the image tokens."""
    from transformers import AutoImageProcessor, AutoTokenizer

    model_dir = glm["per_expert"][0]
    img = sample_image()
    inputs = AutoImageProcessor.from_pretrained(model_dir)(images=[Image.fromarray(img)], return_tensors="pt")
    with torch.no_grad():
        out = hf_glm.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    ref = out.pooler_output.numpy()
    got = session_glm.image_embeddings(img)
    assert got.shape == ref.shape == (12, 256)
    assert np.abs(got - ref).max() <= 2e-3 * float(ref.max() - ref.min())

    tok = AutoTokenizer.from_pretrained(model_dir)
    question = "What shape is this?<|assistant|>\n"
    hf_text = "[gMASK]<sop><|user|>\n<|begin_of_image|>" + "<|image|>" * 12 + "<|end_of_image|>" + question
    ids = tok(hf_text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ref_logits = (
            hf_glm(
                input_ids=ids,
                mm_token_type_ids=(ids == hf_glm.config.image_token_id).int(),
                pixel_values=inputs["pixel_values"],
                image_grid_thw=inputs["image_grid_thw"],
            )
            .logits[0, -1]
            .numpy()
        )
    got_logits = session_glm.last_logits("[gMASK]<sop><|user|>\n" + session_glm.marker + question, [img])
    assert np.abs(got_logits - ref_logits).max() <= 2e-3 * float(ref_logits.max() - ref_logits.min())
    assert got_logits.argmax() == ref_logits.argmax()


def test_inspect_shows_dense_layers_and_shared_experts(glm, capsys):
    from mode_edge.gguf import summarize
    from tests.helpers import cli

    _, text, _ = glm["per_expert"]
    info = summarize(text)
    assert info["dense_layers"] == [0]
    parts = info["parts"]
    assert parts["dense-layer FFNs"]["tensors"] == 3 and parts["shared experts"]["tensors"] == 6
    assert parts["routed experts"]["tensors"] == 6 and "blk.0.attn_norm.weight" not in str(parts)
    total = sum(p["bytes"] for p in parts.values())
    assert total == sum(v["bytes"] for v in info["types"].values())
    assert cli(["inspect", str(text)]) == 0
    out = capsys.readouterr().out
    assert "dense layers  0 (no routed experts)" in out and "dense-layer FFNs" in out


def test_layers_past_num_hidden_layers_are_skipped(tmp_path):
    """GLM checkpoints can carry a next-token-prediction layer after the decoder (transformers
    ignores it on load; llama.cpp's glm4moe runs without it): converted without it."""
    from gguf import GGUFReader
    from safetensors.numpy import load_file, save_file

    from mode_edge.gguf.export import export_model

    d = build_tiny_model(tmp_path / "m")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    tensors = load_file(str(d / shard))
    extra = {"model.language_model.layers.3.eh_proj.weight": np.ones((256, 512), np.float32),
             "model.language_model.layers.3.enorm.weight": np.ones(256, np.float32)}  # fmt: skip
    save_file({**tensors, **extra}, str(d / shard), metadata={"format": "pt"})
    index["weight_map"].update({n: shard for n in extra})
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    r = GGUFReader(export_model(d, tmp_path / "out", "f32").text_path)
    assert r.get_field("glm4moe.block_count").contents() == 3
    assert not any(t.name.startswith("blk.3.") for t in r.tensors)
    assert r.get_field("glm4moe.nextn_predict_layers") is None
