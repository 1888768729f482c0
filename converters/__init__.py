"""Architecture converters, one file per architecture (installed as mode_edge_converters)."""

from __future__ import annotations

from mode_edge.checkpoint import Checkpoint
from mode_edge.errors import UserError

from .base import ArchConverter
from .qwen3_vl_moe import Qwen3VLMoeConverter

CONVERTERS: tuple[type[ArchConverter], ...] = (Qwen3VLMoeConverter,)


def supported_model_types() -> list[str]:
    return sorted(t for c in CONVERTERS for t in c.model_types)


def converter_for(ckpt: Checkpoint) -> ArchConverter:
    model_type = ckpt.config.get("model_type")
    for cls in CONVERTERS:
        if model_type in cls.model_types:
            return cls(ckpt)
    archs = ckpt.config.get("architectures") or []
    raise UserError(
        f"no converter for model_type {model_type!r}" + (f" ({archs[0]})" if archs else ""),
        f"supported: {', '.join(supported_model_types())}")


__all__ = ["ArchConverter", "CONVERTERS", "converter_for", "supported_model_types"]
