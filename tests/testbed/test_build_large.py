"""build-large's cache handling and the routing statistics of the testbed's card (report_large)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from testbed.build_large import RECIPE, STAGES, build_large
from testbed.report_large import routing_stats


def test_a_built_testbed_is_reused_and_another_model_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "t64"
    out.mkdir()
    stages = [{"config": {**s, "threads": 2}} for s in STAGES]
    (out / "training.json").write_text(json.dumps({"config": stages[0]["config"], "stages": stages}))
    assert build_large(out) == out  # returns at once: nothing trained
    assert "recipe unchanged" in capsys.readouterr().err
    (out / "training.json").write_text(json.dumps({"config": {**RECIPE, "threads": 2}}))  # stage 1 only
    with pytest.raises(SystemExit, match="another model"):
        build_large(out)
    (out / "training.json").write_text(json.dumps({"config": {**RECIPE, "steps": 5}}))
    with pytest.raises(SystemExit, match="another model"):
        build_large(out)
    assert (out / "training.json").is_file()


def test_routing_stats():
    L, E = 2, 8
    counts = np.full((L, E, 2), 10, dtype=np.int64)
    flat = routing_stats(counts, siblings=4)["layers"][0]
    assert flat["cv"] == pytest.approx(0) and flat["busiest8_share"] == pytest.approx(1.0)
    assert flat["sibling_cv"] == pytest.approx(0) and flat["mostly_text"] == 0
    counts[1, 0] = (0, 50)  # only vision tokens
    counts[1, 1] = (40, 0)  # only text tokens
    counts[1, 2] = (0, 0)  # never selected
    d = routing_stats(counts, siblings=4)
    layer = d["layers"][1]
    assert layer["never"] == 1 and layer["mostly_text"] == 1
    assert layer["vision_preferring"] == 1 and layer["text_preferring"] == 1
    assert sum(layer["text_share_hist"]) == E - 1  # the unselected expert is not in the histogram
    assert layer["cv"] > 0
    assert layer["sibling_text_range"] == pytest.approx(0.5)  # parts 0-3: text shares 0, 1, 0, 0.5; 4-7 alike
    assert d["mostly_text_experts"] == 1 and d["experts"] == L * E


def test_the_committed_card_renders_from_its_report_with_sections_in_order():
    """The card is generated: the committed report.json must still render, stage rows included."""
    from pathlib import Path

    from testbed.card_large import card

    ex = Path(__file__).resolve().parents[2] / "examples" / "testbed-64e"
    rep = json.loads((ex / "report.json").read_text())
    text = card(rep, "QUALITY-TABLE", "ROUTING-NOTES", "ORDERING-NOTES")
    assert text.index("ROUTING-NOTES") < text.index("QUALITY-TABLE") < text.index("ORDERING-NOTES")
    for n, st in enumerate(rep["training"]["stages"], 1):
        assert f"| {n} | {st['config']['steps']} | {st['config']['data_offset']} |" in text
    assert f"{rep['training']['train_seconds'] / 60:.1f} min" in text
    # the committed card is this rendering of its committed sources, not a hand-edited copy
    parts = [(ex / f).read_text() for f in ("quality.txt", "notes.md", "quality-notes.md")]
    assert (ex / "README.md").read_text() == card(rep, *parts)


def test_the_build_records_whether_it_ran_in_one_invocation(tmp_path, monkeypatch):
    """The card calls a time 'one run from nothing' only if build-large resumed no stage."""
    import testbed.build_large as bl
    from testbed.card_large import _build_time

    def fake_stage(stage_dir, cfg, n, of):  # the bookkeeping, without training
        stage_dir.mkdir(parents=True)
        rec = {"config": {k: getattr(cfg, k) for k in STAGES[n - 1]}, "history": [], "train_seconds": 60.0}
        rec |= {"torch_threads": 2, "deterministic_kernels": True}
        (stage_dir / "training.json").write_text(json.dumps(rec))

    monkeypatch.setattr(bl, "_train_stage", fake_stage)
    out = tmp_path / "t64"
    build_large(out)
    rec = json.loads((out / "training.json").read_text())
    assert rec["build"]["resumed_stages"] == [] and rec["build"]["wall_seconds"] >= 0
    assert rec["train_seconds"] == 60.0 * len(STAGES)
    assert "from nothing, in one run" in _build_time(rec) and "not byte-identical" in _build_time(rec)
    assert not list(tmp_path.glob("t64.stage*"))  # stage checkpoints are removed once the build is whole

    # a build stopped after stage 1 and started again resumes it: not one run's time
    out2 = tmp_path / "again"
    fake_stage(tmp_path / "again.stage1", bl.TrainConfig(**STAGES[0]), 1, len(STAGES))
    build_large(out2)
    rec2 = json.loads((out2 / "training.json").read_text())
    assert rec2["build"]["resumed_stages"] == [1]
    text = _build_time(rec2)
    assert "in one run" not in text and "stage 1 came from an earlier invocation" in text
    del rec2["build"], rec2["deterministic_kernels"]  # a record from before both were kept
    assert "was not recorded" in _build_time(rec2) and "Not reproducible to the byte" in _build_time(rec2)


def test_training_names_the_machine_a_builds_bytes_depend_on():
    import torch

    from testbed.train import machine

    m = machine()
    assert (
        m["torch"] == torch.__version__
        and m["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    )
    assert m["cpu"] and all(m[p] for p in ("numpy", "pillow", "transformers", "tokenizers"))
