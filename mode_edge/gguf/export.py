"""HF checkpoint -> text GGUF + mmproj GGUF, all or nothing.

Both files are written under temporary names in the output folder and renamed only when
both are complete; on any failure (or Ctrl-C) the partial files are removed, and so is the
output folder if this run created it.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from gguf import GGML_QUANT_VERSION, GGUFWriter

from mode_edge.checkpoint import Checkpoint
from mode_edge.errors import UserError
from mode_edge.gguf.precision import FILE_TYPES, PRECISIONS, uniform
from mode_edge.gguf.writer import OutTensor, temp_path, write_gguf
from mode_edge_converters import converter_for

MMPROJ_PRECISION = "f16"


@dataclass
class ExportResult:
    text_path: Path
    mmproj_path: Path
    text_bytes: int
    mmproj_bytes: int
    seconds: float


def output_paths(out_dir: Path, name: str, precision: str) -> tuple[Path, Path]:
    return out_dir / f"{name}-{precision}.gguf", out_dir / f"mmproj-{name}-{MMPROJ_PRECISION}.gguf"


@contextlib.contextmanager
def atomic_outputs(out_dir: Path, finals: list[Path]) -> Iterator[list[Path]]:
    """Yield temporary paths for `finals`; rename all on success, remove all on failure."""
    created = not out_dir.exists()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output path {out_dir} exists and is not a folder", "choose another -o")
    out_dir.mkdir(parents=True, exist_ok=True)
    temps = [temp_path(f) for f in finals]
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


def _metadata(add: Callable[[GGUFWriter], None], precision: str) -> Callable[[GGUFWriter], None]:
    def f(w: GGUFWriter) -> None:
        add(w)
        w.add_file_type(FILE_TYPES[precision])
        if precision not in ("f32", "f16", "bf16"):
            w.add_quantization_version(GGML_QUANT_VERSION)
    return f


def export_model(model_dir: Path, out_dir: Path, precision: str = "f16",
                 on_progress: Callable[[OutTensor], None] | None = None,
                 on_plan: Callable[[int], None] | None = None) -> ExportResult:
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}", f"choose one of {', '.join(PRECISIONS)}")
    start = time.perf_counter()
    ckpt = Checkpoint(model_dir)
    conv = converter_for(ckpt)
    text_tensors = uniform(conv.text_tensors(), precision)
    mm_tensors = uniform(conv.mmproj_tensors(), MMPROJ_PRECISION)
    if on_plan is not None:
        on_plan(sum(t.nbytes for t in text_tensors + mm_tensors))
    text_path, mm_path = output_paths(Path(out_dir), conv.model_name, precision)
    with atomic_outputs(Path(out_dir), [text_path, mm_path]) as (text_tmp, mm_tmp):
        text_bytes = write_gguf(text_tmp, conv.arch, _metadata(conv.add_text_metadata, precision),
                                text_tensors, on_progress)
        mm_bytes = write_gguf(mm_tmp, "clip", _metadata(conv.add_mmproj_metadata, MMPROJ_PRECISION),
                              mm_tensors, on_progress)
    return ExportResult(text_path, mm_path, text_bytes, mm_bytes, time.perf_counter() - start)
