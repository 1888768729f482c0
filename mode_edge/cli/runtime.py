"""`mode-edge runtime build|status`: the patched llama.cpp."""

from __future__ import annotations

from typing import Optional

import typer

from mode_edge.cli.app import console, out, runtime_app


@runtime_app.command("build", epilog="Example: mode-edge runtime build --cuda")
def runtime_build(
    cuda: bool = typer.Option(False, "--cuda", help="Build the CUDA backend (needs the CUDA toolkit)."),
    metal: bool = typer.Option(False, "--metal", help="Build the Metal backend (Apple)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if a cached wheel exists."),
    no_install: bool = typer.Option(False, "--no-install", help="Only build (or find) the wheel."),
    jobs: Optional[int] = typer.Option(
        None, "--jobs", "-j", help="Parallel compile jobs (default: all cores)."
    ),
    amx: bool = typer.Option(
        False,
        "--amx",
        help="Keep ggml's AMX kernels (x86; left out by default: they crashed on Xeon test machines).",
    ),
    sanitize: bool = typer.Option(
        False,
        "--sanitize",
        help="AddressSanitizer + UBSan build for benchmarks/fuzz_loader.py (cached apart, never installed).",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print every command."),
) -> None:
    """Fetch llama-cpp-python 0.3.36 from the package index, apply the patch series (vendor/patches), build, install."""
    from mode_edge.runtime import build_runtime

    wheel = build_runtime(
        cuda=cuda,
        metal=metal,
        force=force,
        jobs=jobs,
        install=not no_install,
        log=(lambda m: console.print(m, highlight=False, markup=False)) if verbose else (lambda m: None),
        say=lambda m: console.print(m, highlight=False, markup=False),
        amx=amx,
        sanitize=sanitize,
    )
    out.print(f"{'built' if no_install or sanitize else 'installed'} {wheel}")


@runtime_app.command("status")
def runtime_status() -> None:
    """Say whether the installed llama.cpp is mode-edge's patched build, and what it supports."""
    from mode_edge.runtime import CPU_SKIP, GROUPS, capabilities

    caps = capabilities()
    if caps == 0:
        out.print("stock llama.cpp (no expert-group support): run `mode-edge runtime build`")
        return
    out.print(
        f"mode-edge runtime, capabilities {caps}: "
        + ", ".join(
            name
            for bit, name in (
                (CPU_SKIP, "CPU mul_mat_id skips out-of-group experts"),
                (GROUPS, "loads and runs files with expert groups"),
            )
            if caps & bit
        )
    )
