"""The interface of an allocation method, and the per-layer statistics it reads.

A method either prices every (expert, type) pair -- `cost`, after which the shared ILP
(mode_edge.allocate.ilp) picks types under the budget -- or assigns types itself (`assign`,
for methods whose paper does not optimise, like MoPEQ's clustering or a uniform type).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

AXES = {"all": 0, "gate": 1, "up": 2, "down": 3}


@dataclass
class LayerStats:
    layer: int
    counts: np.ndarray  # [3, E] top-k selections by modality (text, key vision, redundant vision)
    weight_sums: np.ndarray  # [3, E] summed routing weights (after the router's renormalisation)
    sensitivity: np.ndarray  # [E, 4, n_stats_types, 3] output MSE under the method's importance
    hessian: np.ndarray  # [E, 3] Hutchinson trace of gate, up, down (output error, data)
    prob_sums: np.ndarray  # [3, E] summed router probabilities before renormalisation
    hessian_norm: np.ndarray  # [E, 3] MoPEQ's Hutchinson trace of ||W||_F (no data)


@dataclass
class Context:
    hidden: int  # expert output width (MSE is a mean over it)
    tokens: dict[str, int]  # calibration token totals: text, image, total
    options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the method assumed, for the report
    type_names: list[str] = field(default_factory=list)  # the candidate types, smallest first


@dataclass
class Assignment:
    """A method that assigns types itself gets, per item: sizes [n, k] and a way to score
    a candidate assignment; it returns one column per item."""

    sizes: np.ndarray  # [n_items, n_types] bytes
    capacity: int
    scores: np.ndarray  # [n_items] the method's importance per item
    layer_of: np.ndarray  # [n_items]
    fits: Callable[[np.ndarray], bool]  # does this choice fit every constraint?


class Method:
    name: str = ""
    summary: str = ""
    #: the importance matrix pack quantizes with and the sensitivity is read under
    #: (mode_edge.signals.importance), so the ILP prices the file that is written
    importance: str = "plain"
    #: the method's own budget scope: one ILP per MoE layer (each layer its parameter share of
    #: the expert bytes) or one global ILP; --per-layer-bits / --global-bits override
    per_layer: bool = False
    #: published as is, or our variant/extension (reports say which)
    published: bool = True
    #: reads real-type sensitivity, so its candidate types must be ones calibration measured
    needs_sensitivity: bool = True

    def cost(self, ls: LayerStats, axis: int, ctx: Context) -> np.ndarray:
        """[E, n_stats_types] the objective's coefficient for each expert and type."""
        raise NotImplementedError

    @property
    def prices_dense(self) -> bool:
        """Whether the method prices dense matrices (attention, shared experts) as ILP items."""
        return type(self).attention_cost is not Method.attention_cost

    def attention_cost(self, sens: np.ndarray, ctx: Context) -> np.ndarray:
        """[n_types] cost of an attention matrix from its sensitivity [n_types, 3 (text, key, all)]."""
        from mode_edge.errors import UserError

        raise UserError(f"method {self.name} does not price attention matrices", "give a fixed --attn-type")

    def score(self, ls: LayerStats, proj: int | None, ctx: Context) -> np.ndarray:
        """[E] importance for assignment methods (proj None: the whole expert)."""
        raise NotImplementedError

    def assign(self, a: Assignment, ctx: Context) -> np.ndarray | None:
        """Types chosen without the ILP, or None to use the ILP on `cost`."""
        return None


def normalised(counts: np.ndarray) -> np.ndarray:
    """Counts as shares of their total (zeros stay zeros; an empty modality gives all zeros)."""
    counts = counts.astype(np.float64)
    total = counts.sum()
    return counts / total if total > 0 else np.zeros_like(counts)
