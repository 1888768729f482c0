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
That is our data-dependent variant (`hessian-data`).

MoPEQ as published (its code, krishnateja95/MoE-Mixed-Prec, Hutchinson_estimate.py): the loss
is L(W) = ||W||_F of each of the expert's matrices, with no data; 100 Gaussian probes, each
normalised to unit length, v^T H v by double backward, averaged; gate + up + down summed.
For this loss H = (I - u u^T) / ||W|| with u = W / ||W||, so v^T H v = (1 - (u.v)^2) / ||W||
exactly, and for a unit Gaussian v, (u.v)^2 is distributed as z^2 / (z^2 + c) with z ~ N(0, 1)
and c ~ chi^2(n - 1): `norm_hessian_trace` draws the same estimator without forming the
n-dimensional probes (a test checks it against torch's double backward).
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType, dequantize

from mode_edge.formats.quant_types import fallback
from mode_edge.quantize import quantize_rows

PROJECTIONS = ("gate", "up", "down")


def expert_forward(
    x: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor, wd: torch.Tensor, act
) -> torch.Tensor:
    return (act(x @ wg.T) * (x @ wu.T)) @ wd.T


def stored(w: torch.Tensor, t: GGMLQuantizationType, importance: np.ndarray | None) -> torch.Tensor:
    """w as the runtime will see it after storing it as type t (with fallback for its rows)."""
    t = fallback(t, w.shape[-1])
    data = quantize_rows(t, w.detach().float().numpy(), importance)
    return torch.from_numpy(
        np.ascontiguousarray(dequantize(data.reshape(w.shape[0], -1), t), dtype=np.float32)
    )


def expert_sensitivity(
    wg,
    wu,
    wd,
    act,
    inputs: list[torch.Tensor | None],
    types: list[GGMLQuantizationType],
    imp_in: np.ndarray | None,
    imp_mid: np.ndarray | None,
) -> np.ndarray:
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


def hessian_trace(
    wg, wu, wd, act, x: torch.Tensor | None, probes: int, generator: torch.Generator
) -> np.ndarray:
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
        out += np.array([float((jv**2).sum()) / n for jv in jvs])
    return out / probes


def exact_hessian_trace(wg, wu, wd, act, x: torch.Tensor) -> np.ndarray:
    """The value Hutchinson converges to (tests check the estimator against it):
    tr = (1/N) * [sum_t |x_t|^2 sum_i (act'(g) u)_ti^2 |wd_:,i|^2,
                  sum_t |x_t|^2 sum_i act(g)_ti^2 |wd_:,i|^2,  H * |act(g) * u|_F^2]."""
    with torch.no_grad():
        g, u = x @ wg.T, x @ wu.T
        a, da = _act_and_slope(act, g)
        xn, col = (x**2).sum(1, keepdim=True), (wd**2).sum(0)
        n = x.shape[0]
        return np.array(
            [
                float((xn * (da * u) ** 2 * col).sum()) / n,
                float((xn * a**2 * col).sum()) / n,
                wd.shape[0] * float(((a * u) ** 2).sum()) / n,
            ]
        )


def norm_hessian_trace(w: torch.Tensor, probes: int, generator: torch.Generator) -> float:
    """MoPEQ's published score of one matrix: mean over `probes` unit Gaussian probes of
    v^T H v, H the Hessian of ||W||_F (expectation (1 - 1/n) / ||W||_F)."""
    w = w.detach().double()
    n, norm = w.numel(), float(torch.linalg.vector_norm(w))
    if probes <= 0 or norm == 0.0:
        return 0.0
    if n < 3:
        return (1.0 - 1.0 / n) / norm
    z2 = torch.randn(probes, generator=generator, dtype=torch.float64) ** 2
    rest = 2.0 * _gamma_draw((n - 1) / 2.0, probes, generator)  # chi^2(n - 1)
    dot2 = z2 / (z2 + rest)
    return float(((1.0 - dot2) / norm).mean())


def _gamma_draw(shape: float, k: int, generator: torch.Generator) -> torch.Tensor:
    """k draws of Gamma(shape, 1) from `generator` (Marsaglia-Tsang; shape >= 1)."""
    d = shape - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    out = []
    while len(out) < k:
        x = torch.randn(4 * k, generator=generator, dtype=torch.float64)
        u = torch.rand(4 * k, generator=generator, dtype=torch.float64)
        v = (1.0 + c * x) ** 3
        ok = (v > 0) & (
            torch.log(u.clamp_min(1e-300)) < 0.5 * x**2 + d - d * v + d * torch.log(v.clamp_min(1e-300))
        )
        out.extend((d * v[ok]).tolist())
    return torch.tensor(out[:k], dtype=torch.float64)
