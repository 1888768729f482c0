"""The `mode-edge` command line: parses options, calls the stages, prints results."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from mode_edge.errors import UserError

app = typer.Typer(
    name="mode-edge",
    help="Per-expert mixed-precision GGUF files for Mixture-of-Experts vision-language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


@app.command(epilog="Example: mode-edge convert ./Qwen3-VL-30B-A3B-Instruct -o out/ --precision q8_0")
def convert(
    model_dir: Path = typer.Argument(..., help="Hugging Face model folder (config.json, *.safetensors, tokenizer)."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for the GGUF files (created if missing)."),
    precision: str = typer.Option("f16", "--precision", "-p",
                                  help="Storage type of all weights: f32, f16, bf16 or q8_0."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Convert a checkpoint into a text GGUF and a vision-projector (mmproj) GGUF."""
    from mode_edge.gguf.export import export_model

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=console, disable=quiet,
                  transient=True) as progress:
        task = progress.add_task("converting", total=None)
        result = export_model(
            model_dir, output, precision,
            on_plan=lambda total: progress.update(task, total=total),
            on_progress=lambda t: progress.update(task, advance=t.nbytes, description=t.name[:40]),
        )
    out.print(f"wrote {result.text_path} ({_human(result.text_bytes)})")
    out.print(f"wrote {result.mmproj_path} ({_human(result.mmproj_bytes)})")
    out.print(f"in {result.seconds:.1f} s")


@app.command(epilog="Example: mode-edge inspect out/model-f16.gguf --json")
def inspect(
    path: Path = typer.Argument(..., help="A GGUF file."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Show a GGUF file's architecture, tensor count, types and size."""
    from mode_edge.gguf.inspect import summarize

    info = summarize(path)
    if as_json:
        out.print_json(json.dumps(info))
        return
    out.print(f"[bold]{info['path']}[/bold]")
    out.print(f"architecture  {info['architecture']}")
    out.print(f"tensors       {info['tensor_count']}")
    out.print(f"parameters    {info['parameters']:,}")
    out.print(f"size          {_human(info['file_bytes'])} ({info['file_bytes']:,} bytes)")
    for k, v in info["metadata"].items():
        out.print(f"{k:<28}  {v}")
    table = Table("type", "tensors", "bytes", "share")
    total = sum(v["bytes"] for v in info["types"].values()) or 1
    for name, v in info["types"].items():
        table.add_row(name, str(v["tensors"]), _human(v["bytes"]), f"{100 * v['bytes'] / total:.1f}%")
    out.print(table)


def main(argv: Optional[list[str]] = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except UserError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        sys.exit(130)


if __name__ == "__main__":
    main()
