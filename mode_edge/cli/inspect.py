"""`mode-edge inspect`: a GGUF file's architecture, types, sizes and expert groups."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from mode_edge.cli.app import app, out
from mode_edge.cli.common import human


@app.command(epilog="Example: mode-edge inspect out/model-f16.gguf --json")
def inspect(
    path: Path = typer.Argument(..., help="A GGUF file."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Show a GGUF file's architecture, tensor count, types and size."""
    from mode_edge.gguf import summarize

    info = summarize(path)
    if as_json:
        out.print_json(json.dumps(info))
        return
    out.print(f"[bold]{info['path']}[/bold]")
    out.print(f"architecture  {info['architecture']}")
    out.print(f"tensors       {info['tensor_count']}")
    out.print(f"parameters    {info['parameters']:,}")
    out.print(f"size          {human(info['file_bytes'])} ({info['file_bytes']:,} bytes)")
    for k, v in info["metadata"].items():
        out.print(f"{k:<28}  {v}")
    table = Table("type", "tensors", "bytes", "share")
    total = sum(v["bytes"] for v in info["types"].values()) or 1
    for name, v in info["types"].items():
        table.add_row(name, str(v["tensors"]), human(v["bytes"]), f"{100 * v['bytes'] / total:.1f}%")
    out.print(table)
    if info["dense_layers"]:
        out.print(f"dense layers  {', '.join(map(str, info['dense_layers']))} (no routed experts)")
    if any(k != "other" for k in info["parts"]):
        parts = Table("part", "tensors", "types", "bytes", "share", title="by part")
        for name, v in info["parts"].items():
            types = "  ".join(f"{t}×{n}" for t, n in sorted(v["types"].items()))
            parts.add_row(
                name, str(v["tensors"]), types, human(v["bytes"]), f"{100 * v['bytes'] / total:.1f}%"
            )
        out.print(parts)
    if info["experts"]:
        mixed = any(len(c) > 1 for c in info["experts"].values())
        title = "experts per type (expert groups)" if mixed else "experts per type"
        exp = Table("tensor", "experts by type", title=title)
        for name, counts in info["experts"].items():
            exp.add_row(name, "  ".join(f"{t}×{n}" for t, n in sorted(counts.items())))
        out.print(exp)
