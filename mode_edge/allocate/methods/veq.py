"""VEQ (arXiv 2602.01037): `veq` as published, `veq-alloc` our allocator over its importance.

VEQ quantizes every expert at one bit width and improves the quantizer. VEQ-MA quantizes with
the enhanced Hessian X C X^T, c_j = p_j * alpha_j (routing affinity times gamma for text tokens,
1 for vision), whose diagonal is llama.cpp's importance matrix: importance "veq-ma". VEQ-ME
weights AWQ's loss by a per-expert constant S_e, which cannot move the rounding of an expert
quantized alone, so at uniform bits it is `uniform`. Hence:

veq        the published baseline: one type for every routed expert (the largest that fits)
           + the VEQ-MA importance matrix
veq-alloc  ours: VEQ-ME's importance as an allocation objective at equal bytes,
           cost(e, b) = S_e * N_e * mse(e, b), S_e = gamma * N_e^text + beta * N_e^vis with
           beta = T_text / T_vis (calibration token totals), N_e = N_e^text + N_e^vis the
           tokens VEQ-ME's loss sums over, mse the output error under VEQ-MA (all tokens)

gamma = ||grad_text|| / ||grad_vis||: measured by calibration (mode_edge.calibrate.gamma) or
given; --veq-gamma at plan time changes `veq`'s importance matrix, and `veq-alloc` refuses a
gamma other than the one its sensitivity was measured with.
"""

from __future__ import annotations

import numpy as np

from mode_edge.allocate.methods.base import Context, LayerStats, Method
from mode_edge.allocate.methods.uniform import Uniform
from mode_edge.formats.stats import KEY, RED, S_ALL, TEXT
from mode_edge.signals import GAMMA_REPORTED


def gamma(options: dict) -> float:
    return float(options.get("veq_gamma") or options.get("measured_gamma") or GAMMA_REPORTED)


class Veq(Uniform):
    name = "veq"
    summary = "VEQ as published: one type for all routed experts, packed with the VEQ-MA importance"
    importance = "veq-ma"


class VeqAlloc(Method):
    name = "veq-alloc"
    summary = "ours: VEQ-ME's S_e * N_e x output error (VEQ-MA) as the allocation objective"
    importance = "veq-ma"
    published = False

    def cost(self, ls: LayerStats, axis: int, ctx: Context) -> np.ndarray:
        t_text, t_vis = ctx.tokens.get("text", 0), ctx.tokens.get("image", 0)
        beta = t_text / t_vis if t_vis else 1.0
        n_text = ls.counts[TEXT].astype(np.float64)
        n_vis = (ls.counts[KEY] + ls.counts[RED]).astype(np.float64)
        s = gamma(ctx.options) * n_text + beta * n_vis
        return (s * (n_text + n_vis))[:, None] * ls.sensitivity[:, axis, :, S_ALL]
