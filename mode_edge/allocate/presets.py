"""llama-quantize's mixed presets (Q4_K_M, Q3_K_S, IQ3_M …) as QuantPlans.

The per-tensor choices of a preset live in llama.cpp (llama_tensor_get_type_impl) and depend
on names, layer positions and counts. Rather than re-implement them, we ask llama.cpp: a
skeleton GGUF of the text model (real metadata and shapes, sparse zero data, so it costs no
disk) goes through llama_model_quantize in dry-run mode, whose log names each tensor's
target type. The pinned llama.cpp fixes that log's format; a test checks the resulting plan
against a real llama_model_quantize run.
"""

from __future__ import annotations

import ctypes
import re
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from mode_edge.errors import UserError
from mode_edge.formats.plan import QuantPlan
from mode_edge.formats.tensors import TensorSpec
from mode_edge.gguf import keeps_f32, tensor_nbytes

T = GGMLQuantizationType

PRESETS = (
    "Q2_K_S",
    "Q3_K_S",
    "Q3_K_M",
    "Q3_K_L",
    "Q4_K_S",
    "Q4_K_M",
    "Q5_K_S",
    "Q5_K_M",
    "IQ1_M",
    "IQ2_XXS",
    "IQ2_XS",
    "IQ2_S",
    "IQ2_M",
    "IQ3_XXS",
    "IQ3_XS",
    "IQ3_M",
    "IQ4_XS",
)

_LINE = re.compile(
    r"^\[\s*\d+/\s*\d+\]\s+(?P<name>\S+)\s+- \[[^\]]*\], type =\s*(?P<src>\S+), "
    r"size =\s*[\d.]+ MiB(?: ->\s*[\d.]+ MiB \((?P<dst>[^)]+)\))?"
)


def is_preset(name: str) -> bool:
    return name.upper() in PRESETS


def _write_skeleton(path: Path, arch: str, add_metadata, specs: list[TensorSpec]) -> None:
    w = GGUFWriter(path, arch)
    add_metadata(w)
    total = 0
    for s in specs:
        t = T.F32 if keeps_f32(s) else T.F16
        nbytes = tensor_nbytes(s.shape, t)
        w.add_tensor_info(s.name, s.shape, np.dtype(np.float32), nbytes, raw_dtype=t)
        total += GGUFWriter.ggml_pad(nbytes, w.data_alignment)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    assert w.fout is not None
    f = w.fout[0]
    w.write_padding(f, f.tell())
    f.truncate(f.tell() + total)  # a sparse, all-zero data section
    w.close()


def _dry_run_log(src: Path, ftype: int, n_threads: int) -> str:
    import llama_cpp
    import llama_cpp._logger as lcp_logger

    chunks: list[str] = []

    @llama_cpp.llama_log_callback
    def capture(level, text, user_data):  # noqa: ARG001
        chunks.append(text.decode("utf-8", errors="replace"))

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.dry_run = True
    params.nthread = n_threads
    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(src.with_suffix(".out")).encode(), params)
    finally:
        llama_cpp.llama_log_set(lcp_logger.llama_log_callback, ctypes.c_void_p(0))
    if rc != 0:
        raise RuntimeError("llama.cpp's dry-run quantization failed:\n" + "".join(chunks)[-2000:])
    return "".join(chunks)


def preset_plan(
    preset: str, arch: str, add_metadata, specs: list[TensorSpec], n_threads: int = 1
) -> QuantPlan:
    """The per-tensor types llama-quantize would give `specs` under `preset`."""
    import llama_cpp

    key = preset.upper()
    if key not in PRESETS:
        raise UserError(f"unknown preset {preset!r}", f"choose one of {', '.join(PRESETS)}")
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{key}")
    with tempfile.TemporaryDirectory(prefix="mode-edge-preset-") as tmp:
        src = Path(tmp) / "skeleton.gguf"
        _write_skeleton(src, arch, add_metadata, specs)
        log = _dry_run_log(src, ftype, n_threads)
    chosen: dict[str, GGMLQuantizationType] = {}
    for line in log.splitlines():
        m = _LINE.match(line.strip())
        if m:
            chosen[m["name"]] = T[(m["dst"] or m["src"]).upper()]
    missing = [s.name for s in specs if s.name not in chosen]
    if missing:
        raise RuntimeError(f"llama.cpp's dry run did not report {len(missing)} tensors (e.g. {missing[0]})")
    tensors = {s.name: chosen[s.name] for s in specs if not keeps_f32(s)}
    return QuantPlan(tensors=tensors, method=f"preset:{key}", default=T.F16)
