"""`mode` (docs/methods.md, arXiv 2606.17118) and the ablations that remove one ingredient each.

mode:            f_t(e) * d_T(e, b) + f_v(e) * d_V(e, b); f normalised per layer and modality,
                 vision counted over the key (attention-selected) image tokens only
mode-text:       f_t(e) * d_T(e, b) only (text frequency; vision ignored)
mode-pooled:     f(e) * d_all(e, b) with f the pooled share over all tokens
                 (no modality decomposition, no denoising)
mode-allvision:  like mode, but vision counted over every image token (no denoising)
mode-nosens:     like mode, but d replaced by the layer's mean error of each type
                 (frequencies only: what the per-expert sensitivity adds)
mode-global:     ours: mode with one ILP over all layers on exact bytes (no per-layer budget)

All of them solve one ILP per layer (MODE's code does; --global-bits for one over all layers).
Every one is packed with the plain importance (all routed tokens, unweighted: the diagonal of
the Hessian MODE's GPTQ quantizes with), and d was measured under that same importance.
"""

from __future__ import annotations

import numpy as np

from mode_edge.allocate.methods.base import Context, LayerStats, Method, normalised
from mode_edge.formats.stats import KEY, RED, S_ALL, S_KEY, S_TEXT, TEXT


class Mode(Method):
    name = "mode"
    summary = "MODE: per-modality frequency (key vision tokens) x per-modality real-type error, per layer"
    # its code solves one ILP per layer (benchmarks/quality.py: at 2.45 bpw this beats one global
    # ILP in 5 of 6 calibration seeds, mean KLD 0.400 vs 0.507 x1e-4)
    per_layer = True

    def vision_counts(self, ls: LayerStats) -> np.ndarray:
        return ls.counts[KEY]

    def deltas(self, ls: LayerStats, axis: int) -> tuple[np.ndarray, np.ndarray]:
        return ls.sensitivity[:, axis, :, S_TEXT], ls.sensitivity[:, axis, :, S_KEY]

    def cost(self, ls: LayerStats, axis: int, ctx: Context) -> np.ndarray:
        f_t, f_v = normalised(ls.counts[TEXT]), normalised(self.vision_counts(ls))
        d_t, d_v = self.deltas(ls, axis)
        return f_t[:, None] * d_t + f_v[:, None] * d_v

    def attention_cost(self, sens: np.ndarray, ctx: Context) -> np.ndarray:
        # every token passes attention: frequency 1 in each modality (an expert's is f <= 1)
        return sens[:, S_TEXT] + sens[:, S_KEY]


class ModeText(Mode):
    published = False
    name = "mode-text"
    summary = "ablation: text frequency x text error only"

    def cost(self, ls: LayerStats, axis: int, ctx: Context) -> np.ndarray:
        return normalised(ls.counts[TEXT])[:, None] * ls.sensitivity[:, axis, :, S_TEXT]

    def attention_cost(self, sens: np.ndarray, ctx: Context) -> np.ndarray:
        return sens[:, S_TEXT]


class ModePooled(Mode):
    published = False
    name = "mode-pooled"
    summary = "ablation: pooled frequency x pooled error (no decomposition, no denoising)"

    def cost(self, ls: LayerStats, axis: int, ctx: Context) -> np.ndarray:
        return normalised(ls.counts.sum(0))[:, None] * ls.sensitivity[:, axis, :, S_ALL]

    def attention_cost(self, sens: np.ndarray, ctx: Context) -> np.ndarray:
        return sens[:, S_ALL]


class ModeAllVision(Mode):
    published = False
    name = "mode-allvision"
    summary = "ablation: mode with vision counted over all image tokens (no denoising)"

    def vision_counts(self, ls: LayerStats) -> np.ndarray:
        return ls.counts[KEY] + ls.counts[RED]


class ModeNoSens(Mode):
    published = False
    name = "mode-nosens"
    summary = "ablation: mode with each expert's error replaced by the layer's mean per type"

    def deltas(self, ls: LayerStats, axis: int) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for s in (S_TEXT, S_KEY):
            d = ls.sensitivity[:, axis, :, s]
            seen = d.max(axis=1) > 0
            mean = d[seen].mean(axis=0) if seen.any() else np.zeros(d.shape[1])
            out.append(np.where(seen[:, None], mean[None, :], 0.0))
        return out[0], out[1]


class ModeGlobal(Mode):
    name = "mode-global"
    summary = "ours: mode with one ILP over all layers (no per-layer budget)"
    published = False
    per_layer = False
