"""`frequency`: MC-MoE's pre-loading mixed precision (arXiv 2410.06270), as its code does it.

cost(e, b) = phi_e^alpha * w_e^beta * eps(e, b)^alpha (Aaronhuang-778/MC-MoE, precision_solver.py:
the error is raised to alpha too), with phi the top-k count over all tokens (no modality
split) and w the summed router probability before top-k renormalisation, both as shares of
their layer total (norm_experts), alpha = 1 and beta = 1.5 (its defaults; --alpha/--beta).
eps = ||F_MoE(X) - F_MoE^(e->b)(X)||_F on the calibration set: quantizing only e changes the
block output by r_e(x) * (f_e(x) - f_e^b(x)) on the tokens routed to e (r the renormalised
weight that scales the output), so eps^2 = sum_x r_e(x)^2 ||df||^2 ~= phi * rbar^2 * hidden *
mse_all(e, b), with rbar the mean renormalised weight and mse_all the measured output MSE on a
uniform sample of e's tokens. One ILP per MoE block (its solver's scope) by default.
Not reproduced: its RTN error model (we use the runtime's real types) and its constraint that
each block keeps at least one expert at the top and middle bit widths.
"""

from __future__ import annotations

import numpy as np

from mode_edge.allocate.methods.base import Context, LayerStats, Method, normalised
from mode_edge.formats.stats import S_ALL

ALPHA, BETA = 1.0, 1.5


class Frequency(Method):
    name = "frequency"
    summary = (
        "MC-MoE: count^alpha * pre-renormalisation routing weight^beta * block-output error^alpha, per block"
    )
    per_layer = True

    def cost(self, ls: LayerStats, axis: int, ctx: Context) -> np.ndarray:
        alpha = float(ctx.options.get("alpha", ALPHA))
        beta = float(ctx.options.get("beta", BETA))
        counts = ls.counts.sum(0).astype(np.float64)
        r = ls.weight_sums.sum(0).astype(np.float64)
        rbar = np.divide(r, counts, out=np.zeros_like(r), where=counts > 0)
        eps = rbar[:, None] * np.sqrt(counts[:, None] * ctx.hidden * ls.sensitivity[:, axis, :, S_ALL])
        phi, w = normalised(counts), normalised(ls.prob_sums.sum(0))
        return (phi**alpha * w**beta)[:, None] * eps**alpha
