"""The typer application and the consoles every command prints on."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    name="mode-edge",
    help="Per-expert mixed-precision GGUF files for Mixture-of-Experts vision-language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
runtime_app = typer.Typer(
    help="mode-edge's patched llama.cpp (per-expert types): build and check it.", no_args_is_help=True
)
app.add_typer(runtime_app, name="runtime")

console = Console(stderr=True)  # progress, notes, errors
out = Console()  # results
