"""What a converter hands to the writers: named tensors, loaded only when written."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np


class Role(str, Enum):
    """What a tensor is for; type policies (precision now, plans later) key on it."""

    EMBED = "embed"  # token embedding
    OUTPUT = "output"  # lm head
    NORM = "norm"  # any norm weight or bias
    BIAS = "bias"  # a linear layer's bias
    ROUTER = "router"  # MoE gate (kept F32: routing decisions are sensitive)
    ATTN = "attn"  # attention projections
    EXPERT = "expert"  # routed experts, [n_expert, n_out, n_in]
    FFN = "ffn"  # dense FFN
    SHARED = "shared"  # shared (always active) experts
    SSM = "ssm"  # recurrent-state parameters (conv kernel, decay, time-step bias): kept F32
    VISION = "vision"  # vision tower weights
    PROJECTOR = "projector"  # vision -> text projector (merger, deepstack)
    POSITION = "position"  # learned position embeddings (interpolated in F32 by clip)
    PATCH = "patch"  # patch-embedding convolution kernels


@dataclass
class TensorSpec:
    """One GGUF tensor in numpy order (the reverse of ggml's ne), as float32 on load."""

    name: str
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]
    role: Role
    n_expert: int = 0
    #: for EXPERT tensors: read one expert's [n_out, n_in] alone (streams big tensors)
    load_expert: Callable[[int], np.ndarray] | None = None

    @property
    def row_size(self) -> int:
        return self.shape[-1]
