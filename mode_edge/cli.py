"""The `mode-edge` command line: parses options, calls the stages, prints results."""

from __future__ import annotations

import contextlib
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


def _export(model_dir: Path, output: Path, quiet: bool, **kwargs) -> None:
    from mode_edge.gguf.export import export_model

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=console, disable=quiet,
                  transient=True) as progress:
        task = progress.add_task("converting", total=None)
        result = export_model(
            model_dir, output,
            on_plan=lambda total: progress.update(task, total=total),
            on_progress=lambda t: progress.update(task, advance=t.nbytes, description=t.name[:40]),
            **kwargs,
        )
    from mode_edge.card import command_line, write_card

    card = write_card(output, result.text_path, result.mmproj_path, model_dir, command_line())
    out.print(f"wrote {result.text_path} ({_human(result.text_bytes)})")
    out.print(f"wrote {result.mmproj_path} ({_human(result.mmproj_bytes)})")
    out.print(f"wrote {card} (model card)")
    out.print(f"in {result.seconds:.1f} s")


def _load_imatrix(path: Optional[Path]):
    if path is None:
        return None
    from mode_edge.quantize.imatrix import Imatrix

    return Imatrix.load(path)


CONVERT_EPILOG = """Examples:

  mode-edge convert ./Qwen3-VL-30B-A3B-Instruct -o out/ --precision q8_0

  mode-edge convert ./Qwen3-VL-30B-A3B-Instruct -o out/ --type Q4_K        (every weight Q4_K, like llama-quantize --pure)

  mode-edge convert ./Qwen3-VL-30B-A3B-Instruct -o out/ --type Q4_K_M --imatrix imatrix.gguf   (llama-quantize's mix)
"""


