"""The importance matrices llama.cpp's quantizer weighs each input channel by, per method.

plain   mean x^2 over every token routed to the expert, unweighted: llama-imatrix's definition,
        and the diagonal of the Hessian MODE's GPTQ uses (all routed tokens)
veq-ma  VEQ-MA: diag(X C X^T) / sum(c), c_j = p_j * alpha_j (routing weight times gamma for
        text tokens, 1 for vision tokens)

Calibration measures every expert's error under each importance (so a method's ILP prices the
file it will write) and `plan` writes the method's importance for pack, both through
`expert_entries`: the same float32 sums and counts, so the quantizer sees identical numbers.
Entries are (sum, count) pairs in llama-imatrix's format; the quantizer uses their ratio.
Attention matrices, shared experts and dense layers' FFNs get the plain mean over all tokens in
every method.
"""

from __future__ import annotations

import numpy as np

from mode_edge.formats.imatrix import Imatrix, ImatrixEntry

IMPORTANCES = ("plain", "veq-ma")
GAMMA_REPORTED = 22.4  # VEQ's gamma for Qwen3-VL, used when calibration could not measure one
PLAIN, WEIGHTED = 0, 1  # second axis of in_sq / mid_sq


def _entry(kind: str, sq: np.ndarray, counts: np.ndarray, weights: np.ndarray, gamma: float) -> ImatrixEntry:
    """sq [3 modalities, 2, E, n] float32 sums of x^2; counts, weights [3, E]."""
    if kind == "plain":
        return ImatrixEntry(sq[:, PLAIN].sum(0).astype(np.float32), counts.sum(0).astype(np.float32))
    if kind == "veq-ma":
        c = np.array([gamma, 1.0, 1.0])
        s = np.tensordot(c, sq[:, WEIGHTED].astype(np.float64), axes=1)
        n = (c[:, None] * weights.astype(np.float64)).sum(0)
        return ImatrixEntry(s.astype(np.float32), n.astype(np.float32))
    raise ValueError(f"unknown importance {kind!r}")


def expert_entries(
    kind: str, in_sq: np.ndarray, mid_sq: np.ndarray, counts: np.ndarray, weights: np.ndarray, gamma: float
) -> tuple[ImatrixEntry, ImatrixEntry]:
    """(gate/up input entry, down input entry) of one layer's experts."""
    in_sq, mid_sq = np.asarray(in_sq, dtype=np.float32), np.asarray(mid_sq, dtype=np.float32)
    return _entry(kind, in_sq, counts, weights, gamma), _entry(kind, mid_sq, counts, weights, gamma)


def method_imatrix(stats, kind: str, gamma: float = 1.0) -> Imatrix:
    entries = {}
    moe = set(stats.moe_layers)
    for layer, d in stats.layers.items():
        if layer in moe:
            gate, up, down = stats.manifest["gguf_names"][str(layer)]
            inp, mid = expert_entries(kind, d["in_sq"], d["mid_sq"], d["counts"], d["weight_sums"], gamma)
            entries[gate] = inp
            entries[up] = ImatrixEntry(inp.in_sum2.copy(), inp.counts.copy())
            entries[down] = mid
        # attention, shared experts and dense FFNs: every token, unweighted (as their sensitivity
        # was measured)
        for prefix, listed in (
            ("attn", "attn_tensors"),
            ("shexp", "shared_tensors"),
            ("dense", "dense_tensors"),
        ):
            n = np.array([d[f"{prefix}_tokens"].sum()], dtype=np.float32) if f"{prefix}_tokens" in d else None
            for name, src in stats.manifest.get(listed, {}).get(str(layer), []):
                entries[name] = ImatrixEntry(d[f"{src}_sq"].sum(0, keepdims=True).astype(np.float32), n)
    return Imatrix(
        entries,
        [stats.manifest.get("data", "mode-edge"), f"importance:{kind}"],
        stats.manifest.get("n_samples", 0),
        0,
    )
