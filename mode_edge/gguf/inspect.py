"""Summaries of GGUF files, read with gguf-py's reader."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType

from mode_edge.errors import UserError
from mode_edge.formats.groups import GROUP_RE, GROUPS_KEY, expert_types

#: parts of a text model by llama.cpp's tensor names (its MODEL_TENSOR naming), in display order
PARTS = (
    ("routed experts", re.compile(r"^blk\.\d+\.ffn_(gate|up|down|gate_up)_exps\.")),
    ("shared experts", re.compile(r"^blk\.\d+\.ffn_(gate|up|down)_shexp\.")),
    ("dense-layer FFNs", re.compile(r"^blk\.\d+\.ffn_(gate|up|down)\.weight$")),
    ("attention", re.compile(r"^blk\.\d+\.(attn_|ssm_)(?!.*norm)")),  # its norms are "other"
    ("embedding and output", re.compile(r"^(token_embd|output)\.")),
)


def part_of(name: str) -> str:
    """A tensor's part (PARTS), or "other" (norms, routers, biases, the vision tower)."""
    m = GROUP_RE.match(name)
    base = m["base"] + "." if m else name
    return next((what for what, rx in PARTS if rx.match(base)), "other")


def dense_layers(names: list[str]) -> list[int]:
    """Blocks with a dense FFN and no router: the dense (non-MoE) layers."""
    kinds: dict[int, set[str]] = {}
    for n in names:
        parts = n.split(".")
        if parts[0] == "blk" and len(parts) > 2 and parts[1].isdigit():
            kinds.setdefault(int(parts[1]), set()).add(parts[2])
    return sorted(b for b, k in kinds.items() if k & {"ffn_gate", "ffn_up"} and "ffn_gate_inp" not in k)


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
    parts: dict[str, dict[str, Any]] = {}
    n_params = 0
    for t in reader.tensors:
        counts[t.tensor_type.name] += 1
        sizes[t.tensor_type.name] += int(t.n_bytes)
        n_params += int(t.n_elements)
        p = parts.setdefault(part_of(t.name), {"tensors": 0, "bytes": 0, "types": Counter()})
        p["tensors"] += 1
        p["bytes"] += int(t.n_bytes)
        p["types"][t.tensor_type.name] += 1
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
        "parts": {
            k: {**parts[k], "types": dict(parts[k]["types"])}
            for k in [*(w for w, _ in PARTS), "other"]
            if k in parts
        },
        "dense_layers": dense_layers([t.name for t in reader.tensors]),
        "expert_groups": field_value(reader, GROUPS_KEY),
        "experts": experts,
    }
