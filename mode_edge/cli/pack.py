"""`mode-edge pack`: GGUF files with the types a QuantPlan gives each tensor and expert."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mode_edge.cli.app import app
from mode_edge.cli.common import export_files, load_imatrix


@app.command(
    epilog="Example: mode-edge pack ./Qwen3-VL-30B-A3B-Instruct --plan plan.json --imatrix stats/imatrix.gguf -o out/"
)
def pack(
    model_dir: Path = typer.Argument(..., help="Hugging Face model folder."),
    plan_path: Path = typer.Option(..., "--plan", help="QuantPlan JSON (from `mode-edge plan`)."),
    output: Path = typer.Option(
        ..., "-o", "--output", help="Folder for the GGUF files (created if missing)."
    ),
    imatrix: Optional[Path] = typer.Option(
        None, "--imatrix", help="Importance matrix (GGUF, llama-imatrix format)."
    ),
    label: Optional[str] = typer.Option(
        None, "--label", help="File name suffix (default: the plan's method)."
    ),
    threads: Optional[int] = typer.Option(None, "--threads", help="Quantizer threads (default: all cores)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write the GGUF files of a model with the types a QuantPlan gives each tensor and expert."""
    import re

    from mode_edge.formats.plan import QuantPlan

    plan = QuantPlan.load(plan_path)
    label = label or re.sub(r"[^A-Za-z0-9_.-]+", "-", plan.method).strip("-").lower() or "packed"
    if imatrix is None and plan.extra.get("imatrix"):  # the method's own importance, written beside the plan
        imatrix = plan_path.parent / plan.extra["imatrix"]
    export_files(
        model_dir,
        output,
        quiet,
        precision=None,
        plan=plan,
        label=label,
        imatrix=load_imatrix(imatrix),
        n_threads=threads,
    )
