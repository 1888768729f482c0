"""MoPEQ (arXiv 2509.02512): Hessian-trace importance, k-means bit classes.

hessian       as published (krishnateja95/MoE-Mixed-Prec): the Hutchinson trace of the Hessian
              of ||W||_F, 100 unit-normalised probes, no data (mode_edge.signals.sensitivity)
hessian-data  ours: the Hutchinson trace of the expert's output-error Hessian on its routed
              calibration tokens (data-dependent), calibration's --hessian-probes probes

Each item's score is summed over gate, up and down for a whole expert. The scores are
clustered by 1-D k-means (k classes, default 3 as the paper's {2,3,4} bits) within each layer
("layer", default) or over the whole model ("model", scores divided by their layer's sum
first, as the published MolmoE script does); clusters map to types by score order. The
published code stops at the scores (no budget); of all maps from classes to strictly
increasing candidate types, the one with the most bytes that still fits the budget is taken
(our default). Frequency plays no part, as in the paper.
"""

from __future__ import annotations

import itertools

import numpy as np

from mode_edge.allocate.methods.base import Assignment, Context, LayerStats, Method


def kmeans_1d(x: np.ndarray, k: int, iters: int = 100) -> np.ndarray:
    """Cluster labels 0..k'-1 ordered by centre (k' <= k when there are fewer distinct values)."""
    x = np.asarray(x, dtype=np.float64)
    k = max(1, min(k, len(np.unique(x))))
    centres = np.quantile(x, (np.arange(k) + 0.5) / k)
    labels = np.zeros(len(x), dtype=np.int64)
    for _ in range(iters):
        labels = np.abs(x[:, None] - centres[None, :]).argmin(axis=1)
        new = np.array([x[labels == c].mean() if (labels == c).any() else centres[c] for c in range(k)])
        if np.allclose(new, centres, rtol=0, atol=0):
            break
        centres = new
    order = np.argsort(np.argsort(centres))  # rank of each centre
    return order[labels]


class Hessian(Method):
    name = "hessian"
    summary = "MoPEQ as published: trace of the Hessian of ||W||_F (no data), k-means classes to types"
    needs_sensitivity = False
    trace = "hessian_norm"  # the LayerStats field the scores come from

    def score(self, ls: LayerStats, proj: int | None, ctx: Context) -> np.ndarray:
        h = getattr(ls, self.trace)
        return h.sum(axis=1) if proj is None else h[:, proj]

    def assign(self, a: Assignment, ctx: Context) -> np.ndarray | None:
        k = int(ctx.options.get("hessian_classes", 3))
        scope = ctx.options.get("hessian_scope", "layer")
        labels = np.zeros(len(a.scores), dtype=np.int64)
        if scope == "model":
            sums = {layer: a.scores[a.layer_of == layer].sum() for layer in np.unique(a.layer_of)}
            denom = np.array([sums[layer] or 1.0 for layer in a.layer_of])
            labels = kmeans_1d(a.scores / denom, k)
        else:
            for layer in np.unique(a.layer_of):
                sel = a.layer_of == layer
                labels[sel] = kmeans_1d(a.scores[sel], k)
        n_classes = int(labels.max()) + 1
        n_types = a.sizes.shape[1]
        rows = np.arange(len(labels))
        best, best_key = None, None
        for strict in (True, False):
            maps = (
                itertools.combinations(range(n_types), n_classes)
                if strict
                else itertools.combinations_with_replacement(range(n_types), n_classes)
            )
            for m in maps:
                choice = np.asarray(m, dtype=np.int64)[labels]
                if not a.fits(choice):
                    continue
                key = (int(a.sizes[rows, choice].sum()), m[::-1])
                if best_key is None or key > best_key:
                    best, best_key = choice, key
            if best is not None:
                used = [ctx.type_names[c] if ctx.type_names else str(c) for c in sorted(set(best.tolist()))]
                ctx.notes.append(f"{scope}-wise k-means, {n_classes} classes; types used: {', '.join(used)}")
                return best
        return np.zeros(len(labels), dtype=np.int64)


class HessianData(Hessian):
    name = "hessian-data"
    summary = "ours: MoPEQ's clustering on the data-dependent Hessian trace of the expert's output error"
    published = False
    trace = "hessian"
