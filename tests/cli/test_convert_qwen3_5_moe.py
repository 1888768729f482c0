"""`mode-edge convert TINY --budget … -o out/ && mode-edge chat out/ --image …` on a tiny
Qwen3.5-MoE; shared experts as ILP items or fixed by --shared-type."""

from __future__ import annotations

import json

import pytest
from gguf import GGUFReader

from mode_edge.formats.plan import QuantPlan
from testbed.tiny_qwen3_5_moe import build_tiny_model
from tests.helpers import PICTURE, cli, make_data

BUDGET = 5_000_000  # between the tiny model's all-Q2_K (4.4 MB) and all-Q4_K experts


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = build_tiny_model(tmp_path_factory.mktemp("q35cli") / "tiny", layout="fused")
    make_data(d / "calibration")
    return d


@pytest.fixture(scope="module")
def out(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("q35out") / "out"
    assert (
        cli(
            [
                "convert",
                str(model),
                "--budget",
                f"{BUDGET}",
                "--types",
                "Q2_K,Q3_K,Q4_K,Q6_K",
                "-o",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    return out


def test_convert_prices_shared_experts_within_the_budget(out):
    ggufs = sorted(out.glob("*.gguf"))
    assert sum(p.stat().st_size for p in ggufs if "imatrix" not in p.name) <= BUDGET
    plan = QuantPlan.load(out / "plan.json")
    shared = {n: t for n, t in plan.tensors.items() if "_shexp." in n}
    assert len(shared) == 4 * 3  # every layer's gate, up and down: items of the ILP
    report = json.loads((out / "report.json").read_text())
    assert sum(report["shared_experts_by_type"].values()) == 12
    assert "shared experts (chosen by the ILP)" in report["parts"]
    text = next(p for p in ggufs if not p.name.startswith(("mmproj", "plan")))
    types = {t.name: t.tensor_type.name for t in GGUFReader(text).tensors}
    assert all(types[n] == t.name for n, t in shared.items())
    assert any(n.endswith(".g1.ids") for n in types)  # experts of one tensor in different types


@pytest.mark.runtime
def test_chat_answers_with_an_image(out, capsys):
    assert (
        cli(["chat", str(out), "--image", str(PICTURE), "--prompt", "What shape?", "--max-tokens", "8"]) == 0
    )
    assert capsys.readouterr().out.strip()


def test_shared_type_fixed_or_refused(out, tmp_path, capsys):
    stats = out / "stats"
    assert (
        cli(
            [
                "plan",
                "--stats",
                str(stats),
                "--budget",
                f"{BUDGET}",
                "--shared-type",
                "Q8_0",
                "-o",
                str(tmp_path / "p.json"),
            ]
        )
        == 0
    )
    plan = QuantPlan.load(tmp_path / "p.json")
    assert {t.name for n, t in plan.tensors.items() if "_shexp." in n} == {"Q8_0"}
    code = cli(
        [
            "plan",
            "--stats",
            str(stats),
            "--budget",
            f"{BUDGET}",
            "--method",
            "frequency",
            "--shared-type",
            "auto",
            "-o",
            str(tmp_path / "f.json"),
        ]
    )
    assert code == 2
    assert "--shared-type auto needs" in capsys.readouterr().err
    assert not (tmp_path / "f.json").exists()
