"""The importance matrix each method hands to llama.cpp's quantizer (pack --imatrix).

plain     mean x^2 over every token routed to the expert (what calibration's imatrix.gguf holds)
balanced  MODE: the mean over text tokens and the mean over key vision tokens, averaged, so the
          channels text needs are not drowned by the (mostly redundant) image tokens
veq-ma    VEQ-MA: diag(X C X^T) with c_j = routing weight * (gamma for text, 1 for vision)

Entries are written as (sum, count) pairs in llama-imatrix's format; the quantizer uses their
ratio, so any positive count that gives the intended mean is exact. Attention matrices get the
plain mean over all tokens in every method.
"""

from __future__ import annotations

import numpy as np

from mode_edge.allocate.methods.base import KEY, TEXT
from mode_edge.quantize.imatrix import Imatrix, ImatrixEntry

PLAIN, WEIGHTED = 0, 1


def _means(sq: np.ndarray, counts: np.ndarray, mod: int) -> tuple[np.ndarray, np.ndarray]:
    c = counts[mod].astype(np.float64)
    m = np.zeros(sq.shape[2:], dtype=np.float64)
    seen = c > 0
    m[seen] = sq[mod, PLAIN][seen] / c[seen, None]
    return m, seen


def _entry(kind: str, sq: np.ndarray, counts: np.ndarray, weights: np.ndarray, gamma: float) -> ImatrixEntry:
    if kind == "plain":
        return ImatrixEntry(sq[:, PLAIN].sum(0).astype(np.float32), counts.sum(0).astype(np.float32))
    if kind == "veq-ma":
        c = np.array([gamma, 1.0, 1.0])
        s = np.tensordot(c, sq[:, WEIGHTED].astype(np.float64), axes=1)
        n = (c[:, None] * weights).sum(0)
        return ImatrixEntry(s.astype(np.float32), n.astype(np.float32))
    if kind == "balanced":
        mt, st = _means(sq, counts, TEXT)
        mv, sv = _means(sq, counts, KEY)
        both = (mt + mv) / np.maximum(st.astype(np.float64) + sv, 1)[:, None]
        n = counts.sum(0).astype(np.float64)
        # experts with neither text nor key tokens fall back to the plain mean (redundant tokens)
        plain = np.divide(sq[:, PLAIN].sum(0), np.maximum(n, 1)[:, None])
        mean = np.where((st | sv)[:, None], both, plain)
        return ImatrixEntry((mean * n[:, None]).astype(np.float32), n.astype(np.float32))
    raise ValueError(f"unknown importance {kind!r}")


def method_imatrix(stats, kind: str, gamma: float = 1.0) -> Imatrix:
    entries = {}
    for layer, d in stats.layers.items():
        gate, up, down = stats.manifest["gguf_names"][str(layer)]
        counts, weights = d["counts"], d["weight_sums"].astype(np.float64)
        inp = _entry(kind, d["in_sq"], counts, weights, gamma)
        entries[gate] = inp
        entries[up] = ImatrixEntry(inp.in_sum2.copy(), inp.counts.copy())
        entries[down] = _entry(kind, d["mid_sq"], counts, weights, gamma)
        # attention matrices: every token, unweighted (as their sensitivity was measured)
        n = np.array([d["attn_tokens"].sum()], dtype=np.float32) if "attn_tokens" in d else None
        for name, inp in stats.manifest.get("attn_tensors", {}).get(str(layer), []):
            entries[name] = ImatrixEntry(d[f"{inp}_sq"].sum(0, keepdims=True).astype(np.float32), n)
    return Imatrix(entries, [stats.manifest.get("data", "mode-edge"), f"importance:{kind}"],
                   stats.manifest.get("n_samples", 0), 0)

