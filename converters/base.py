"""The interface every architecture file implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

from gguf import GGUFWriter

from mode_edge.checkpoint import Checkpoint
from mode_edge.gguf.tensors import TensorSpec


class ArchConverter(ABC):
    """Knows one architecture: its GGUF names, hyper-parameters and weight layouts.

    A converter validates the config in __init__ (so a bad model fails before any file
    is opened), then describes the text model and the vision projector as metadata
    callbacks plus lazy tensor lists.
    """

    #: config.json `model_type` values this converter handles
    model_types: tuple[str, ...] = ()
    #: llama.cpp architecture name of the text model
    arch: str = ""

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt

    @property
    def model_name(self) -> str:
        return self.ckpt.name

    @abstractmethod
    def add_text_metadata(self, w: GGUFWriter) -> None: ...

    @abstractmethod
    def text_tensors(self) -> list[TensorSpec]: ...

    @abstractmethod
    def add_mmproj_metadata(self, w: GGUFWriter) -> None: ...

    @abstractmethod
    def mmproj_tensors(self) -> list[TensorSpec]: ...

    def kv_cache_bytes(self, n_ctx: int) -> int:
        """Bytes llama.cpp's default (F16) KV cache takes for n_ctx tokens (budget reserve)."""
        raise NotImplementedError(f"no KV-cache size for {self.arch}")

    def calibration(self, **kwargs):
        """The object that runs this architecture layer by layer for calibration."""
        raise NotImplementedError(f"calibration is not implemented for {self.arch}")
