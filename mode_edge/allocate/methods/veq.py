"""`veq`: VEQ's modality-expert importance (arXiv 2602.01037), allocated at equal bytes.

VEQ-ME: S_e = gamma * N_e^text + beta * N_e^vis with beta = T_text / T_vis (calibration token
totals) and gamma = ||grad_text|| / ||grad_vis|| (the ratio of the two modalities' gradient
norms; the statistics carry it when calibration measured it, else the 22 VEQ reports for
Qwen3-VL, which --veq-gamma overrides). The paper weights AWQ's reconstruction loss by S_e at
a uniform bit width; here S_e weights each expert's measured output error (all of its tokens)
in the allocation objective, our extension so it competes at equal bytes.
VEQ-MA: pack quantizes with the importance matrix diag(X C X^T), c_j = p_j * alpha_j
(routing weight times gamma for text tokens, 1 for vision) -- importance "veq-ma".
"""

from __future__ import annotations

import numpy as np

from mode_edge.allocate.methods.base import KEY, RED, S_ALL, TEXT, Context, LayerStats, Method

GAMMA_REPORTED = 22.0


def gamma(options: dict) -> float:
    return float(options.get("veq_gamma") or options.get("measured_gamma") or GAMMA_REPORTED)


class Veq(Method):
    name = "veq"
    summary = "VEQ-ME importance (gamma*N_text + beta*N_vis) x output error; VEQ-MA importance matrix"
    importance = "veq-ma"

    def cost(self, ls: LayerStats, axis: int, ctx: Context) -> np.ndarray:
        t_text, t_vis = ctx.tokens.get("text", 0), ctx.tokens.get("image", 0)
        beta = t_text / t_vis if t_vis else 1.0
        n_text = ls.counts[TEXT].astype(np.float64)
        n_vis = (ls.counts[KEY] + ls.counts[RED]).astype(np.float64)
        s = gamma(ctx.options) * n_text + beta * n_vis
        return s[:, None] * ls.sensitivity[:, axis, :, S_ALL]
