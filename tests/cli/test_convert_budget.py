"""`mode-edge convert --budget`: calibrate -> plan -> pack in one command, files within budget."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import cli

TYPES = "Q2_K,Q3_K,Q4_K,Q6_K"


@pytest.fixture(scope="module")
def data_dir(calibration_data):
    return calibration_data


@pytest.fixture(scope="module")
def model_dir(tiny_models):
    return tiny_models["transformers"]


def _budget_between_q2_and_q4(model_dir, tmp_path) -> int:
    sizes = []
    for t in ("Q2_K", "Q4_K"):
        assert cli(["convert", str(model_dir), "-o", str(tmp_path / t), "--type", t, "-q"]) == 0
        sizes.append(sum(p.stat().st_size for p in (tmp_path / t).glob("*.gguf")))
    return (sizes[0] + sizes[1]) // 2


def test_convert_budget_writes_everything_within_budget_and_reuses_stats(
    model_dir, data_dir, tmp_path, capsys
):
    budget = _budget_between_q2_and_q4(model_dir, tmp_path)
    out = tmp_path / "out"
    args = [
        "convert",
        str(model_dir),
        "--budget",
        str(budget),
        "--data",
        str(data_dir),
        "-o",
        str(out),
        "--types",
        TYPES,
        "-q",
    ]
    assert cli(args) == 0
    ggufs = sorted(out.glob("*.gguf"))
    names = {p.name for p in ggufs}
    assert any(n.startswith("mmproj-") for n in names) and "plan.imatrix.gguf" in names
    model_files = [p for p in ggufs if p.name != "plan.imatrix.gguf"]
    assert sum(p.stat().st_size for p in model_files) <= budget
    report = json.loads((out / "report.json").read_text())
    assert report["total_bytes"] == sum(p.stat().st_size for p in model_files)
    assert set(report["seconds"]) == {"calibrate", "plan", "pack"}
    assert (out / "plan.png").is_file() and (out / "report.md").is_file()
    assert (out / "stats" / "manifest.json").is_file()
    stamp = (out / "stats" / "expert_stats.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert cli(args) == 0  # rerun: the statistics are reused, not recomputed
    assert "reusing" in capsys.readouterr().err
    assert (out / "stats" / "expert_stats.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.runtime
def test_tensor_granularity_file_runs_in_stock_llama_cpp(model_dir, data_dir, tmp_path):
    import llama_cpp

    budget = _budget_between_q2_and_q4(model_dir, tmp_path)
    out = tmp_path / "out"
    assert (
        cli(
            [
                "convert",
                str(model_dir),
                "--budget",
                str(budget),
                "--data",
                str(data_dir),
                "-o",
                str(out),
                "--types",
                TYPES,
                "--granularity",
                "tensor",
                "-q",
            ]
        )
        == 0
    )
    text = next(p for p in out.glob("*.gguf") if not p.name.startswith(("mmproj-", "plan.")))
    llm = llama_cpp.Llama(str(text), n_ctx=64, n_threads=2, verbose=False, logits_all=True)
    try:
        llm.eval(llm.tokenize(b"What is 12 + 30?"))
        logits = np.asarray(llm.scores[: llm.n_tokens])
    finally:
        llm.close()
    assert logits.shape[0] > 2 and np.isfinite(logits).all() and logits.std() > 0


def test_convert_budget_errors(model_dir, data_dir, tmp_path, capsys):
    assert (
        cli(
            [
                "convert",
                str(model_dir),
                "--budget",
                "1MB",
                "--data",
                str(data_dir),
                "-o",
                str(tmp_path / "small"),
                "--types",
                TYPES,
                "-q",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "at least" in err and not (tmp_path / "small").exists()  # refused before calibrating
    assert cli(["convert", str(model_dir), "--budget", "6MB", "-o", str(tmp_path / "nodata"), "-q"]) == 2
    assert "--data" in capsys.readouterr().err and not (tmp_path / "nodata").exists()
    assert (
        cli(["convert", str(model_dir), "--budget", "6MB", "--type", "Q4_K", "-o", str(tmp_path / "x")]) == 2
    )
    assert (
        cli(
            [
                "convert",
                str(model_dir),
                "--budget",
                "6MB",
                "--method",
                "magic",
                "--data",
                str(data_dir),
                "-o",
                str(tmp_path / "y"),
            ]
        )
        == 2
    )
    assert "unknown method" in capsys.readouterr().err
