"""HF checkpoint -> text GGUF + mmproj GGUF under a QuantPlan, all or nothing.

Both files are written under temporary names in the output folder and renamed only when
both are complete; on any failure (or Ctrl-C) the partial files are removed, and so is the
output folder if this run created it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gguf import GGML_QUANT_VERSION, GGUFWriter

from mode_edge.arch import Architecture, open_architecture
from mode_edge.errors import UserError
from mode_edge.files import partial_path
from mode_edge.formats.groups import GROUPS_KEY, GROUPS_VERSION
from mode_edge.formats.imatrix import Imatrix
from mode_edge.formats.plan import QuantPlan
from mode_edge.formats.quant_types import is_quantized
from mode_edge.gguf.pack import Packer
from mode_edge.gguf.precision import PRECISIONS, file_type, precision_plan
from mode_edge.gguf.writer import OutTensor, gguf_file_size, write_gguf
from mode_edge.quantize import default_threads


@dataclass
class ExportResult:
    text_path: Path
    mmproj_path: Path
    text_bytes: int
    mmproj_bytes: int
    seconds: float


def output_paths(out_dir: Path, name: str, label: str, mmproj_label: str = "f16") -> tuple[Path, Path]:
    return out_dir / f"{name}-{label}.gguf", out_dir / f"mmproj-{name}-{mmproj_label}.gguf"


@contextlib.contextmanager
def atomic_outputs(out_dir: Path, finals: list[Path]) -> Iterator[list[Path]]:
    """Yield temporary paths for `finals`; rename all on success, remove all on failure."""
    created = not out_dir.exists()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output path {out_dir} exists and is not a folder", "choose another -o")
    out_dir.mkdir(parents=True, exist_ok=True)
    temps = [partial_path(f) for f in finals]
    try:
        yield temps
        for t, f in zip(temps, finals):
            t.replace(f)
    except BaseException:
        for t in temps:
            t.unlink(missing_ok=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise


def _metadata(
    add: Callable[[GGUFWriter], None], tensors: list[OutTensor], grouped: bool
) -> Callable[[GGUFWriter], None]:
    def f(w: GGUFWriter) -> None:
        add(w)
        w.add_file_type(file_type(tensors))
        if any(is_quantized(t.ggml_type) for t in tensors):
            w.add_quantization_version(GGML_QUANT_VERSION)
        if grouped:
            w.add_uint32(GROUPS_KEY, GROUPS_VERSION)

    return f


def _tensors(conv, packer: Packer) -> tuple[list[OutTensor], bool, list[OutTensor]]:
    """Text tensors, whether they use expert groups, mmproj tensors (types resolved, no data)."""
    specs = conv.text_tensors()
    unknown = sorted(set(packer.plan.tensors) - {s.name for s in specs})
    if unknown:
        raise UserError(
            f"the plan names {unknown[0]}, which this model does not have"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""),
            "the plan was made for another model; re-run `mode-edge plan` with this one's statistics",
        )
    text = packer.tensors(specs)
    grouped = packer.grouped
    return text, grouped, packer.tensors(conv.mmproj_tensors(), mmproj=True)


def export_model(
    model: Path | Architecture,
    out_dir: Path,
    precision: str | None = "f16",
    *,
    plan: QuantPlan | None = None,
    label: str | None = None,
    imatrix: Imatrix | None = None,
    n_threads: int | None = None,
    on_progress: Callable[[OutTensor], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
) -> ExportResult:
    """Write the text and mmproj GGUFs of a model (folder or opened Architecture) with a plan
    (or a uniform precision)."""
    if plan is None:
        if precision not in PRECISIONS:
            raise UserError(f"unknown precision {precision!r}", f"choose one of {', '.join(PRECISIONS)}")
        plan, label = precision_plan(precision), label or precision
    start = time.perf_counter()
    conv = open_architecture(model)
    packer = Packer(plan, imatrix, n_threads or default_threads())
    try:
        text_tensors, grouped, mm_tensors = _tensors(conv, packer)
        if on_plan is not None:
            on_plan(sum(t.nbytes for t in text_tensors + mm_tensors))
        text_path, mm_path = output_paths(
            Path(out_dir), conv.model_name, label or plan.method, plan.mmproj.name.lower()
        )
        with atomic_outputs(Path(out_dir), [text_path, mm_path]) as (text_tmp, mm_tmp):
            text_bytes = write_gguf(
                text_tmp,
                conv.arch,
                _metadata(conv.add_text_metadata, text_tensors, grouped),
                text_tensors,
                on_progress,
            )
            mm_bytes = write_gguf(
                mm_tmp,
                "clip",
                _metadata(conv.add_mmproj_metadata, mm_tensors, False),
                mm_tensors,
                on_progress,
            )
    finally:
        packer.close()
    return ExportResult(text_path, mm_path, text_bytes, mm_bytes, time.perf_counter() - start)


def planned_sizes(
    model: Path | Architecture, plan: QuantPlan, imatrix: Imatrix | None = None, *, check_imatrix: bool = True
) -> tuple[int, int]:
    """Exact bytes of the text and mmproj files export_model would write for `plan`;
    check_imatrix=False sizes plans whose importance matrix comes later."""
    conv = open_architecture(model)
    packer = Packer(plan, imatrix, 1, check_imatrix=check_imatrix)
    try:
        text, grouped, mm = _tensors(conv, packer)
    finally:
        packer.close()
    return (
        gguf_file_size(conv.arch, _metadata(conv.add_text_metadata, text, grouped), text),
        gguf_file_size("clip", _metadata(conv.add_mmproj_metadata, mm, False), mm),
    )
