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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mode_edge.allocate.allocator import AllocOptions, Allocation, allocate, check_budget_before_calibration
from mode_edge.allocate.budget import parse_budget
from mode_edge.allocate.report import histogram, parts, save_plan
from mode_edge.calibrate.data import PROMPTS_FILE
from mode_edge.calibrate.runner import CalibrationOptions, Progress, calibrate
from mode_edge.card import write_card
from mode_edge.errors import UserError
from mode_edge.files import atomic_path, write_json_atomic
from mode_edge.gguf.export import ExportResult, export_model
from mode_edge.signals.stats import ExpertStats

#: a model folder may carry its own calibration set (the bundled demo model does)
OWN_DATA = "calibration"

DATA_HINT = ("pass --data DIR: a folder with prompts.jsonl and the images it names, 128-512 image+question "
             "pairs like the model's real use (e.g. COCO photos with ShareGPT4V-style questions) plus some "
             "text-only prompts; answers are not needed")


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
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def files(self) -> list[Path]:
        return [self.export.text_path, self.export.mmproj_path]


def convert_with_budget(model_dir: Path, out_dir: Path, budget: str, alloc_opts: AllocOptions,
                        cal_opts: CalibrationOptions, data_dir: Path | None = None,
                        cal_progress: Progress | None = None,
                        on_stage: Callable[[str], None] | None = None,
                        pack_kwargs: dict | None = None, command: str | None = None) -> BudgetResult:
    """command: the command line to write into the folder's model card (README.md)."""
    parsed = parse_budget(budget)          # bad budgets and data fail before any work
    data_dir = Path(data_dir) if data_dir is not None else default_data(model_dir)
    check_budget_before_calibration(model_dir, parsed, alloc_opts, cal_opts.types)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output path {out_dir} exists and is not a folder", "choose another -o")
    stages: dict[str, float] = {}
    stage = on_stage or (lambda name: None)

    stage("calibrate")
    t = time.perf_counter()
    stats_dir = calibrate(model_dir, data_dir, out_dir / "stats", cal_opts, cal_progress)
    stages["calibrate"] = time.perf_counter() - t

    stage("plan")
    t = time.perf_counter()
    stats = ExpertStats.load(stats_dir)
    alloc = allocate(stats, model_dir, parsed, alloc_opts)
    _, imatrix = save_plan(alloc, stats, alloc_opts, out_dir / "plan.json", str(parsed))
    stages["plan"] = time.perf_counter() - t

    stage("pack")
    t = time.perf_counter()
    label = re.sub(r"[^a-z0-9_.-]+", "-", f"{alloc.plan.method}-{budget}".lower()).strip("-")
    result = export_model(model_dir, out_dir, None, plan=alloc.plan, label=label, imatrix=imatrix,
                          **(pack_kwargs or {}))
    stages["pack"] = time.perf_counter() - t
    written = result.text_bytes + result.mmproj_bytes
    if parsed.bytes is not None and written + alloc.reserve_bytes > parsed.bytes:
        raise RuntimeError(f"wrote {written} bytes for a budget of {parsed.bytes}: the plan's accounting is wrong")
    res = BudgetResult(alloc, result, out_dir, stages)
    write_report(res, stats, str(parsed))
    write_card(out_dir, result.text_path, result.mmproj_path, model_dir, command or f"mode-edge convert {model_dir} "
               f"--budget {budget} -o {out_dir}")
    return res


def write_report(res: BudgetResult, stats: ExpertStats, budget: str) -> None:
    a = res.alloc
    data = {
        "budget": budget, "method": a.plan.method, "granularity": a.plan.extra.get("granularity"),
        "files": {p.name: p.stat().st_size for p in res.files},
        "total_bytes": a.total_bytes, "routed_expert_bpw": round(a.expert_bpw, 4),
        "parts": dict(parts(a)), "experts_by_type": {t: {"expert_tensors": u, "bytes": b}
                                                     for t, u, b in histogram(a)},
        "seconds": {k: round(v, 2) for k, v in res.stages.items()},
        "solver": a.plan.extra.get("solver"), "importance": a.plan.extra.get("importance"),
        "per_layer_bits": a.plan.extra.get("per_layer_bits"), "notes": a.notes,
    }
    write_json_atomic(res.out_dir / "report.json", data)
    lines = [f"# {a.plan.model}: {a.plan.method} at {budget}", "",
             f"{a.expert_bpw:.3f} bits per routed-expert weight; {a.total_bytes:,} bytes in all.", "",
             *[f"- {n}" for n in a.notes], *([""] if a.notes else []),
             "| part | bytes |", "|---|---:|", *[f"| {k} | {v:,} |" for k, v in parts(a)], "",
             "| type | expert tensors | bytes |", "|---|---:|---:|",
             *[f"| {t} | {u:,} | {b:,} |" for t, u, b in histogram(a)], "",
             "| stage | seconds |", "|---|---:|", *[f"| {k} | {v:.1f} |" for k, v in res.stages.items()], "",
             "Files: " + ", ".join(f"`{p.name}` ({p.stat().st_size:,} bytes)" for p in res.files), ""]
    with atomic_path(res.out_dir / "report.md") as tmp:
        tmp.write_text("\n".join(lines))

