"""Expert groups in the other architectures' files (Qwen3.5-MoE: llama.cpp arch qwen35moe, hybrid
layers and shared experts; InternVL3.5-MoE: qwen3moe; GLM-4.5V: glm4moe, a dense first layer and
a grouped sigmoid router; Llama 4: llama4, interleaved dense layers, weights before the experts):
the loader and graph changes are architecture-independent.

Exact checks first (same-type groups give the stock file's logits bit for bit; regrouping mixed
types changes nothing beyond float rounding), then the masked fallback against the skip path. Mixed
types against the same weights dequantized into a stock F32 file differ by the quantized
kernels' 8-bit activations; in the hybrid tiny model that noise is larger than in the Qwen3-VL
one (the delta-rule state carries it along the sequence), so the bound is a control measured in
the same run: a stock file with every expert Q8_0 against its own dequantized copy.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader

from mode_edge.arch import architecture_for
from mode_edge.formats.checkpoint import Checkpoint
from mode_edge.formats.plan import QuantPlan
from mode_edge.formats.tensors import Role
from mode_edge.gguf.export import export_model
from testbed import tiny_glm4v_moe, tiny_internvl_moe, tiny_llama4, tiny_qwen3_5_moe
from tests.gguf_rewrite import degroup_to_f32, regroup
from tests.runtime.test_groups import ONE_OP, _mixed_types, logits

pytestmark = pytest.mark.runtime
T = GGMLQuantizationType


BUILDERS = {
    "qwen3_5_moe": tiny_qwen3_5_moe.build_tiny_model,
    "internvl_moe": tiny_internvl_moe.build_tiny_model,
    "glm4v_moe": tiny_glm4v_moe.build_tiny_model,
    "llama4": tiny_llama4.build_tiny_model,
}


@pytest.fixture(scope="module", params=list(BUILDERS))
def q35_files(request, tmp_path_factory):
    """F32, a stock file with Q4_K and one with Q8_0 experts, and mixed per-expert types
    (Q2_K/Q3_K/Q4_K/Q8_0) requantized from the F32 file, with its dequantized stock copy."""
    d = tmp_path_factory.mktemp("q35g")
    model = BUILDERS[request.param](d / "tiny")
    files = {"F32": export_model(model, d / "f32", "f32").text_path}
    experts = [s.name for s in architecture_for(Checkpoint(model)).text_tensors() if s.role == Role.EXPERT]
    for t in (T.Q4_K, T.Q8_0):
        plan = QuantPlan(method=f"ref-{t.name}", default=T.F32, tensors={n: t for n in experts})
        files[t.name] = export_model(model, d / t.name, None, plan=plan, label=t.name.lower()).text_path
    E = next(int(x.shape[-1]) for x in GGUFReader(files["F32"]).tensors if "_exps." in x.name)
    types = {n: _mixed_types(E, i) for i, n in enumerate(experts)}
    groups = {n: [list(dict.fromkeys(types[n])).index(t) for t in types[n]] for n in experts}
    regroup(files["F32"], d / "mixed.gguf", groups=groups, types=types)
    files["mixed"] = d / "mixed.gguf"
    degroup_to_f32(files["mixed"], d / "mixed-f32.gguf")
    files["mixed-f32"] = d / "mixed-f32.gguf"
    # each group split in two (one type per group still), numbered in reverse
    rank = {n: [sum(1 for f in range(e) if g[f] == g[e]) for e in range(E)] for n, g in groups.items()}
    split = {n: [2 * (max(g) - g[e]) + rank[n][e] % 2 for e in range(E)] for n, g in groups.items()}
    regroup(files["F32"], d / "mixed-resplit.gguf", groups=split, types=types)
    files["mixed-resplit"] = d / "mixed-resplit.gguf"
    regroup(files["Q8_0"], d / "q8-g.gguf", n_groups=2)
    degroup_to_f32(d / "q8-g.gguf", d / "q8-f32.gguf")
    files["Q8_0-f32"] = d / "q8-f32.gguf"
    return files


@pytest.mark.parametrize("steps", [False, True], ids=["batch", "token-by-token"])
def test_same_type_groups_give_the_stock_logits(q35_files, tmp_path, steps):
    grouped = tmp_path / "grouped-q4k.gguf"
    regroup(q35_files["Q4_K"], grouped, n_groups=3)
    log: list[str] = []
    ref = logits(q35_files["Q4_K"], tmp_path, steps=steps)
    got = logits(grouped, tmp_path, steps=steps, log=log)
    assert ONE_OP in log[0]
    assert np.array_equal(got, ref)


def test_regrouping_mixed_types_is_exact_and_fallback_equals_skip(q35_files, tmp_path):
    a = logits(q35_files["mixed"], tmp_path)
    span = float(a.max() - a.min())
    assert np.abs(a - logits(q35_files["mixed-resplit"], tmp_path)).max() <= 1e-5 * span
    # the masked fallback runs the same products, but clamped ids give some experts more rows and
    # so other kernels or chunking: float rounding, which this model's recurrence carries along
    # (measured: the first positions are bit-equal, the largest gap 0.4% of the range)
    fallback = logits(q35_files["mixed"], tmp_path, env={"MODE_EDGE_GROUPS_FALLBACK": "1"})
    assert np.abs(a - fallback).max() <= 0.01 * span


@pytest.mark.parametrize("steps", [False, True], ids=["batch", "token-by-token"])
def test_mixed_types_match_the_dequantized_stock_file(q35_files, tmp_path, steps):
    def gap(quantized, dequantized):
        a, b = logits(dequantized, tmp_path, steps=steps), logits(quantized, tmp_path, steps=steps)
        span = float(a.max() - a.min())
        return np.abs(a - b).mean() / span, (a.argmax(-1) == b.argmax(-1)).mean()

    mean_mixed, agree_mixed = gap(q35_files["mixed"], q35_files["mixed-f32"])
    mean_ctrl, agree_ctrl = gap(q35_files["Q8_0"], q35_files["Q8_0-f32"])
    # a misplaced expert or a wrong type moves logits by O(1) of the range; the noise is ~1%
    assert mean_mixed <= max(2 * mean_ctrl, 0.005), (mean_mixed, mean_ctrl)
    assert mean_mixed <= 0.02
    # argmax over 27 positions of a random model with near-ties: measured 0.70 (control 0.81) on qwen3_5_moe
    assert agree_mixed >= 0.6, (agree_mixed, agree_ctrl)
