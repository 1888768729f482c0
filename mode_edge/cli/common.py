"""Helpers several commands share: sizes, devices, progress bars, writing GGUF files."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from mode_edge.cli.app import console, out
from mode_edge.errors import UserError


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def export_files(model, output: Path, quiet: bool, **kwargs) -> None:
    """export_model with a progress bar, then the model card. model: a folder or an Architecture."""
    from mode_edge.arch import open_architecture
    from mode_edge.gguf import export_model

    model = open_architecture(model)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=True,
    ) as progress:
        task = progress.add_task("converting", total=None)
        result = export_model(
            model,
            output,
            on_plan=lambda total: progress.update(task, total=total),
            on_progress=lambda t: progress.update(task, advance=t.nbytes, description=t.name[:40]),
            **kwargs,
        )
    from mode_edge.card import command_line, write_card

    card = write_card(output, result.text_path, result.mmproj_path, model.ckpt.dir, command_line())
    out.print(f"wrote {result.text_path} ({human(result.text_bytes)})")
    out.print(f"wrote {result.mmproj_path} ({human(result.mmproj_bytes)})")
    out.print(f"wrote {card} (model card)")
    out.print(f"in {result.seconds:.1f} s")


def load_imatrix(path: Optional[Path]):
    if path is None:
        return None
    from mode_edge.formats.imatrix import Imatrix

    return Imatrix.load(path)


def check_device(device: str) -> None:
    import torch

    ok = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
    }
    if device not in ok:
        raise UserError(f"unknown device {device!r}", "use cpu, cuda or mps")
    if not ok[device]:
        raise UserError(
            f"--device {device} is not available on this machine (torch sees none)", "use --device cpu"
        )


@contextlib.contextmanager
def calibration_progress(quiet: bool):
    """Bars for layers and for samples within a layer, with tokens per second."""
    import time

    from mode_edge.calibrate import Progress as CalProgress

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=True,
    ) as progress:
        layers = progress.add_task("layers", total=None, rate="")
        samples_task = progress.add_task("samples", total=None, rate="")
        clock = {"t": 0.0, "tokens": 0}

        def on_sample(il: int, n_tokens: int) -> None:
            if clock["t"] == 0.0:
                clock["t"] = time.perf_counter()
            clock["tokens"] += n_tokens
            rate = clock["tokens"] / max(1e-9, time.perf_counter() - clock["t"])
            progress.update(samples_task, advance=1, description=f"layer {il}", rate=f"{rate:,.0f} tok/s")

        def on_layer_done(il: int) -> None:
            progress.update(layers, advance=1)
            progress.reset(samples_task, rate="")

        yield CalProgress(
            on_start=lambda n_layers, n_samples: (
                progress.update(layers, total=n_layers),
                progress.update(samples_task, total=n_samples),
            ),
            on_sample=on_sample,
            on_layer_done=on_layer_done,
            on_warning=lambda msg: console.print(f"[yellow]warning:[/yellow] {msg}"),
        )


CPU_MOE_HELP = (
    "Keep every routed-expert tensor in host memory (llama.cpp's --cpu-moe); the rest follows -ngl."
)
N_CPU_MOE_HELP = (
    "Keep the routed-expert tensors of the first N MoE layers in host memory (llama.cpp's --n-cpu-moe)."
)


def check_offload(cpu_moe: bool, n_cpu_moe: Optional[int]) -> None:
    if cpu_moe and n_cpu_moe is not None:
        raise UserError(
            "--cpu-moe and --n-cpu-moe given together", "use --cpu-moe for all layers or --n-cpu-moe N"
        )
    if n_cpu_moe is not None and n_cpu_moe < 0:
        raise UserError(f"--n-cpu-moe {n_cpu_moe} is negative", "pass a number of layers, 0 or more")
