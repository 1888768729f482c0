"""Uniform storage precisions (`--precision`) and the numpy encoders behind them.

Which tensors are never reduced follows llama.cpp's own conventions: 1-D tensors (norms,
biases), the MoE router and learned position embeddings stay F32. K- and IQ-quants come
from ggml's quantizer in mode_edge.quantize; the types here are the ones gguf-py encodes
bit-exactly in numpy.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType
from gguf import quants

from mode_edge.gguf.tensors import Role, TensorSpec
from mode_edge.gguf.writer import OutTensor

T = GGMLQuantizationType

PRECISIONS: dict[str, GGMLQuantizationType] = {
    "f32": T.F32,
    "f16": T.F16,
    "bf16": T.BF16,
    "q8_0": T.Q8_0,
}

FILE_TYPES: dict[str, LlamaFileType] = {
    "f32": LlamaFileType.ALL_F32,
    "f16": LlamaFileType.MOSTLY_F16,
    "bf16": LlamaFileType.MOSTLY_BF16,
    "q8_0": LlamaFileType.MOSTLY_Q8_0,
}

_ALWAYS_F32 = {Role.NORM, Role.BIAS, Role.ROUTER, Role.POSITION}


def storage_type(spec: TensorSpec, precision: str) -> GGMLQuantizationType:
    want = PRECISIONS[precision]
    if len(spec.shape) == 1 or spec.role in _ALWAYS_F32:
        return T.F32
    block = GGML_QUANT_SIZES[want][0]
    if spec.row_size % block:
        return T.F16  # rows that do not fill a block cannot take a block type
    return want


def encode(data: np.ndarray, ggml_type: GGMLQuantizationType) -> np.ndarray:
    """float32 array -> the bytes (or float array) ggml stores for that type."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    if ggml_type == T.F32:
        return data
    if ggml_type == T.F16:
        return data.astype(np.float16)
    return quants.quantize(data, ggml_type)


def out_tensor(spec: TensorSpec, ggml_type: GGMLQuantizationType) -> OutTensor:
    def produce() -> np.ndarray:
        arr = spec.load()
        if tuple(arr.shape) != spec.shape:
            raise RuntimeError(f"{spec.name}: loaded shape {arr.shape}, expected {spec.shape}")
        return encode(arr, ggml_type)

    return OutTensor(spec.name, spec.shape, ggml_type, produce)


def uniform(specs: list[TensorSpec], precision: str) -> list[OutTensor]:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}")
    return [out_tensor(s, storage_type(s, precision)) for s in specs]
