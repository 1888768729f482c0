"""`mode-edge convert TINY --budget … -o out/ && mode-edge chat out/ --image …` on tiny Qwen3.5-MoE,
InternVL3.5-MoE, GLM-4.5V and Llama 4 models; shared experts (Qwen3.5, GLM, Llama 4) and dense
layers (GLM, Llama 4) as ILP
items or fixed by --shared-type / --dense-type; a budget too small for the dense parts."""

from __future__ import annotations

import json

import pytest
from gguf import GGUFReader

from mode_edge.formats.plan import QuantPlan
from testbed import tiny_glm4v_moe, tiny_internvl_moe, tiny_llama4, tiny_qwen3_5_moe
from tests.helpers import PICTURE, cli, make_data

# builder, a budget between the tiny model's all-Q2_K and all-Q4_K experts, shared-expert tensors,
# dense-layer FFN tensors
ARCHS = {
    "qwen3_5_moe": (tiny_qwen3_5_moe.build_tiny_model, 5_000_000, 12, 0),  # 4.4 MB .. 5.9 MB
    "internvl_moe": (tiny_internvl_moe.build_tiny_model, 3_800_000, 0, 0),  # 3.2 MB .. 4.4 MB
    "glm4v_moe": (tiny_glm4v_moe.build_tiny_model, 3_800_000, 6, 3),  # 3.1 MB at the smallest
    "llama4": (tiny_llama4.build_tiny_model, 3_700_000, 6, 6),  # 3.1 MB at the smallest
}
TYPES = "Q2_K,Q3_K,Q4_K,Q6_K"


@pytest.fixture(scope="module", params=list(ARCHS))
def converted_arch(request, tmp_path_factory):
    """(architecture, OUT folder) of `convert --budget`."""
    build, budget, *_ = ARCHS[request.param]
    model = build(tmp_path_factory.mktemp(f"{request.param}-cli") / "tiny")
    make_data(model / "calibration")
    out = tmp_path_factory.mktemp(f"{request.param}-out") / "out"
    assert cli(["convert", str(model), "--budget", str(budget), "--types", TYPES, "-o", str(out), "-q"]) == 0
    return request.param, out


def test_convert_fits_the_budget_and_prices_shared_experts(converted_arch):
    arch, out = converted_arch
    _, budget, n_shared, n_dense = ARCHS[arch]
    ggufs = [p for p in out.glob("*.gguf") if "imatrix" not in p.name]
    assert sum(p.stat().st_size for p in ggufs) <= budget
    plan = QuantPlan.load(out / "plan.json")
    shared = {n: t for n, t in plan.tensors.items() if "_shexp." in n}
    assert len(shared) == n_shared  # every layer's shared gate, up and down: items of the ILP
    report = json.loads((out / "report.json").read_text())
    assert sum(report.get("shared_experts_by_type", {}).values()) == n_shared
    assert ("shared experts (chosen by the ILP)" in report["parts"]) == (n_shared > 0)
    dense = {n: t for n, t in plan.tensors.items() if n.split(".")[-2] in ("ffn_gate", "ffn_up", "ffn_down")}
    assert len(dense) == n_dense  # the dense layers' FFNs: items of the ILP too
    assert sum(report.get("dense_ffns_by_type", {}).values()) == n_dense
    text = next(p for p in ggufs if not p.name.startswith("mmproj"))
    types = {t.name: t.tensor_type.name for t in GGUFReader(text).tensors}
    assert all(types[n] == t.name for n, t in {**shared, **dense}.items())
    assert any(n.endswith(".g1.ids") for n in types)  # experts of one tensor in different types


@pytest.mark.runtime
def test_chat_answers_with_an_image(converted_arch, capsys):
    _, out = converted_arch
    assert (
        cli(["chat", str(out), "--image", str(PICTURE), "--prompt", "What shape?", "--max-tokens", "8"]) == 0
    )
    assert capsys.readouterr().out.strip()


def test_shared_type_fixed_or_refused(tmp_path_factory, capsys):
    """Qwen3.5-MoE's statistics: a fixed --shared-type; auto refused for a method that cannot price it."""
    build, budget, *_ = ARCHS["qwen3_5_moe"]
    model = build(tmp_path_factory.mktemp("q35-shared") / "tiny")
    data = make_data(tmp_path_factory.mktemp("q35-shared-data") / "d")
    stats = tmp_path_factory.mktemp("q35-shared-stats")
    assert cli(["calibrate", str(model), "--data", str(data), "-o", str(stats), "--types", TYPES, "-q"]) == 0
    tmp = tmp_path_factory.mktemp("q35-plans")
    base = ["plan", "--stats", str(stats), "--budget", str(budget)]
    assert cli([*base, "--shared-type", "Q8_0", "-o", str(tmp / "p.json")]) == 0
    plan = QuantPlan.load(tmp / "p.json")
    assert {t.name for n, t in plan.tensors.items() if "_shexp." in n} == {"Q8_0"}
    capsys.readouterr()
    assert cli([*base, "--method", "frequency", "--shared-type", "auto", "-o", str(tmp / "f.json")]) == 2
    assert "--shared-type auto needs" in capsys.readouterr().err
    assert not (tmp / "f.json").exists()


def test_dense_type_fixed_and_a_budget_too_small_for_the_dense_parts(tmp_path_factory, capsys):
    """GLM-4.5V: --dense-type fixes the dense layer's FFN; a budget below the smallest file names
    the parts that take the bytes, dense-layer FFNs and shared experts among them."""
    build, budget, *_ = ARCHS["glm4v_moe"]
    model = build(tmp_path_factory.mktemp("glm-dense") / "tiny")
    data = make_data(tmp_path_factory.mktemp("glm-dense-data") / "d")
    stats = tmp_path_factory.mktemp("glm-dense-stats")
    assert cli(["calibrate", str(model), "--data", str(data), "-o", str(stats), "--types", TYPES, "-q"]) == 0
    tmp = tmp_path_factory.mktemp("glm-plans")
    base = ["plan", "--stats", str(stats)]
    assert cli([*base, "--budget", str(budget), "--dense-type", "Q8_0", "-o", str(tmp / "p.json")]) == 0
    plan = QuantPlan.load(tmp / "p.json")
    assert {plan.tensors[f"blk.0.ffn_{p}.weight"].name for p in ("gate", "up", "down")} == {"Q8_0"}
    capsys.readouterr()
    assert cli([*base, "--budget", "2000000", "-o", str(tmp / "small.json")]) == 2
    err = capsys.readouterr().err
    assert "below the smallest file" in err and "dense-layer FFNs" in err and "shared experts" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp / "small.json").exists()
