"""`uniform`: one type for every routed expert, the largest candidate that fits."""

from __future__ import annotations

import numpy as np

from mode_edge.allocate.methods.base import Assignment, Context, LayerStats, Method


class Uniform(Method):
    name = "uniform"
    summary = "one type for all routed experts: the largest candidate that fits the budget"
    needs_sensitivity = False

    def score(self, ls: LayerStats, proj: int | None, ctx: Context) -> np.ndarray:
        return np.zeros(ls.counts.shape[1])

    def assign(self, a: Assignment, ctx: Context) -> np.ndarray | None:
        n, k = a.sizes.shape
        for c in reversed(range(k)):  # candidate types are ordered by bits
            choice = np.full(n, c, dtype=np.int64)
            if a.fits(choice):
                return choice
        return np.zeros(n, dtype=np.int64)  # the caller reports the smallest size as infeasible
