"""`mode-edge convert --budget`: calibrate -> plan -> pack, each stage through its file.

OUT_DIR/stats/              ExpertStats (reused when model, data and options are unchanged)
OUT_DIR/plan.json           QuantPlan, with plan.png and plan.imatrix.gguf beside it
OUT_DIR/<name>-<label>.gguf the text model; OUT_DIR/mmproj-<name>-<type>.gguf the projector
OUT_DIR/report.json, report.md   sizes, bits per part, experts per type, seconds per stage
OUT_DIR/README.md           a model card (mode_edge/card.py): files, the command, how to run them
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mode_edge.allocate import (
    Allocation,
    AllocOptions,
    Budget,
    allocate,
    check_budget_before_calibration,
    save_plan,
)
from mode_edge.arch import Architecture, open_architecture
from mode_edge.calibrate import CalibrationOptions, Progress, calibrate
from mode_edge.card import write_card
from mode_edge.errors import UserError
from mode_edge.formats.samples import PROMPTS_FILE
from mode_edge.formats.stats import ExpertStats
from mode_edge.gguf import ExportResult, export_model
from mode_edge.report import PlanReport

#: a model folder may carry its own calibration set (the bundled demo model does)
OWN_DATA = "calibration"

DATA_HINT = (
    "pass --data DIR: a folder with prompts.jsonl and the images it names, 128-512 image+question "
    "pairs like the model's real use (e.g. COCO photos with ShareGPT4V-style questions) plus some "
    "text-only prompts; answers are not needed"
)


def default_data(model_dir: Path) -> Path:
    own = Path(model_dir) / OWN_DATA
    if (own / PROMPTS_FILE).is_file():
        return own
    raise UserError(f"{model_dir} brings no calibration data of its own", DATA_HINT)


@dataclass
class BudgetResult:
    alloc: Allocation
    export: ExportResult
    out_dir: Path
    report: PlanReport

    @property
    def files(self) -> list[Path]:
        return [self.export.text_path, self.export.mmproj_path]


def convert_with_budget(
    model: Path | Architecture,
    out_dir: Path,
    budget: Budget,
    alloc_opts: AllocOptions,
    cal_opts: CalibrationOptions,
    data_dir: Path | None = None,
    cal_progress: Progress | None = None,
    on_stage: Callable[[str], None] | None = None,
    pack_kwargs: dict | None = None,
    command: str | None = None,
) -> BudgetResult:
    """model: a folder or an opened Architecture (opened once here and passed to every stage);
    budget: parsed (allocate.parse_budget); command: the command line for the model card."""
    model = open_architecture(model)
    model_dir = model.ckpt.dir
    data_dir = Path(data_dir) if data_dir is not None else default_data(model_dir)  # fails before any work
    check_budget_before_calibration(model, budget, alloc_opts, cal_opts.types)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output path {out_dir} exists and is not a folder", "choose another -o")
    stages: dict[str, float] = {}
    stage = on_stage or (lambda name: None)

    stage("calibrate")
    t = time.perf_counter()
    stats_dir = calibrate(model, data_dir, out_dir / "stats", cal_opts, cal_progress)
    stages["calibrate"] = time.perf_counter() - t

    stage("plan")
    t = time.perf_counter()
    stats = ExpertStats.load(stats_dir)
    alloc = allocate(stats, model, budget, alloc_opts)
    _, imatrix = save_plan(alloc, stats, alloc_opts, out_dir / "plan.json", str(budget))
    stages["plan"] = time.perf_counter() - t

    stage("pack")
    t = time.perf_counter()
    label = re.sub(r"[^a-z0-9_.-]+", "-", f"{alloc.plan.method}-{budget.text or budget}".lower()).strip("-")
    result = export_model(
        model, out_dir, None, plan=alloc.plan, label=label, imatrix=imatrix, **(pack_kwargs or {})
    )
    stages["pack"] = time.perf_counter() - t
    written = result.text_bytes + result.mmproj_bytes
    if budget.bytes is not None and written + alloc.reserve_bytes > budget.bytes:
        raise RuntimeError(
            f"wrote {written} bytes for a budget of {budget.bytes}: the plan's accounting is wrong"
        )
    report = PlanReport.of(alloc, budget, stages, [result.text_path, result.mmproj_path])
    report.write(out_dir)
    write_card(
        out_dir,
        result.text_path,
        result.mmproj_path,
        model_dir,
        command or f"mode-edge convert {model_dir} --budget {budget.text or budget} -o {out_dir}",
    )
    return BudgetResult(alloc, result, out_dir, report)
