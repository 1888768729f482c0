"""Turn float weights into stored bytes, expert by expert, with ggml's quantizer.

An expert tensor [E, n_out, n_in] is stored expert-major, so quantizing each expert's
[n_out, n_in] slice with its own importance vector and concatenating gives exactly what
llama-quantize writes for the whole tensor. Experts (or row blocks of a plain matrix) run
in a thread pool; ggml releases the GIL.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from gguf import GGMLQuantizationType

from mode_edge.quantize.ggml_lib import quantize_rows

T = GGMLQuantizationType


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def encode_matrix(
    t: GGMLQuantizationType, rows: np.ndarray, importance: np.ndarray | None = None
) -> np.ndarray:
    """One [n_rows, n_per_row] float32 matrix -> stored bytes (F32/F16 as float arrays)."""
    if t == T.F32:
        return np.ascontiguousarray(rows, dtype=np.float32)
    if t == T.F16:
        return np.ascontiguousarray(rows, dtype=np.float32).astype(np.float16)
    return quantize_rows(t, rows, importance)


def _as_bytes(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1).view(np.uint8)


def encode_experts(
    t: GGMLQuantizationType,
    load_expert: Callable[[int], np.ndarray],
    ids: Sequence[int],
    importance: np.ndarray | None,
    pool: ThreadPoolExecutor,
) -> np.ndarray:
    """Quantize experts `ids` (in order) with type t; returns their concatenated bytes.

    importance is [n_expert, n_in] (indexed by global expert id) or None.
    """

    def one(e: int) -> np.ndarray:
        w = load_expert(e)
        return _as_bytes(
            encode_matrix(t, w.reshape(-1, w.shape[-1]), importance[e] if importance is not None else None)
        )

    parts = list(pool.map(one, ids))
    return np.concatenate(parts) if parts else np.empty(0, np.uint8)


def encode_rows_parallel(
    t: GGMLQuantizationType,
    rows: np.ndarray,
    importance: np.ndarray | None,
    pool: ThreadPoolExecutor,
    n_chunks: int,
) -> np.ndarray:
    """A plain matrix, split into row blocks quantized in parallel (rows are independent)."""
    rows = rows.reshape(-1, rows.shape[-1])
    if t in (T.F32, T.F16) or n_chunks <= 1 or rows.shape[0] < 2 * n_chunks:
        return _as_bytes(encode_matrix(t, rows, importance))
    blocks = np.array_split(rows, n_chunks, axis=0)
    parts = list(pool.map(lambda b: _as_bytes(encode_matrix(t, b, importance)), blocks))
    return np.concatenate(parts)
