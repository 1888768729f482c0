"""Streaming GGUF writer: header and tensor index first, then one tensor at a time.

gguf-py's GGUFWriter holds every tensor until the end when tensors are added with
add_tensor; here only tensor infos are registered up front and each tensor's data is
produced, written and dropped in turn, so peak memory is one tensor. The file is written
under a temporary name in the target folder and renamed by the caller once every output
of a command is complete.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from mode_edge.formats.quant_types import row_bytes


def tensor_nbytes(shape: tuple[int, ...], ggml_type: GGMLQuantizationType) -> int:
    return int(np.prod(shape[:-1], dtype=np.int64)) * row_bytes(ggml_type, shape[-1])


@dataclass
class OutTensor:
    """A tensor as it will be stored: GGUF name, logical shape (numpy order), type, data."""

    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLQuantizationType
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.shape, self.ggml_type)


def _start(
    path: Path, arch: str, add_metadata: Callable[[GGUFWriter], None], tensors: list[OutTensor]
) -> GGUFWriter:
    w = GGUFWriter(path, arch)
    add_metadata(w)
    for t in tensors:
        # logical shape + raw_dtype: gguf-py stores the shape as given for non-uint8 dtypes
        w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.ggml_type)
    return w


def gguf_file_size(arch: str, add_metadata: Callable[[GGUFWriter], None], tensors: list[OutTensor]) -> int:
    """The exact size write_gguf will produce, without producing any tensor data: the real
    header (metadata + tensor index) is serialised to a scratch file and measured."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mode-edge-size-") as tmp:
        w = _start(Path(tmp) / "header.gguf", arch, add_metadata, tensors)
        try:
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            assert w.fout is not None
            header = w.fout[0].tell()
            align = w.data_alignment
        finally:
            w.close()
    return GGUFWriter.ggml_pad(header, align) + sum(GGUFWriter.ggml_pad(t.nbytes, align) for t in tensors)


def write_gguf(
    path: Path,
    arch: str,
    add_metadata: Callable[[GGUFWriter], None],
    tensors: list[OutTensor],
    on_tensor: Callable[[OutTensor], None] | None = None,
) -> int:
    """Write a complete GGUF file at `path` (the caller's temporary name). Returns its size."""
    w = _start(path, arch, add_metadata, tensors)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for t in tensors:
            data = t.produce()
            if data.nbytes != t.nbytes:
                raise RuntimeError(f"{t.name}: produced {data.nbytes} bytes, expected {t.nbytes}")
            w.write_tensor_data(data)
            if on_tensor is not None:
                on_tensor(t)
            del data
        w.flush()
        assert w.fout is not None
        for f in w.fout:
            os.fsync(f.fileno())
    finally:
        w.close()
    return path.stat().st_size
