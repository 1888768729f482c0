"""`mode-edge convert`: a checkpoint to GGUF files (a precision, one type, a preset, or a budget)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mode_edge.cli.app import app, console, out
from mode_edge.cli.common import calibration_progress, check_device, export_files, human, load_imatrix
from mode_edge.errors import UserError

CONVERT_EPILOG = """Examples:

  mode-edge convert ./Qwen3-VL-30B-A3B-Instruct -o out/ --precision q8_0

  mode-edge convert ./Qwen3-VL-30B-A3B-Instruct -o out/ --type Q4_K        (every weight Q4_K, like llama-quantize --pure)

  mode-edge convert ./Qwen3-VL-30B-A3B-Instruct -o out/ --type Q4_K_M --imatrix imatrix.gguf   (llama-quantize's mix)
"""


@app.command(epilog=CONVERT_EPILOG)
def convert(
    model_dir: Path = typer.Argument(
        ..., help="Hugging Face model folder (config.json, *.safetensors, tokenizer)."
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", help="Folder for the GGUF files (created if missing)."
    ),
    precision: Optional[str] = typer.Option(
        None, "--precision", "-p", help="Store every weight as f32, f16, bf16 or q8_0 (default f16)."
    ),
    qtype: Optional[str] = typer.Option(
        None,
        "--type",
        "-t",
        help="A llama.cpp type for every quantizable weight (Q4_K, Q3_K, IQ2_XS …) "
        "or a llama-quantize preset (Q4_K_M, Q3_K_S, IQ3_M …).",
    ),
    imatrix: Optional[Path] = typer.Option(
        None, "--imatrix", help="Importance matrix (GGUF, llama-imatrix format)."
    ),
    budget: Optional[str] = typer.Option(
        None,
        "--budget",
        "-b",
        help="Fit both files in this size (12GB, 12GiB) or bits per routed-expert "
        "weight (3.2bpw): calibrate, plan and pack in one go.",
    ),
    method: str = typer.Option("mode", "--method", "-m", help="With --budget: the allocation method."),
    granularity: str = typer.Option(
        "expert",
        "--granularity",
        help="With --budget: expert (a type per expert) or tensor (stock llama.cpp).",
    ),
    data: Optional[Path] = typer.Option(
        None, "--data", help="With --budget: calibration folder (default: the model's own, if any)."
    ),
    samples: int = typer.Option(128, "--samples", help="With --budget: calibration samples."),
    seed: int = typer.Option(0, "--seed", help="With --budget: calibration sampling seed."),
    cal_types: Optional[str] = typer.Option(
        None,
        "--types",
        help="With --budget: candidate types, comma-separated (default: the "
        "ladder IQ2_XXS … Q8_0, IQ types included).",
    ),
    other: str = typer.Option("Q8_0", "--other", help="With --budget: type of the non-expert text matrices."),
    attn: Optional[str] = typer.Option(None, "--attn-type", help="With --budget: attention type, or auto."),
    shared: Optional[str] = typer.Option(
        None,
        "--shared-type",
        help="With --budget: shared-expert type, or auto (default: auto for mode methods, else --other).",
    ),
    dense: Optional[str] = typer.Option(
        None,
        "--dense-type",
        help="With --budget: type of dense (non-MoE) layers' FFNs, or auto (default as --shared-type).",
    ),
    context: int = typer.Option(
        0, "--context", help="With --budget: reserve the KV cache of this many tokens."
    ),
    device: str = typer.Option(
        "cpu", "--device", help="With --budget: where calibration runs (cpu, cuda, mps)."
    ),
    threads: Optional[int] = typer.Option(None, "--threads", help="Quantizer threads (default: all cores)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Convert a checkpoint into a text GGUF and a vision-projector (mmproj) GGUF."""
    if sum(x is not None for x in (precision, qtype, budget)) > 1:
        raise UserError(
            "more than one of --precision, --type and --budget given",
            "use one: --precision for float/q8_0, --type for one quant type, --budget for MODE",
        )
    from mode_edge.allocate import parse_budget
    from mode_edge.arch import open_architecture

    parsed = parse_budget(budget) if budget is not None else None  # a bad budget fails before anything opens
    model = open_architecture(model_dir)  # opened once, passed down
    if parsed is not None:
        check_device(device)
        _convert_budget(
            model,
            output,
            parsed,
            quiet,
            threads,
            data,
            method=method,
            granularity=granularity,
            samples=samples,
            seed=seed,
            types=cal_types,
            other=other,
            attn=attn,
            shared=shared,
            dense=dense,
            context=context,
            device=device,
        )
        return
    if qtype is None:
        export_files(
            model,
            output,
            quiet,
            precision=precision or "f16",
            imatrix=load_imatrix(imatrix),
            n_threads=threads,
        )
        return
    plan, label = type_plan(model, qtype, threads)
    export_files(
        model,
        output,
        quiet,
        precision=None,
        plan=plan,
        label=label,
        imatrix=load_imatrix(imatrix),
        n_threads=threads,
    )


def _convert_budget(
    model,
    output: Path,
    budget,
    quiet: bool,
    threads: Optional[int],
    data: Optional[Path],
    *,
    method: str,
    granularity: str,
    samples: int,
    seed: int,
    types: Optional[str],
    other: str,
    attn: Optional[str],
    shared: Optional[str],
    dense: Optional[str],
    context: int,
    device: str,
) -> None:
    from mode_edge.allocate import AllocOptions, get_method
    from mode_edge.calibrate import CalibrationOptions
    from mode_edge.card import command_line
    from mode_edge.formats.quant_types import LADDER
    from mode_edge.pipeline import convert_with_budget

    get_method(method)  # unknown methods fail before calibration

    # the whole ladder: at 2-3 bits the IQ types with an importance matrix beat the K types by far
    # (benchmarks/quality.py: uniform IQ3_XXS at 3.06 bpw has 1/18 the KLD of uniform Q3_K at 3.44)
    type_list = [t.strip().upper() for t in types.split(",")] if types else [t.name for t in LADDER]
    cal_opts = CalibrationOptions(samples=samples, seed=seed, types=type_list, device=device)
    alloc_opts = AllocOptions(
        method=method,
        granularity=granularity,
        other=other,
        attn=attn,
        shared=shared,
        dense=dense,
        context=context,
    )
    stage_names = {
        "calibrate": "[1/3] calibrating (reused when model, data and options are unchanged)",
        "plan": "[2/3] planning",
        "pack": "[3/3] packing",
    }
    with calibration_progress(quiet) as cal_progress:
        res = convert_with_budget(
            model,
            output,
            budget,
            alloc_opts,
            cal_opts,
            data,
            cal_progress,
            on_stage=lambda name: quiet or console.print(stage_names[name]),
            pack_kwargs={"n_threads": threads},
            command=command_line(),
        )
    res.report.print(out)
    for p in res.files:
        out.print(f"wrote {p} ({human(p.stat().st_size)})")
    out.print(
        f"model card: {output / 'README.md'}; report: {output / 'report.md'}; plan: {output / 'plan.json'}, "
        f"{output / 'plan.png'}"
    )
    out.print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in res.report.stages.items()))


def type_plan(model, qtype: str, threads: Optional[int]):
    """The plan of `--type`: one type everywhere, or a llama-quantize preset's mix."""
    from mode_edge.allocate import is_preset, preset_plan
    from mode_edge.arch import open_architecture
    from mode_edge.formats.plan import QuantPlan
    from mode_edge.formats.quant_types import parse_type

    if is_preset(qtype):
        from mode_edge.quantize import default_threads

        conv = open_architecture(model)
        plan = preset_plan(
            qtype, conv.arch, conv.add_text_metadata, conv.text_tensors(), threads or default_threads()
        )
        return plan, qtype.lower()
    t = parse_type(qtype)
    return QuantPlan(method=f"uniform:{t.name}", default=t), t.name.lower()