@app.command(epilog=CONVERT_EPILOG)
def convert(
    model_dir: Path = typer.Argument(..., help="Hugging Face model folder (config.json, *.safetensors, tokenizer)."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for the GGUF files (created if missing)."),
    precision: Optional[str] = typer.Option(None, "--precision", "-p",
                                            help="Store every weight as f32, f16, bf16 or q8_0 (default f16)."),
    qtype: Optional[str] = typer.Option(None, "--type", "-t",
                                        help="A llama.cpp type for every quantizable weight (Q4_K, Q3_K, IQ2_XS …) "
                                             "or a llama-quantize preset (Q4_K_M, Q3_K_S, IQ3_M …)."),
    imatrix: Optional[Path] = typer.Option(None, "--imatrix", help="Importance matrix (GGUF, llama-imatrix format)."),
    budget: Optional[str] = typer.Option(None, "--budget", "-b",
                                         help="Fit both files in this size (12GB, 12GiB) or bits per routed-expert "
                                              "weight (3.2bpw): calibrate, plan and pack in one go."),
    method: str = typer.Option("mode", "--method", "-m", help="With --budget: the allocation method."),
    granularity: str = typer.Option("expert", "--granularity",
                                    help="With --budget: expert (a type per expert) or tensor (stock llama.cpp)."),
    data: Optional[Path] = typer.Option(None, "--data",
                                        help="With --budget: calibration folder (default: the model's own, if any)."),
    samples: int = typer.Option(128, "--samples", help="With --budget: calibration samples."),
    seed: int = typer.Option(0, "--seed", help="With --budget: calibration sampling seed."),
    cal_types: Optional[str] = typer.Option(None, "--types",
                                            help="With --budget: candidate types, comma-separated (default: the "
                                                 "ladder IQ2_XXS … Q8_0, IQ types included)."),
    other: str = typer.Option("Q8_0", "--other", help="With --budget: type of the non-expert text matrices."),
    attn: Optional[str] = typer.Option(None, "--attn-type", help="With --budget: attention type, or auto."),
    context: int = typer.Option(0, "--context", help="With --budget: reserve the KV cache of this many tokens."),
    device: str = typer.Option("cpu", "--device", help="With --budget: where calibration runs (cpu, cuda, mps)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Quantizer threads (default: all cores)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Convert a checkpoint into a text GGUF and a vision-projector (mmproj) GGUF."""
    if sum(x is not None for x in (precision, qtype, budget)) > 1:
        raise UserError("more than one of --precision, --type and --budget given",
                        "use one: --precision for float/q8_0, --type for one quant type, --budget for MODE")
    if budget is not None:
        _check_device(device)
        _convert_budget(model_dir, output, budget, quiet, threads, data, method=method, granularity=granularity,
                        samples=samples, seed=seed, types=cal_types, other=other, attn=attn, context=context,
                        device=device)
        return
    if qtype is None:
        _export(model_dir, output, quiet, precision=precision or "f16", imatrix=_load_imatrix(imatrix),
                n_threads=threads)
        return
    plan, label = _type_plan(model_dir, qtype, threads)
    _export(model_dir, output, quiet, precision=None, plan=plan, label=label, imatrix=_load_imatrix(imatrix),
            n_threads=threads)




def _convert_budget(model_dir: Path, output: Path, budget: str, quiet: bool, threads: Optional[int],
                    data: Optional[Path], *, method: str, granularity: str, samples: int, seed: int,
                    types: Optional[str], other: str, attn: Optional[str], context: int, device: str) -> None:
    from mode_edge.allocate.allocator import AllocOptions
    from mode_edge.allocate.budget import parse_budget
    from mode_edge.allocate.methods import get_method
    from mode_edge.calibrate.runner import CalibrationOptions
    from mode_edge.card import command_line
    from mode_edge.pipeline import convert_with_budget

    get_method(method)   # unknown methods fail before calibration
    from mode_edge.quant_types import LADDER

    # the whole ladder: at 2-3 bits the IQ types with an importance matrix beat the K types by far
    # (benchmarks/quality.py: uniform IQ3_XXS at 3.06 bpw has 1/18 the KLD of uniform Q3_K at 3.44)
    type_list = [t.strip().upper() for t in types.split(",")] if types else [t.name for t in LADDER]
    cal_opts = CalibrationOptions(samples=samples, seed=seed, types=type_list, device=device)
    alloc_opts = AllocOptions(method=method, granularity=granularity, other=other, attn=attn, context=context)
    stage_names = {"calibrate": "[1/3] calibrating (reused when model, data and options are unchanged)",
                   "plan": "[2/3] planning", "pack": "[3/3] packing"}
    with _calibration_progress(quiet) as cal_progress:
        res = convert_with_budget(model_dir, output, budget, alloc_opts, cal_opts, data, cal_progress,
                                  on_stage=lambda name: quiet or console.print(stage_names[name]),
                                  pack_kwargs={"n_threads": threads}, command=command_line())
    a = res.alloc
    _print_plan(a, parse_budget(budget))
    for p in res.files:
        out.print(f"wrote {p} ({_human(p.stat().st_size)})")
    out.print(f"model card: {output / 'README.md'}; report: {output / 'report.md'}; plan: {output / 'plan.json'}, "
              f"{output / 'plan.png'}")
    out.print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in res.stages.items()))


def _type_plan(model_dir: Path, qtype: str, threads: Optional[int]):
    from mode_edge.allocate.plan import QuantPlan
    from mode_edge.quant_types import parse_type
    from mode_edge.quantize.presets import is_preset, preset_plan

    if is_preset(qtype):
        from mode_edge.checkpoint import Checkpoint
        from mode_edge.quantize.encode import default_threads
        from mode_edge_converters import converter_for

        conv = converter_for(Checkpoint(model_dir))
        plan = preset_plan(qtype, conv.arch, conv.add_text_metadata, conv.text_tensors(),
                           threads or default_threads())
        return plan, qtype.lower()
    t = parse_type(qtype)
    return QuantPlan(method=f"uniform:{t.name}", default=t), t.name.lower()


@app.command(epilog="Example: mode-edge pack ./Qwen3-VL-30B-A3B-Instruct --plan plan.json --imatrix stats/imatrix.gguf -o out/")
def pack(
    model_dir: Path = typer.Argument(..., help="Hugging Face model folder."),
    plan_path: Path = typer.Option(..., "--plan", help="QuantPlan JSON (from `mode-edge plan`)."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for the GGUF files (created if missing)."),
    imatrix: Optional[Path] = typer.Option(None, "--imatrix", help="Importance matrix (GGUF, llama-imatrix format)."),
    label: Optional[str] = typer.Option(None, "--label", help="File name suffix (default: the plan's method)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Quantizer threads (default: all cores)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write the GGUF files of a model with the types a QuantPlan gives each tensor and expert."""
    import re

    from mode_edge.allocate.plan import QuantPlan

    plan = QuantPlan.load(plan_path)
    label = label or re.sub(r"[^A-Za-z0-9_.-]+", "-", plan.method).strip("-").lower() or "packed"
    if imatrix is None and plan.extra.get("imatrix"):   # the method's own importance, written beside the plan
        imatrix = plan_path.parent / plan.extra["imatrix"]
    _export(model_dir, output, quiet, precision=None, plan=plan, label=label, imatrix=_load_imatrix(imatrix),
            n_threads=threads)


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
    budget: str = typer.Option(..., "--budget",
                               help="Total bytes of both files (12GB = 12e9, 12GiB = 12*2^30) "
                                    "or bits per routed-expert weight (3.5bpw)."),
    output: Path = typer.Option(..., "-o", "--output", help="Plan file to write (JSON)."),
    method: str = typer.Option("mode", "--method", "-m", help="Allocation method."),
    model_dir: Optional[Path] = typer.Option(None, "--model",
                                             help="Model folder (default: the one the statistics were measured on)."),
    granularity: str = typer.Option("expert", "--granularity",
                                    help="expert: a type per expert; tensor: one type per expert tensor."),
    per_projection: bool = typer.Option(False, "--per-projection",
                                        help="With expert granularity: gate, up and down chosen separately."),
    per_layer: Optional[bool] = typer.Option(None, "--per-layer-bits/--global-bits",
                                             help="One ILP per layer, each holding the average (the papers' "
                                                  "constraint), or one global ILP (default: the method's own; "
                                                  "frequency and mode are per layer)."),
    types: Optional[str] = typer.Option(None, "--types", help="Comma-separated candidate types "
                                        "(default: those calibration measured)."),
    floor: Optional[str] = typer.Option(None, "--floor", help="Smallest type an expert may get."),
    ceiling: Optional[str] = typer.Option(None, "--ceiling", help="Largest type an expert may get."),
    other: str = typer.Option("Q8_0", "--other", help="Type of the non-expert text matrices."),
    attn: Optional[str] = typer.Option(None, "--attn-type", help="Type of the attention matrices, or auto: the ILP chooses "
                                                  "from their measured sensitivity (default: --other)."),
    mmproj: str = typer.Option("F16", "--mmproj-type", help="Type of the vision projector's matrices."),
    context: int = typer.Option(0, "--context", help="Reserve the KV cache of this many tokens in a byte budget."),
    alpha: float = typer.Option(1.0, "--alpha", help="frequency: exponent of the count."),
    beta: float = typer.Option(1.5, "--beta", help="frequency: exponent of the routing weight."),
    classes: int = typer.Option(3, "--hessian-classes", help="hessian: k-means bit classes."),
    scope: str = typer.Option("layer", "--hessian-scope", help="hessian: cluster per layer or over the model."),
    gamma: Optional[float] = typer.Option(None, "--veq-gamma",
                                          help="veq: text/vision gradient-norm ratio (default: the one calibration "
                                               "measured, else VEQ's reported 22.4)."),
    time_limit: float = typer.Option(60.0, "--time-limit", help="Seconds the ILP solver may take."),
    no_png: bool = typer.Option(False, "--no-png", help="Do not draw PLAN.png."),
) -> None:
    """Choose a llama.cpp type for every routed expert under a byte budget (the ILP)."""
    from mode_edge.allocate.allocator import AllocOptions, allocate
    from mode_edge.allocate.budget import parse_budget
    from mode_edge.allocate.report import save_plan
    from mode_edge.signals.stats import ExpertStats

    if scope not in ("layer", "model"):
        raise UserError(f"--hessian-scope {scope!r} is not layer or model", "use layer or model")
    stats = ExpertStats.load(stats_dir)
    model_dir = model_dir or Path(stats.manifest["model"])
    if not model_dir.is_dir():
        raise UserError(f"the model the statistics were measured on, {model_dir}, is not there", "pass --model DIR")
    opts = AllocOptions(method=method, granularity=granularity, split_projections=per_projection,
                        per_layer=per_layer, types=[t.strip() for t in types.split(",")] if types else None,
                        floor=floor, ceiling=ceiling, other=other, attn=attn, mmproj=mmproj, context=context,
                        method_options={"alpha": alpha, "beta": beta, "hessian_classes": classes,
                                        "hessian_scope": scope, **({"veq_gamma": gamma} if gamma else {})},
                        time_limit=time_limit)
    parsed = parse_budget(budget)
    with console.status("allocating"):
        alloc = allocate(stats, model_dir, parsed, opts)
    written, _ = save_plan(alloc, stats, opts, output, str(parsed), png=not no_png)
    _print_plan(alloc, parsed)
    out.print("wrote " + ", ".join(str(p) for p in written))


def _print_plan(alloc, budget) -> None:
    from mode_edge.allocate.report import histogram, parts

    hist, part_rows = histogram(alloc), parts(alloc)
    table = Table("part", "bytes", "share", title=f"plan: {alloc.plan.method}, budget {budget}")
    for name, b in part_rows:
        table.add_row(name, f"{b:,}", f"{100 * b / max(1, alloc.total_bytes):.1f}%")
    table.add_row("[bold]total[/bold]", f"[bold]{alloc.total_bytes:,}[/bold]",
                  "" if budget.bytes is None else f"{100 * alloc.total_bytes / budget.bytes:.2f}% of budget")
    out.print(table)
    types = Table("type", "expert tensors", "bytes", title="routed experts by type")
    for t, units, b in hist:
        types.add_row(t, f"{units:,}", f"{b:,}")
    out.print(types)
    gap = "" if alloc.gap is None else f", gap {100 * alloc.gap:.3f}%"
    out.print(f"{alloc.expert_bpw:.3f} bits per routed-expert weight; solver {alloc.status}{gap}; "
              f"{alloc.seconds:.1f} s")
    for n in alloc.notes:
        out.print(f"note: {n}")


def _check_device(device: str) -> None:
    import torch

    ok = {"cpu": True, "cuda": torch.cuda.is_available(),
          "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if device not in ok:
        raise UserError(f"unknown device {device!r}", "use cpu, cuda or mps")
    if not ok[device]:
        raise UserError(f"--device {device} is not available on this machine (torch sees none)", "use --device cpu")


@contextlib.contextmanager
def _calibration_progress(quiet: bool):
    """Bars for layers and for samples within a layer, with tokens per second."""
    import time

    from mode_edge.calibrate.runner import Progress as CalProgress

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console, disable=quiet,
                  transient=True) as progress:
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
            on_start=lambda n_layers, n_samples: (progress.update(layers, total=n_layers),
                                                  progress.update(samples_task, total=n_samples)),
            on_sample=on_sample, on_layer_done=on_layer_done,
            on_warning=lambda msg: console.print(f"[yellow]warning:[/yellow] {msg}"))


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
    tokens_per_expert: int = typer.Option(512, "--tokens-per-expert",
                                          help="Cached inputs per expert and modality for sensitivity."),
    probes: int = typer.Option(16, "--hessian-probes",
                               help="Hutchinson probes for the data-dependent Hessian trace (hessian-data)."),
    count_samples: Optional[int] = typer.Option(None, "--count-samples",
                                                help="Draw this many samples for the routing counts; the first "
                                                     "--samples of them also give sensitivity and importance "
                                                     "(MODE: 512 and 128)."),
    gamma: Optional[float] = typer.Option(None, "--veq-gamma",
                                          help="VEQ's text/vision gradient-norm ratio (default: measured)."),
    gamma_samples: int = typer.Option(8, "--gamma-samples",
                                      help="Image samples to measure VEQ's gamma on (0: use the reported 22.4)."),
    types: Optional[str] = typer.Option(None, "--types", help="Comma-separated candidate types (default: the ladder)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave out samples whose image cannot be read."),
    offload: str = typer.Option("auto", "--offload",
                                help="Where hidden states wait between layers: auto, memory or disk."),
    device: str = typer.Option("cpu", "--device",
                               help="Where decoder layers run: cpu, cuda or mps (statistics stay on the CPU)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Measure MODE's expert statistics (frequencies by modality, key tokens, sensitivity)."""
    from mode_edge.calibrate.runner import CalibrationOptions
    from mode_edge.calibrate.runner import calibrate as run_calibration
    from mode_edge.quant_types import LADDER

    _check_device(device)
    if offload not in ("auto", "memory", "disk"):
        raise UserError(f"--offload {offload!r} is not one of auto, memory, disk", "pick one of them")
    opts = CalibrationOptions(samples=samples, seed=seed, max_length=max_length, rho=rho,
                              cap=tokens_per_expert, probes=probes, skip_bad=skip_bad, offload=offload,
                              device=device, count_samples=count_samples, gamma=gamma, gamma_samples=gamma_samples,
                              types=[t.strip().upper() for t in types.split(",")] if types else
                              [t.name for t in LADDER])
    with _calibration_progress(quiet) as cal_progress:
        run_calibration(model_dir, data, output, opts, cal_progress)
    out.print(f"wrote expert statistics to {output}")


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
    if info["experts"]:
        mixed = any(len(c) > 1 for c in info["experts"].values())
        title = "experts per type (expert groups)" if mixed else "experts per type"
        exp = Table("tensor", "experts by type", title=title)
        for name, counts in info["experts"].items():
            exp.add_row(name, "  ".join(f"{t}×{n}" for t, n in sorted(counts.items())))
        out.print(exp)


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
    tasks: str = typer.Option("test", "--tasks", help="Split (test, calibration, train) or a prompts.jsonl folder."),
    limit: int = typer.Option(208, "--limit", help="How many samples (the split's first N; families alternate in test)."),
    start: int = typer.Option(0, "--start", help="Built-in splits: begin at this example (e.g. a held-out range)."),
    reference: Optional[Path] = typer.Option(None, "--reference",
                                             help="Reference GGUF (e.g. the F32 file) for the KL divergence."),
    mmproj: Optional[Path] = typer.Option(None, "--mmproj", help="Vision projector (default: found beside MODEL)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="llama.cpp threads (default: all cores)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON (with every prediction)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Exact-match accuracy per task family through llama.cpp, and KL divergence against a reference."""
    from mode_edge.evaluate import evaluate

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeRemainingColumn(), console=console, disable=quiet or as_json, transient=True) as progress:
        bar = progress.add_task("evaluating", total=None)
        res = evaluate(model, tasks=tasks, limit=limit, reference=reference, mmproj=mmproj, threads=threads,
                       start=start, on_sample=lambda i, n: progress.update(bar, completed=i, total=n))
    if Path(model).is_dir() and tasks == "test" and start == 0:
        from mode_edge.card import record_eval

        card = record_eval(Path(model), res.to_dict())
        if card is not None and not as_json:
            console.print(f"recorded in {card}")
    if as_json:
        out.print_json(json.dumps(res.to_dict()))
        return
    kl = res.reference is not None
    table = Table("family / task", "samples", "exact match", *(["mean KL", "top-1 agree"] if kl else []),
                  title=f"{Path(res.model).name} on {res.tasks} ({res.samples} samples, {res.seconds:.1f} s)")
    for fam, d in res.families.items():
        table.add_row(f"[bold]{fam}[/bold]", str(d["n"]), f"[bold]{100 * d['accuracy']:.1f}%[/bold]",
                      *([f"{d['kl']:.4f}", f"{100 * d['top1']:.1f}%"] if kl else []))
        for name, t in res.by_task.items():
            if t["family"] == fam:
                table.add_row(f"  {name}", str(t["n"]), f"{100 * t['accuracy']:.1f}%",
                              *([f"{t['kl']:.4f}", f"{100 * t['top1']:.1f}%"] if kl else []))
    if kl:
        table.add_row("[bold]all[/bold]", str(res.samples), "", f"[bold]{res.kl_mean:.4f}[/bold]",
                      f"[bold]{100 * res.top1_agreement:.1f}%[/bold]")
    out.print(table)
    if kl:
        out.print(f"reference {res.reference}; KL(reference ‖ model) in nats per answer token")


CPU_MOE_HELP = "Keep every routed-expert tensor in host memory (llama.cpp's --cpu-moe); the rest follows -ngl."
N_CPU_MOE_HELP = "Keep the routed-expert tensors of the first N MoE layers in host memory (llama.cpp's --n-cpu-moe)."


def _check_offload(cpu_moe: bool, n_cpu_moe: Optional[int]) -> None:
    if cpu_moe and n_cpu_moe is not None:
        raise UserError("--cpu-moe and --n-cpu-moe given together", "use --cpu-moe for all layers or --n-cpu-moe N")
    if n_cpu_moe is not None and n_cpu_moe < 0:
        raise UserError(f"--n-cpu-moe {n_cpu_moe} is negative", "pass a number of layers, 0 or more")


CHAT_EPILOG = """Examples:

  mode-edge chat out/ --image photo.jpg                 (interactive; the mmproj is found in out/)

  mode-edge chat out/model-mode-12gb.gguf --image photo.jpg --prompt "What is in the picture?"

In the interactive chat: /image PATH attaches an image to the next message, /reset forgets
the conversation, /quit (or Ctrl-D) leaves.
"""


@app.command(epilog=CHAT_EPILOG)
def chat(
    model: Path = typer.Argument(..., help="A folder written by `mode-edge convert`, or a text GGUF."),
    mmproj: Optional[Path] = typer.Option(None, "--mmproj", help="Vision projector (default: found beside MODEL)."),
    image: Optional[list[Path]] = typer.Option(None, "--image", "-i", help="Image(s) for the first message."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Ask once, print the answer, exit."),
    n_gpu_layers: int = typer.Option(0, "--n-gpu-layers", "-ngl", help="Layers to offload to the GPU (-1: all)."),
    ctx: int = typer.Option(0, "--ctx", help="Context length in tokens (0: the model's, at most 4096)."),
    max_tokens: int = typer.Option(512, "--max-tokens", help="Longest answer."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: llama.cpp's choice)."),
    cpu_moe: bool = typer.Option(False, "--cpu-moe", help=CPU_MOE_HELP),
    n_cpu_moe: Optional[int] = typer.Option(None, "--n-cpu-moe", help=N_CPU_MOE_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show llama.cpp's log."),
) -> None:
    """Chat with a converted model in the terminal (images through its vision projector)."""
    from mode_edge.evaluate.runner import resolve_model
    from mode_edge.run.chat import Chat, check_image

    _check_offload(cpu_moe, n_cpu_moe)
    text_path, mmproj_path = resolve_model(model, mmproj)
    images = list(image or [])
    for p in images:
        check_image(p)   # unreadable images fail before the model loads
    session = Chat(text_path, mmproj_path, n_ctx=ctx, n_gpu_layers=n_gpu_layers, threads=threads, verbose=verbose,
                   cpu_moe=cpu_moe, n_cpu_moe=n_cpu_moe)
    if cpu_moe or n_cpu_moe:
        console.print(session.placement.summary())
    try:
        if prompt is not None:
            for piece in session.ask(prompt, images, max_tokens, temperature):
                out.print(piece, end="", highlight=False, markup=False)
            out.print()
            return
        console.print(f"[bold]{text_path.name}[/bold] — /image PATH, /reset, /quit")
        pending = images
        while True:
            try:
                line = input("> ").strip()
            except EOFError:
                break
            if not line:
                continue
            if line in ("/quit", "/exit"):
                break
            if line == "/reset":
                session.reset()
                pending = []
                continue
            if line.startswith("/image "):
                p = Path(line[len("/image "):].strip())
                try:
                    check_image(p)
                    pending.append(p)
                except UserError as e:
                    console.print(f"[red]error:[/red] {e}")
                continue
            for piece in session.ask(line, pending, max_tokens, temperature):
                out.print(piece, end="", highlight=False, markup=False)
            out.print()
            pending = []
    finally:
        session.close()


SERVE_EPILOG = """Examples:

  mode-edge serve out/                                   (http://127.0.0.1:8080/v1, OpenAI-compatible)

  mode-edge serve out/ --api-key s3cret --cpu-moe -ngl -1   (experts in host memory, the rest on the GPU)

  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' -d '{"messages":
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
    {"type": "text", "text": "What is in the picture?"}]}]}'

Images are data: URLs, or file: URLs under a folder given with --allow-images; remote URLs are
not fetched. Requests run one at a time (llama-cpp-python's server holds one context); others wait.
"""


@app.command(epilog=SERVE_EPILOG)
def serve(
    model: Path = typer.Argument(..., help="A folder written by `mode-edge convert`, or a text GGUF."),
    host: str = typer.Option("127.0.0.1", "--host", help="Listen address (0.0.0.0 exposes it to the network)."),
    port: int = typer.Option(8080, "--port", help="Listen port."),
    mmproj: Optional[Path] = typer.Option(None, "--mmproj", help="Vision projector (default: found beside MODEL)."),
    ctx: int = typer.Option(0, "--ctx", help="Context length in tokens (0: the model's, at most 4096)."),
    n_gpu_layers: int = typer.Option(0, "--n-gpu-layers", "-ngl", help="Layers to offload to the GPU (-1: all)."),
    cpu_moe: bool = typer.Option(False, "--cpu-moe", help=CPU_MOE_HELP),
    n_cpu_moe: Optional[int] = typer.Option(None, "--n-cpu-moe", help=N_CPU_MOE_HELP),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="MODE_EDGE_API_KEY",
                                          help="Require 'Authorization: Bearer KEY' (or set MODE_EDGE_API_KEY)."),
    allow_images: Optional[list[Path]] = typer.Option(None, "--allow-images",
                                                      help="Folder whose files may be sent as file: image URLs."),
    max_request_mb: float = typer.Option(32.0, "--max-request-mb", help="Largest request body (413 above)."),
    max_image_pixels: int = typer.Option(4096 * 4096, "--max-image-pixels", help="Largest image (413 above)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: llama.cpp's choice)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show llama.cpp's and the server's log."),
) -> None:
    """Serve a converted model over an OpenAI-compatible HTTP API (chat completions with images)."""
    import uvicorn

    from mode_edge.evaluate.runner import resolve_model
    from mode_edge.gguf.inspect import open_gguf
    from mode_edge.run.chat import check_runtime, default_ctx
    from mode_edge.run.serve import Limits, build_app

    _check_offload(cpu_moe, n_cpu_moe)
    text_path, mmproj_path = resolve_model(model, mmproj)
    reader = open_gguf(text_path)
    check_runtime(text_path, reader)
    dirs = [Path(d).resolve() for d in allow_images or []]
    for d in dirs:
        if not d.is_dir():
            raise UserError(f"--allow-images {d} is not a folder", "pass an existing folder")
    limits = Limits(int(max_request_mb * 2**20), max_image_pixels, dirs)
    app, where = build_app(text_path, mmproj_path, n_ctx=ctx or default_ctx(reader), n_gpu_layers=n_gpu_layers,
                           threads=threads, api_key=api_key, limits=limits, cpu_moe=cpu_moe, n_cpu_moe=n_cpu_moe,
                           verbose=verbose)
    if cpu_moe or n_cpu_moe:
        console.print(where.summary())
    console.print(f"serving {text_path.name} at http://{host}:{port}/v1" + (" (API key required)" if api_key else ""))
    uvicorn.run(app, host=host, port=port, log_level="info" if verbose else "warning")


runtime_app = typer.Typer(help="mode-edge's patched llama.cpp (per-expert types): build and check it.",
                          no_args_is_help=True)
app.add_typer(runtime_app, name="runtime")


@runtime_app.command("build", epilog="Example: mode-edge runtime build --cuda")
def runtime_build(
    cuda: bool = typer.Option(False, "--cuda", help="Build the CUDA backend (needs the CUDA toolkit)."),
    metal: bool = typer.Option(False, "--metal", help="Build the Metal backend (Apple)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if a cached wheel exists."),
    no_install: bool = typer.Option(False, "--no-install", help="Only build (or find) the wheel."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Parallel compile jobs (default: all cores)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print every command."),
) -> None:
    """Fetch llama-cpp-python 0.3.36 from the package index, apply vendor/llama.cpp.patch, build, install."""
    from mode_edge.runtime.build import build

    wheel = build(cuda=cuda, metal=metal, force=force, jobs=jobs, install=not no_install,
                  log=(lambda m: console.print(m, highlight=False, markup=False)) if verbose else (lambda m: None),
                  say=lambda m: console.print(m, highlight=False, markup=False))
    out.print(f"{'built' if no_install else 'installed'} {wheel}")


@runtime_app.command("status")
def runtime_status() -> None:
    """Say whether the installed llama.cpp is mode-edge's patched build, and what it supports."""
    from mode_edge.runtime.build import CPU_SKIP, GROUPS, capabilities

    caps = capabilities()
    if caps == 0:
        out.print("stock llama.cpp (no expert-group support): run `mode-edge runtime build`")
        return
    out.print(f"mode-edge runtime, capabilities {caps}: " + ", ".join(
        name for bit, name in ((CPU_SKIP, "CPU mul_mat_id skips out-of-group experts"),
                               (GROUPS, "loads and runs files with expert groups")) if caps & bit))


def main(argv: Optional[list[str]] = None) -> None:
    import mode_edge.card

    mode_edge.card.ARGV = list(argv) if argv is not None else None
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
