"""`frequency`: MC-MoE's pre-loading mixed precision (arXiv 2410.06270).

cost(e, b) = phi_e^alpha * w_e^beta * eps(e, b): phi = pooled top-k count over all tokens (no
modality split), w = summed routing weight, eps = ||F_MoE(X) - F_MoE^(e->b)(X)||_F on the
calibration set. Quantizing only e changes the block output by w_e(x) * (f_e(x) - f_e^b(x))
on the tokens routed to e, so eps^2 = sum_x w_e(x)^2 ||df||^2 ~= phi * wbar^2 * hidden * mse_all(e, b),
with wbar = w/phi the mean routing weight and mse_all the measured output MSE on a uniform
sample of all of e's tokens.
"""

from __future__ import annotations

import numpy as np

from mode_edge.allocate.methods.base import S_ALL, Context, LayerStats, Method


class Frequency(Method):
    name = "frequency"
    summary = "MC-MoE: pooled count^alpha * routing weight^beta * block-output error"

    def __init__(self, alpha: float = 1.0, beta: float = 1.5):
        self.alpha, self.beta = alpha, beta

    def cost(self, ls: LayerStats, axis: int, ctx: Context) -> np.ndarray:
        phi = ls.counts.sum(0).astype(np.float64)
        w = ls.weight_sums.sum(0).astype(np.float64)
        wbar = np.divide(w, phi, out=np.zeros_like(w), where=phi > 0)
        eps = wbar[:, None] * np.sqrt(phi[:, None] * ctx.hidden * ls.sensitivity[:, axis, :, S_ALL])
        return (phi ** self.alpha * w ** self.beta)[:, None] * eps
