"""`mode-edge eval`: accuracy per task family and KL divergence, through llama.cpp."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mode_edge.cli.app import app, console, out

EVAL_EPILOG = """Examples:

  mode-edge eval out/demo-model-f32.gguf --limit 208

  mode-edge eval out-q2/ --reference out/demo-model-f32.gguf --json

TASKS is a split of the built-in synthetic tasks (test, calibration, train) or a folder with
prompts.jsonl whose lines also hold "answer". The projector is found beside the text GGUF
(mmproj-*.gguf) unless --mmproj says otherwise.
"""


@app.command("eval", epilog=EVAL_EPILOG)
def eval_cmd(
    model: Path = typer.Argument(..., help="Text GGUF, or a folder written by `mode-edge convert`/`pack`."),
    tasks: str = typer.Option(
        "test",
        "--tasks",
        help="Split (test, calibration, train; hard-test etc. for the hard suite) or a prompts.jsonl folder.",
    ),
    limit: int = typer.Option(
        208, "--limit", help="How many samples (the split's first N; families alternate in test)."
    ),
    start: int = typer.Option(
        0, "--start", help="Built-in splits: begin at this example (e.g. a held-out range)."
    ),
    reference: Optional[Path] = typer.Option(
        None, "--reference", help="Reference GGUF (e.g. the F32 file) for the KL divergence."
    ),
    mmproj: Optional[Path] = typer.Option(
        None, "--mmproj", help="Vision projector (default: found beside MODEL)."
    ),
    threads: Optional[int] = typer.Option(None, "--threads", help="llama.cpp threads (default: all cores)."),
    as_json: bool = typer.Option(
        False, "--json", help="Print machine-readable JSON (with every prediction)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Exact-match accuracy per task family through llama.cpp, and KL divergence against a reference."""
    from mode_edge.evaluate import evaluate

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or as_json,
        transient=True,
    ) as progress:
        bar = progress.add_task("evaluating", total=None)
        res = evaluate(
            model,
            tasks=tasks,
            limit=limit,
            reference=reference,
            mmproj=mmproj,
            threads=threads,
            start=start,
            on_sample=lambda i, n: progress.update(bar, completed=i, total=n),
        )
    if Path(model).is_dir() and tasks == "test" and start == 0:
        from mode_edge.card import record_eval

        card = record_eval(Path(model), res.to_dict())
        if card is not None and not as_json:
            console.print(f"recorded in {card}")
    if as_json:
        out.print_json(json.dumps(res.to_dict()))
        return
    kl = res.reference is not None
    table = Table(
        "family / task",
        "samples",
        "exact match",
        *(["mean KL", "top-1 agree"] if kl else []),
        title=f"{Path(res.model).name} on {res.tasks} ({res.samples} samples, {res.seconds:.1f} s)",
    )
    for fam, d in res.families.items():
        table.add_row(
            f"[bold]{fam}[/bold]",
            str(d["n"]),
            f"[bold]{100 * d['accuracy']:.1f}%[/bold]",
            *([f"{d['kl']:.4f}", f"{100 * d['top1']:.1f}%"] if kl else []),
        )
        for name, t in res.by_task.items():
            if t["family"] == fam:
                table.add_row(
                    f"  {name}",
                    str(t["n"]),
                    f"{100 * t['accuracy']:.1f}%",
                    *([f"{t['kl']:.4f}", f"{100 * t['top1']:.1f}%"] if kl else []),
                )
    if kl:
        table.add_row(
            "[bold]all[/bold]",
            str(res.samples),
            "",
            f"[bold]{res.kl_mean:.4f}[/bold]",
            f"[bold]{100 * res.top1_agreement:.1f}%[/bold]",
        )
    out.print(table)
    if kl:
        out.print(f"reference {res.reference}; KL(reference ‖ model) in nats per answer token")
