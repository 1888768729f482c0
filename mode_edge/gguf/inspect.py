"""Summaries of GGUF files, read with gguf-py's reader."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType

from mode_edge.errors import UserError
from mode_edge.formats.groups import GROUPS_KEY, expert_types


def field_value(reader: GGUFReader, key: str) -> Any:
    field = reader.get_field(key)
    if field is None:
        return None
    if field.types and field.types[0] == GGUFValueType.ARRAY:
        return f"[{len(field.data)} items]"
    return field.contents()


def open_gguf(path: Path) -> GGUFReader:
    if not path.is_file():
        raise UserError(f"{path} does not exist", "pass a .gguf file written by mode-edge or llama.cpp")
    try:
        # corrupt sizes overflow numpy scalars inside gguf-py: the error below says so, once,
        # instead of a RuntimeWarning first (benchmarks/fuzz_loader.py)
        with np.errstate(all="ignore"):
            return GGUFReader(path)
    except Exception as e:  # gguf-py raises ValueError/struct errors on garbage
        raise UserError(
            f"{path} is not a readable GGUF file ({e})", "check the path; the file may be truncated"
        ) from None


def summarize(path: Path) -> dict[str, Any]:
    reader = open_gguf(path)
    arch = field_value(reader, "general.architecture")
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    n_params = 0
    for t in reader.tensors:
        counts[t.tensor_type.name] += 1
        sizes[t.tensor_type.name] += int(t.n_bytes)
        n_params += int(t.n_elements)
    keys = [
        "general.name",
        "general.file_type",
        f"{arch}.block_count",
        f"{arch}.expert_count",
        f"{arch}.expert_used_count",
        "clip.projector_type",
        "tokenizer.ggml.pre",
    ]
    experts = {name: dict(Counter(t.name for t in types)) for name, types in expert_types(reader).items()}
    return {
        "path": str(path),
        "architecture": arch,
        "file_bytes": path.stat().st_size,
        "tensor_count": len(reader.tensors),
        "parameters": n_params,
        "types": {
            k: {"tensors": counts[k], "bytes": sizes[k]} for k in sorted(counts, key=lambda k: -sizes[k])
        },
        "metadata": {k: field_value(reader, k) for k in keys if reader.get_field(k) is not None},
        "expert_groups": field_value(reader, GROUPS_KEY),
        "experts": experts,
    }
