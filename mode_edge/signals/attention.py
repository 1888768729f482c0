"""Dense matrices' own statistics (attention, shared experts, dense layers' FFNs), so the allocator can choose
their types too: every token passes them (frequency 1 in each modality).

Per layer and modality (text, key vision, redundant vision): sum of x^2 of each input the
matrices read (attention: what q, k and v read, and o_proj's input; shared experts: the MoE
input, which gate and up read, and the intermediate activation down reads), and token counts.
Sensitivity of a matrix W stored as type q, for modality M:

    delta_M(W, q) = sum_j imp_M[j] * mean_i (W - Q(W))_ij^2,    imp_M[j] = mean x_j^2 over M

the expected squared error of one output element when input channels are uncorrelated, with
Q the runtime's real quantizer (importance = all tokens, as pack uses it).
"""

from __future__ import annotations

import numpy as np
import torch

from mode_edge.formats.stats import KEY, RED, TEXT
from mode_edge.signals.sensitivity import stored

INPUTS = ("attn_in", "o_in")  # what q/k/v read, what o_proj reads
SHARED_INPUTS = ("shexp_in", "shexp_mid")  # what the shared gate/up read, what its down reads
DENSE_INPUTS = ("dense_in", "dense_mid")  # the same for a dense (non-MoE) layer's FFN


class MatrixRecorder:
    """prefix names the outputs ({prefix}_tokens, {prefix}_sensitivity); tokens are counted on
    the first input kind."""

    def __init__(self, prefix: str = "attn", inputs: tuple[str, str] = INPUTS):
        self.prefix, self.inputs = prefix, inputs
        self.sq: dict[str, np.ndarray] = {}
        self.tokens = np.zeros(3, dtype=np.int64)

    def add(self, kind: str, x: torch.Tensor, modality: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double().cpu()
        acc = self.sq.setdefault(kind, np.zeros((3, x.shape[1]), dtype=np.float64))
        for m in (TEXT, KEY, RED):
            sel = modality == m
            if bool(sel.any()):
                acc[m] += (x[sel] ** 2).sum(0).numpy()
        if kind == self.inputs[0]:
            self.tokens += np.bincount(modality.numpy(), minlength=3)[:3]

    def means(self, kind: str) -> np.ndarray:
        """[3 (text, key vision, all), dim] mean x^2 (zeros for a modality with no tokens)."""
        sq, n = self.sq[kind], self.tokens.astype(np.float64)
        rows = [(sq[TEXT], n[TEXT]), (sq[KEY], n[KEY]), (sq.sum(0), n.sum())]
        return np.stack([s / c if c > 0 else np.zeros_like(s) for s, c in rows])

    def finish(self, matrices: list[tuple[str, torch.Tensor, str]], types) -> dict[str, np.ndarray]:
        """matrices: (gguf name, weight [out, in], input kind) in a fixed order."""
        sens = np.zeros((len(matrices), len(types), 3), dtype=np.float64)
        for i, (_, w, kind) in enumerate(matrices):
            imp = self.means(kind)
            plain = imp[2].astype(np.float32) if imp[2].any() else None
            w = w.detach().float().cpu()
            for ti, t in enumerate(types):
                err = ((w - stored(w, t, plain)) ** 2).mean(0).double().numpy()  # [in]
                sens[i, ti] = imp @ err
        return {
            f"{self.prefix}_tokens": self.tokens.copy(),
            f"{self.prefix}_sensitivity": sens,
            **{f"{k}_sq": v.astype(np.float32) for k, v in self.sq.items()},
        }


class AttentionRecorder(MatrixRecorder):
    def __init__(self):
        super().__init__("attn", INPUTS)


class SharedExpertRecorder(MatrixRecorder):
    def __init__(self):
        super().__init__("shexp", SHARED_INPUTS)


class DenseFFNRecorder(MatrixRecorder):
    def __init__(self):
        super().__init__("dense", DENSE_INPUTS)
