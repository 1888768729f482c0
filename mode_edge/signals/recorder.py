"""Accumulates one MoE layer's statistics over all calibration samples.

Modalities of routed tokens: text (every non-image token), vision_key (image tokens the
attention filter keeps), vision_red (the other, redundant image tokens); "vision" is key +
redundant. Counts are top-k selections (unweighted), summed routing weights (after the
router's renormalisation: what scales the expert's output) and summed router probabilities
before it (MC-MoE's w_e); importance sums are per input channel sum of x^2 of the tokens
routed to each expert (for gate/up) and of the expert's intermediate activation (the input of
down), plain and weighted by the routing weight (VEQ's affinity). Sensitivity is measured once
per importance matrix a method can pack with (mode_edge.signals.importance).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from mode_edge.formats.stats import KEY, SENS_MODALITIES, TEXT
from mode_edge.signals.importance import IMPORTANCES, expert_entries
from mode_edge.signals.sensitivity import (
    expert_forward,
    expert_sensitivity,
    hessian_trace,
    norm_hessian_trace,
)

NORM_PROBES = 100  # MoPEQ's Hutchinson probes for its weight-norm Hessian


class BottomK:
    """Uniform sample of at most `cap` rows from a stream: keep the rows with the smallest
    random keys. Deterministic for a seeded generator. Rows live in one buffer that grows
    to `cap` and is then overwritten in place (no re-allocation per sample: with 128 experts
    x 3 caches, per-sample concatenation fragmented the heap by gigabytes)."""

    def __init__(self, cap: int):
        self.cap = cap
        self.n = 0
        self.keys = torch.empty(0)
        self.buf: torch.Tensor | None = None

    @property
    def rows(self) -> torch.Tensor | None:
        return None if self.buf is None else self.buf[: self.n]

    def _reserve(self, n: int, width: int) -> None:
        if self.buf is None or self.buf.shape[0] < n:
            size = min(self.cap, max(n, 2 * (0 if self.buf is None else self.buf.shape[0]), 16))
            buf = torch.empty(size, width)
            keys = torch.empty(size)
            if self.buf is not None:
                buf[: self.n] = self.buf[: self.n]
                keys[: self.n] = self.keys[: self.n]
            self.buf, self.keys = buf, keys

    def add(self, rows: torch.Tensor, keys: torch.Tensor) -> None:
        m = rows.shape[0]
        if m == 0:
            return
        if self.n + m <= self.cap:
            self._reserve(self.n + m, rows.shape[1])
            self.buf[self.n : self.n + m] = rows
            self.keys[self.n : self.n + m] = keys
            self.n += m
            return
        self._reserve(self.cap, rows.shape[1])
        allk = torch.cat([self.keys[: self.n], keys])
        keep = torch.zeros(allk.numel(), dtype=torch.bool)
        keep[torch.topk(allk, self.cap, largest=False).indices] = True
        incoming = torch.nonzero(keep[self.n :]).flatten()  # new rows that stay
        free = torch.nonzero(~keep[: self.n]).flatten()  # old slots they replace
        tail = torch.arange(self.n, self.cap)  # empty slots, if any
        slots = torch.cat([free, tail])[: incoming.numel()]
        self.buf[slots] = rows[incoming]
        self.keys[slots] = keys[incoming]
        self.n = self.cap


class LayerRecorder:
    def __init__(
        self, n_experts: int, hidden: int, expert_ff: int, cap: int, seed: int, input_scaled: bool = False
    ):
        """input_scaled: the routing weight scales the expert's input, not its output (Llama 4):
        an expert sees w * x, which its statistics then describe."""
        E = n_experts
        self.E = E
        self.input_scaled = input_scaled
        self.seed = seed
        self.counts = np.zeros((3, E), dtype=np.int64)
        self.weight_sums = np.zeros((3, E), dtype=np.float64)
        self.prob_sums = np.zeros((3, E), dtype=np.float64)
        self.in_sq = np.zeros((3, 2, E, hidden), dtype=np.float64)  # [modality, plain/weighted, E, H]
        self.mid_sq = np.zeros((3, 2, E, expert_ff), dtype=np.float64)
        # token caches, one per entry of sensitivity's last axis ("all" also feeds the Hessian)
        self.caches = {(c, e): BottomK(cap) for c in SENS_MODALITIES for e in range(E)}
        self.gen = torch.Generator().manual_seed(seed)
        self.n_key_tokens = 0
        self.n_image_tokens = 0

    def add(
        self,
        x: torch.Tensor,
        idx: torch.Tensor,
        w: torch.Tensor,
        modality: torch.Tensor,
        experts_fn,
        p: torch.Tensor | None = None,
        counts_only: bool = False,
    ) -> None:
        """x [T, H] MoE input, idx/w [T, k] router choices (w as the block scales outputs), p [T, k]
        the router's probabilities of those choices before renormalisation (w if None),
        modality [T] in {0,1,2}. counts_only: add to counts, weights and probabilities only."""
        x = x.detach().float()
        w = w.detach().float()
        p = w if p is None else p.detach().float()
        self.n_key_tokens += int((modality == KEY).sum())
        self.n_image_tokens += int((modality != TEXT).sum())
        keys = torch.rand(x.shape[0], generator=self.gen)
        for e in torch.unique(idx).tolist():
            tok, slot = torch.nonzero(idx == e, as_tuple=True)
            xe, we, pe, me = x[tok], w[tok, slot], p[tok, slot], modality[tok]
            if self.input_scaled:
                xe = xe * we[:, None]
            if not counts_only:
                wg, wu, wd, act = experts_fn(e)
                with torch.no_grad():
                    mid = (act(xe @ wg.T) * (xe @ wu.T)).float()
            for mi in range(3):
                sel = me == mi
                if not bool(sel.any()):
                    continue
                self.counts[mi, e] += int(sel.sum())
                self.weight_sums[mi, e] += float(we[sel].sum())
                self.prob_sums[mi, e] += float(pe[sel].sum())
                if counts_only:
                    continue
                for arr, v in ((self.in_sq, xe[sel]), (self.mid_sq, mid[sel])):
                    sq = v.double() ** 2
                    arr[mi, 0, e] += sq.sum(0).numpy()
                    arr[mi, 1, e] += (sq * we[sel, None].double()).sum(0).numpy()
            if counts_only:
                continue
            self.caches[("text", e)].add(xe[me == TEXT], keys[tok][me == TEXT])
            self.caches[("vision_key", e)].add(xe[me == KEY], keys[tok][me == KEY])
            self.caches[("all", e)].add(xe, keys[tok])

    def importance(self, kind: str, gamma: float) -> tuple[np.ndarray, np.ndarray]:
        """[E, H] and [E, I] importance of `kind` (1.0 for unseen experts), from the float32 sums
        the statistics store: the numbers pack will hand the quantizer."""
        inp, mid = expert_entries(kind, self.in_sq, self.mid_sq, self.counts, self.weight_sums, gamma)
        return inp.importance(), mid.importance()

    def finish(
        self, experts_fn, types, probes: int, n_threads: int = 1, gamma: float = 1.0
    ) -> dict[str, np.ndarray]:
        """gamma: VEQ-MA's text weight, for the sensitivity under its importance."""
        imps = [self.importance(kind, gamma) for kind in IMPORTANCES]
        sens = np.zeros((len(IMPORTANCES), self.E, 4, len(types), len(SENS_MODALITIES)), dtype=np.float64)
        hess = np.zeros((self.E, 3), dtype=np.float64)
        norm_hess = np.zeros((self.E, 3), dtype=np.float64)

        def one(e: int) -> None:
            wg, wu, wd, act = experts_fn(e)
            with torch.no_grad():
                inputs = [self.caches[(c, e)].rows for c in SENS_MODALITIES]
                for k, (imp_in, imp_mid) in enumerate(imps):
                    sens[k, e] = expert_sensitivity(wg, wu, wd, act, inputs, types, imp_in[e], imp_mid[e])

        # ggml's quantizer drops the GIL, so experts overlap
        with ThreadPoolExecutor(max(1, n_threads)) as pool:
            list(pool.map(one, range(self.E)))
        for e in range(self.E):
            gen = torch.Generator().manual_seed(self.seed * 1013 + e)
            norm_hess[e] = [norm_hessian_trace(w, NORM_PROBES, gen) for w in experts_fn(e)[:3]]
        # forward-mode AD is not thread-safe: the Hessian probes run in this thread
        for e in range(self.E):
            wg, wu, wd, act = experts_fn(e)
            gen = torch.Generator().manual_seed(self.seed * 1009 + e)
            hess[e] = hessian_trace(wg, wu, wd, act, self.caches[("all", e)].rows, probes, gen)
        return {
            "counts": self.counts,
            "weight_sums": self.weight_sums,
            "prob_sums": self.prob_sums,
            "in_sq": self.in_sq.astype(np.float32),
            "mid_sq": self.mid_sq.astype(np.float32),
            "sensitivity": sens,
            "hessian_trace": hess,
            "hessian_norm": norm_hess,
            "key_tokens": np.array([self.n_key_tokens, self.n_image_tokens], dtype=np.int64),
        }


__all__ = ["LayerRecorder", "expert_forward"]
