"""`mode-edge calibrate`: MODE's expert statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mode_edge.cli.app import app, out
from mode_edge.cli.common import calibration_progress, check_device
from mode_edge.errors import UserError

CALIBRATE_EPILOG = """Example:

  mode-edge calibrate ./Qwen3-VL-30B-A3B-Instruct --data calib/ -o stats/ --samples 128

DATA is a folder with prompts.jsonl (one {"image": "images/x.png", "prompt": "..."} per line;
"image" may be left out for text-only lines) and the images it names. Rerunning after an
interruption resumes from the last finished layer.
"""


@app.command(epilog=CALIBRATE_EPILOG)
def calibrate(
    model_dir: Path = typer.Argument(..., help="Hugging Face model folder."),
    data: Path = typer.Option(..., "--data", help="Calibration folder (prompts.jsonl + images)."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for the expert statistics."),
    samples: int = typer.Option(128, "--samples", help="How many samples to draw (seeded)."),
    seed: int = typer.Option(0, "--seed"),
    max_length: int = typer.Option(4096, "--max-length", help="Longer samples are left out."),
    rho: float = typer.Option(0.2, "--rho", help="Share of image tokens kept as key tokens per layer."),
    tokens_per_expert: int = typer.Option(
        512, "--tokens-per-expert", help="Cached inputs per expert and modality for sensitivity."
    ),
    probes: int = typer.Option(
        16, "--hessian-probes", help="Hutchinson probes for the data-dependent Hessian trace (hessian-data)."
    ),
    count_samples: Optional[int] = typer.Option(
        None,
        "--count-samples",
        help="Draw this many samples for the routing counts; the first "
        "--samples of them also give sensitivity and importance "
        "(MODE: 512 and 128).",
    ),
    gamma: Optional[float] = typer.Option(
        None, "--veq-gamma", help="VEQ's text/vision gradient-norm ratio (default: measured)."
    ),
    gamma_samples: int = typer.Option(
        8, "--gamma-samples", help="Image samples to measure VEQ's gamma on (0: use the reported 22.4)."
    ),
    types: Optional[str] = typer.Option(
        None, "--types", help="Comma-separated candidate types (default: the ladder)."
    ),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave out samples whose image cannot be read."),
    offload: str = typer.Option(
        "auto", "--offload", help="Where hidden states wait between layers: auto, memory or disk."
    ),
    device: str = typer.Option(
        "cpu", "--device", help="Where decoder layers run: cpu, cuda or mps (statistics stay on the CPU)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Measure MODE's expert statistics (frequencies by modality, key tokens, sensitivity)."""
    from mode_edge.calibrate import CalibrationOptions
    from mode_edge.calibrate import calibrate as run_calibration
    from mode_edge.formats.quant_types import LADDER

    check_device(device)
    if offload not in ("auto", "memory", "disk"):
        raise UserError(f"--offload {offload!r} is not one of auto, memory, disk", "pick one of them")
    opts = CalibrationOptions(
        samples=samples,
        seed=seed,
        max_length=max_length,
        rho=rho,
        cap=tokens_per_expert,
        probes=probes,
        skip_bad=skip_bad,
        offload=offload,
        device=device,
        count_samples=count_samples,
        gamma=gamma,
        gamma_samples=gamma_samples,
        types=[t.strip().upper() for t in types.split(",")] if types else [t.name for t in LADDER],
    )
    with calibration_progress(quiet) as cal_progress:
        run_calibration(model_dir, data, output, opts, cal_progress)
    out.print(f"wrote expert statistics to {output}")
