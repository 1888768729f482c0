"""`mode-edge plan`: a type for every routed expert under a budget (the ILP)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mode_edge.cli.app import app, console, out
from mode_edge.errors import UserError

PLAN_EPILOG = """Examples:

  mode-edge plan --stats stats/ --budget 12GB -o plan.json                  (MODE, a type per expert)

  mode-edge plan --stats stats/ --budget 3.2bpw --method frequency -o freq.json

  mode-edge plan --stats stats/ --budget 12GB --granularity tensor -o plan.json   (stock llama.cpp runs it)

Writes PLAN.json, PLAN.png (bits per expert beside its text and key-vision frequency) and
PLAN.imatrix.gguf (the method's importance matrix, which `mode-edge pack` picks up).
Methods as published: uniform, frequency (MC-MoE), hessian (MoPEQ), veq (VEQ-MA at one type),
mode (MODE, one ILP per layer). Our variants: mode-global (one ILP over all layers), hessian-data
(MoPEQ on a data-dependent Hessian), veq-alloc (VEQ-ME's importance as an allocator), and the ablations mode-text, mode-pooled, mode-allvision,
mode-nosens. docs/methods.md says what each one measures and what is published.
"""


@app.command("plan", epilog=PLAN_EPILOG)
def plan_cmd(
    stats_dir: Path = typer.Option(..., "--stats", help="Expert statistics from `mode-edge calibrate`."),
    budget: str = typer.Option(
        ...,
        "--budget",
        help="Total bytes of both files (12GB = 12e9, 12GiB = 12*2^30) "
        "or bits per routed-expert weight (3.5bpw).",
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Plan file to write (JSON)."),
    method: str = typer.Option("mode", "--method", "-m", help="Allocation method."),
    model_dir: Optional[Path] = typer.Option(
        None, "--model", help="Model folder (default: the one the statistics were measured on)."
    ),
    granularity: str = typer.Option(
        "expert", "--granularity", help="expert: a type per expert; tensor: one type per expert tensor."
    ),
    per_projection: bool = typer.Option(
        False, "--per-projection", help="With expert granularity: gate, up and down chosen separately."
    ),
    per_layer: Optional[bool] = typer.Option(
        None,
        "--per-layer-bits/--global-bits",
        help="One ILP per layer, each holding the average (the papers' "
        "constraint), or one global ILP (default: the method's own; "
        "frequency and mode are per layer).",
    ),
    types: Optional[str] = typer.Option(
        None, "--types", help="Comma-separated candidate types (default: those calibration measured)."
    ),
    floor: Optional[str] = typer.Option(None, "--floor", help="Smallest type an expert may get."),
    ceiling: Optional[str] = typer.Option(None, "--ceiling", help="Largest type an expert may get."),
    other: str = typer.Option("Q8_0", "--other", help="Type of the non-expert text matrices."),
    attn: Optional[str] = typer.Option(
        None,
        "--attn-type",
        help="Type of the attention matrices, or auto: the ILP chooses "
        "from their measured sensitivity (default: --other).",
    ),
    shared: Optional[str] = typer.Option(
        None,
        "--shared-type",
        help="Type of the shared experts (models that have them), or auto: ILP items priced by "
        "their measured sensitivity (default: auto with a byte budget and a mode method, else --other).",
    ),
    dense: Optional[str] = typer.Option(
        None,
        "--dense-type",
        help="Type of the FFNs of dense (non-MoE) layers (models that have them, e.g. GLM-4.5V's "
        "first layer), or auto: ILP items as --shared-type (the same default).",
    ),
    mmproj: str = typer.Option("F16", "--mmproj-type", help="Type of the vision projector's matrices."),
    context: int = typer.Option(
        0, "--context", help="Reserve the KV cache of this many tokens in a byte budget."
    ),
    alpha: float = typer.Option(1.0, "--alpha", help="frequency: exponent of the count."),
    beta: float = typer.Option(1.5, "--beta", help="frequency: exponent of the routing weight."),
    classes: int = typer.Option(3, "--hessian-classes", help="hessian: k-means bit classes."),
    scope: str = typer.Option(
        "layer", "--hessian-scope", help="hessian: cluster per layer or over the model."
    ),
    gamma: Optional[float] = typer.Option(
        None,
        "--veq-gamma",
        help="veq: text/vision gradient-norm ratio (default: the one calibration "
        "measured, else VEQ's reported 22.4).",
    ),
    time_limit: float = typer.Option(60.0, "--time-limit", help="Seconds the ILP solver may take."),
    no_png: bool = typer.Option(False, "--no-png", help="Do not draw PLAN.png."),
) -> None:
    """Choose a llama.cpp type for every routed expert under a byte budget (the ILP)."""
    from mode_edge.allocate import AllocOptions, allocate, parse_budget, save_plan
    from mode_edge.formats.stats import ExpertStats
    from mode_edge.report import PlanReport

    if scope not in ("layer", "model"):
        raise UserError(f"--hessian-scope {scope!r} is not layer or model", "use layer or model")
    stats = ExpertStats.load(stats_dir)
    model_dir = model_dir or Path(stats.manifest["model"])
    if not model_dir.is_dir():
        raise UserError(
            f"the model the statistics were measured on, {model_dir}, is not there", "pass --model DIR"
        )
    opts = AllocOptions(
        method=method,
        granularity=granularity,
        split_projections=per_projection,
        per_layer=per_layer,
        types=[t.strip() for t in types.split(",")] if types else None,
        floor=floor,
        ceiling=ceiling,
        other=other,
        attn=attn,
        shared=shared,
        dense=dense,
        mmproj=mmproj,
        context=context,
        method_options={
            "alpha": alpha,
            "beta": beta,
            "hessian_classes": classes,
            "hessian_scope": scope,
            **({"veq_gamma": gamma} if gamma else {}),
        },
        time_limit=time_limit,
    )
    parsed = parse_budget(budget)
    with console.status("allocating"):
        alloc = allocate(stats, model_dir, parsed, opts)
    written, _ = save_plan(alloc, stats, opts, output, str(parsed), png=not no_png)
    PlanReport.of(alloc, parsed).print(out)
    out.print("wrote " + ", ".join(str(p) for p in written))
