"""The other architectures' files against llama.cpp's own quantizer: pure types and a preset, byte
for byte (Qwen3.5-MoE: what llama-quantize keeps F32 in a hybrid model, the conv kernel, A, dt bias,
both gates; GLM-4.5V: a dense layer, the score-correction bias; InternVL3.5-MoE: qwen3moe)."""

from __future__ import annotations

import pytest
from gguf import GGMLQuantizationType as T

from mode_edge.formats.plan import QuantPlan
from mode_edge.gguf.export import export_model
from testbed import tiny_glm4v_moe, tiny_llama4, tiny_qwen3_5_moe
from tests.quantize.test_quantize import _ftype, _llama_quantize, _tensor_bytes

BUILDERS = {
    "qwen3_5_moe": lambda d: tiny_qwen3_5_moe.build_tiny_model(d, layout="fused"),
    "glm4v_moe": tiny_glm4v_moe.build_tiny_model,  # a dense first layer: its FFN as llama-quantize types it
    "llama4": tiny_llama4.build_tiny_model,
}


@pytest.fixture(scope="module", params=list(BUILDERS))
def q35_f32(request, tmp_path_factory):
    d = BUILDERS[request.param](tmp_path_factory.mktemp("q35q") / "tiny")
    return d, export_model(d, tmp_path_factory.mktemp("q35q-f32"), "f32").text_path


def _same_bytes(ref_path, ours) -> dict:
    ref, got = _tensor_bytes(ref_path), _tensor_bytes(ours)
    assert ref.keys() == got.keys()
    for name, (rtype, rbytes) in ref.items():
        assert got[name][0] == rtype, f"{name}: {got[name][0].name} vs llama.cpp's {rtype.name}"
        assert (got[name][1] == rbytes).all(), f"{name} ({rtype.name}) differs from llama.cpp's bytes"
    return ref


@pytest.mark.runtime  # llama_model_quantize loads the model
@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q8_0], ids=lambda t: t.name)
def test_pure_files_byte_identical_to_llama_quantize(q35_f32, qtype, tmp_path):
    model_dir, f32 = q35_f32
    ref_path = tmp_path / "ref.gguf"
    _llama_quantize(f32, ref_path, _ftype(qtype), pure=True)
    ours = export_model(
        model_dir, tmp_path / "ours", None, plan=QuantPlan(default=qtype), label="x"
    ).text_path
    ref = _same_bytes(ref_path, ours)
    moe = 1 if "blk.0.ffn_down.weight" in ref else 0  # GLM: layer 0 is dense
    assert (
        ref[f"blk.{moe}.ffn_gate_inp.weight"][0] == T.F32
        and ref[f"blk.{moe}.ffn_down_exps.weight"][0] == qtype
    )
    if moe:  # GLM and Llama 4: the dense FFN at qtype; GLM's score-correction bias F32
        assert ref["blk.0.ffn_down.weight"][0] == qtype
        assert ref.get("blk.1.exp_probs_b.bias", (T.F32,))[0] == T.F32
    if "blk.0.ssm_a" in ref:  # qwen35moe
        for name in ("blk.0.ssm_conv1d.weight", "blk.0.ssm_a", "blk.0.ffn_gate_inp_shexp.weight"):
            assert ref[name][0] == T.F32, name
        assert ref["blk.0.ffn_down_shexp.weight"][0] == qtype and ref["blk.0.attn_qkv.weight"][0] == qtype


@pytest.mark.runtime
def test_preset_plan_matches_llama_quantize(q35_f32, tmp_path):
    import llama_cpp

    from mode_edge.cli.convert import type_plan

    model_dir, f32 = q35_f32
    ref_path = tmp_path / "ref.gguf"
    _llama_quantize(f32, ref_path, llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, pure=False)
    plan, label = type_plan(model_dir, "Q4_K_M", 2)
    ours = export_model(model_dir, tmp_path / "ours", None, plan=plan, label=label, n_threads=2).text_path
    ref = _same_bytes(ref_path, ours)
    assert len({t for t, _ in ref.values()} - {T.F32}) >= 2
