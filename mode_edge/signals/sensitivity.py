"""Per-expert signals computed from cached inputs: real-type sensitivity and Hessian trace.

Sensitivity delta_M(e, q): mean squared error of expert e's output on its cached
full-precision inputs of modality M when its weights are stored as type q. The weights go
through ggml's quantizer (with the layer's importance matrix, as pack will use it) and back
through gguf-py's dequantizer: the error the runtime will see, not an RTN proxy. Reported for
all three projections quantized together and for each projection alone.

Hessian trace (MoPEQ): loss L(W) = 1/(2N) * sum_t ||f_W(x_t) - f_W0(x_t)||^2 over the
expert's routed calibration tokens. It is zero with zero gradient at W0, so its Hessian there
is exactly the Gauss-Newton matrix (1/N) J^T J, which depends on the data the router sends
to the expert (MoPEQ's "data-dependent H"). Hutchinson: tr(H) ~ mean_i v_i^T H v_i =
mean_i ||J v_i||^2 / N with Gaussian v_i; J v is computed in closed form (expert_jvps; a test
checks it against torch's forward-mode AD), which is exact and ~100x faster than autodiff.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType, dequantize

from mode_edge.quant_types import fallback
from mode_edge.quantize.ggml_lib import quantize_rows

PROJECTIONS = ("gate", "up", "down")


def expert_forward(x: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor, wd: torch.Tensor, act) -> torch.Tensor:
    return (act(x @ wg.T) * (x @ wu.T)) @ wd.T


def stored(w: torch.Tensor, t: GGMLQuantizationType, importance: np.ndarray | None) -> torch.Tensor:
    """w as the runtime will see it after storing it as type t (with fallback for its rows)."""
    t = fallback(t, w.shape[-1])
    data = quantize_rows(t, w.detach().float().numpy(), importance)
    return torch.from_numpy(np.ascontiguousarray(dequantize(data.reshape(w.shape[0], -1), t), dtype=np.float32))


def expert_sensitivity(wg, wu, wd, act, inputs: list[torch.Tensor | None], types: list[GGMLQuantizationType],
                       imp_in: np.ndarray | None, imp_mid: np.ndarray | None) -> np.ndarray:
    """[4 (all, gate, up, down), n_types, n_modalities] MSE; 0 where a modality has no tokens."""
    out = np.zeros((4, len(types), len(inputs)), dtype=np.float64)
    if all(x is None or x.shape[0] == 0 for x in inputs):
        return out
    refs = [None if x is None or x.shape[0] == 0 else expert_forward(x, wg, wu, wd, act) for x in inputs]
    for ti, t in enumerate(types):
        qg, qu, qd = stored(wg, t, imp_in), stored(wu, t, imp_in), stored(wd, t, imp_mid)
        variants = [(qg, qu, qd), (qg, wu, wd), (wg, qu, wd), (wg, wu, qd)]
        for mi, (x, ref) in enumerate(zip(inputs, refs)):
            if ref is None:
                continue
            for vi, (g, u, d) in enumerate(variants):
                out[vi, ti, mi] = float(torch.mean((expert_forward(x, g, u, d, act) - ref) ** 2))
    return out


def _act_and_slope(act, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """act(g) and act'(g) elementwise (one forward-mode pass over an elementwise function)."""
    return torch.func.jvp(act, (g,), (torch.ones_like(g),))


def expert_jvps(x, wg, wu, wd, act, vg, vu, vd) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """J v of the expert output for a direction in each projection's weights, in closed form:
    d/dWd: h vd^T; d/dWu: (act(g) * x vu^T) wd^T; d/dWg: (act'(g) * x vg^T * u) wd^T,
    with g = x wg^T, u = x wu^T, h = act(g) * u."""
    g, u = x @ wg.T, x @ wu.T
    a, da = _act_and_slope(act, g)
    return ((da * (x @ vg.T) * u) @ wd.T, (a * (x @ vu.T)) @ wd.T, (a * u) @ vd.T)


def hessian_trace(wg, wu, wd, act, x: torch.Tensor | None, probes: int, generator: torch.Generator) -> np.ndarray:
    """Hutchinson estimate of tr(H) per projection (gate, up, down); sum them for MoPEQ's score."""
    out = np.zeros(3, dtype=np.float64)
    if x is None or x.shape[0] == 0 or probes <= 0:
        return out
    n = x.shape[0]
    wg, wu, wd = (w.detach().float() for w in (wg, wu, wd))
    for _ in range(probes):
        vs = [torch.randn(w.shape, generator=generator) for w in (wg, wu, wd)]
        with torch.no_grad():
            jvs = expert_jvps(x, wg, wu, wd, act, *vs)
        out += np.array([float((jv ** 2).sum()) / n for jv in jvs])
    return out / probes


def exact_hessian_trace(wg, wu, wd, act, x: torch.Tensor) -> np.ndarray:
    """The value Hutchinson converges to (tests check the estimator against it):
    tr = (1/N) * [sum_t |x_t|^2 sum_i (act'(g) u)_ti^2 |wd_:,i|^2,
                  sum_t |x_t|^2 sum_i act(g)_ti^2 |wd_:,i|^2,  H * |act(g) * u|_F^2]."""
    with torch.no_grad():
        g, u = x @ wg.T, x @ wu.T
        a, da = _act_and_slope(act, g)
        xn, col = (x ** 2).sum(1, keepdim=True), (wd ** 2).sum(0)
        n = x.shape[0]
        return np.array([float((xn * (da * u) ** 2 * col).sum()) / n, float((xn * a ** 2 * col).sum()) / n,
                         wd.shape[0] * float(((a * u) ** 2).sum()) / n])
