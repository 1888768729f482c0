"""Architectures, one file per architecture, each registered by model_type (registry.py).

Importing this package imports every architecture file, so each registers itself.
"""

from __future__ import annotations

from mode_edge.arch import glm4v_moe, internvl_moe, llama4, qwen3_5_moe, qwen3_vl_moe  # noqa: F401  (each registers itself)
from mode_edge.arch.base import Architecture, Calibration, LayerParts
from mode_edge.arch.registry import (
    architecture_for,
    architecture_of_gguf,
    open_architecture,
    register,
    registered,
    supported_model_types,
)

__all__ = [
    "Architecture",
    "Calibration",
    "LayerParts",
    "architecture_for",
    "architecture_of_gguf",
    "open_architecture",
    "register",
    "registered",
    "supported_model_types",
]
