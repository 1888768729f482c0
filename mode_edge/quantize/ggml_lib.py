"""ctypes binding to ggml's own quantizer in the libggml-base that llama-cpp-python ships.

Quantizing through ggml_quantize_chunk gives exactly the bytes llama-quantize writes (it
calls the same function, row block by row block, with the same per-expert importance
slice). ctypes drops the GIL during the call, so a thread pool runs experts in parallel.
"""

from __future__ import annotations

import ctypes
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from mode_edge.errors import UserError

_init_lock = threading.Lock()
_initialised: set[int] = set()


def lib_dir() -> Path:
    try:
        import llama_cpp
    except ImportError:
        raise UserError(
            "llama-cpp-python is not installed", "install mode-edge with its dependencies (pip install -e .)"
        ) from None
    return Path(llama_cpp.__file__).parent / "lib"


@lru_cache(maxsize=1)
def lib() -> ctypes.CDLL:
    d = lib_dir()
    candidates = sorted(d.glob("libggml-base.*")) + sorted(d.glob("ggml-base.*"))
    if not candidates:
        raise UserError(
            f"libggml-base not found in {d}",
            "reinstall llama-cpp-python==0.3.36 (it ships ggml's shared libraries)",
        )
    so = ctypes.CDLL(str(candidates[0]))
    so.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_float),
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.POINTER(ctypes.c_float),
    ]
    so.ggml_quantize_chunk.restype = ctypes.c_size_t
    so.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    so.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    so.ggml_quantize_init.argtypes = [ctypes.c_int]
    so.ggml_quantize_init.restype = None
    so.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    so.ggml_row_size.restype = ctypes.c_size_t
    return so


def requires_imatrix(t: GGMLQuantizationType) -> bool:
    return bool(lib().ggml_quantize_requires_imatrix(int(t)))


def row_size(t: GGMLQuantizationType, n_per_row: int) -> int:
    return int(lib().ggml_row_size(int(t), n_per_row))


def _ensure_init(t: GGMLQuantizationType) -> None:
    # ggml_quantize_init builds the IQ grids; do it once, before threads race for it
    with _init_lock:
        if int(t) not in _initialised:
            lib().ggml_quantize_init(int(t))
            _initialised.add(int(t))


def quantize_rows(t: GGMLQuantizationType, rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantize a [n_rows, n_per_row] float32 matrix; returns the stored bytes (uint8)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if rows.ndim != 2:
        raise ValueError("quantize_rows expects a 2-D matrix")
    n_rows, n_per_row = rows.shape
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        if imatrix.shape != (n_per_row,):
            raise ValueError(f"imatrix has shape {imatrix.shape}, expected ({n_per_row},)")
    elif requires_imatrix(t):
        raise UserError(f"{t.name} needs an importance matrix", "pass --imatrix or calibrate first")
    _ensure_init(t)
    out = np.empty(n_rows * row_size(t, n_per_row), dtype=np.uint8)
    fptr = ctypes.POINTER(ctypes.c_float)
    written = lib().ggml_quantize_chunk(
        int(t),
        rows.ctypes.data_as(fptr),
        out.ctypes.data_as(ctypes.c_void_p),
        0,
        n_rows,
        n_per_row,
        imatrix.ctypes.data_as(fptr) if imatrix is not None else None,
    )
    if written != out.nbytes:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {out.nbytes}")
    return out
