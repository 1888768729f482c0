"""Sparse upcycling of a trained Qwen3-VL-MoE: every expert becomes `factor` experts, the
router's row copied for each, top-k multiplied by `factor` (issue: a testbed at the geometry of
real MoE-VLMs, 64+ experts routed top-8, from the 16-expert top-2 demo model).

Two ways to make the new experts:
- copy: each is a full copy of the old expert; only `noise` tells them apart.
- split (fine-grained, as DeepSeekMoE splits experts): new expert j holds the old expert's
  units j, j+factor, ... (a 1/factor share, its down projection x factor) and fills the rest of its
  width with fresh units whose down projection is 0. The new experts compute different parts of
  the old one from the start, so their gradients differ and they diverge without any noise;
  the fresh units give each the old width (K-quants need multiples of 256) and room to learn.

Why it starts as the same function: with copies of equal logits, the softmax gives each copy
p_e / factor, the top-(k*factor) picks the factor copies of each of the old top-k, and Qwen3-VL-
MoE's renormalisation gives each copy w_e / factor, so the copies' outputs sum to the old
expert's. `noise` (relative to each tensor's std) breaks the tie so training can make the copies
diverge; with noise 0 the upcycled model computes what the original does (tests/testbed).
"""

from __future__ import annotations


def upcycle(
    model, factor: int, noise: float = 0.0, seed: int = 0, mode: str = "copy", router_noise: float = 0.0
):
    """In place on a Qwen3VLMoeForConditionalGeneration; returns it. router_noise: like noise,
    for the router rows only (split: breaks the ties between an old expert's parts)."""
    import torch

    tc = model.config.text_config
    if factor < 1:
        raise ValueError("factor must be at least 1")
    if mode not in ("copy", "split"):
        raise ValueError(f"mode must be copy or split, not {mode!r}")
    if mode == "split" and tc.moe_intermediate_size % factor:
        raise ValueError(f"split: expert width {tc.moe_intermediate_size} is not a multiple of {factor}")
    gen = torch.Generator().manual_seed(seed)

    def split(gate_up: torch.Tensor, down: torch.Tensor):
        E, two_i, H = gate_up.shape
        width = two_i // 2
        part = width // factor
        gu = torch.randn((E * factor, two_i, H), generator=gen) * float(gate_up.std())
        dn = torch.zeros((E * factor, H, width))
        for e in range(E):
            for j in range(factor):
                units = torch.arange(j, width, factor)  # interleaved: every part sees the whole range
                n = e * factor + j
                gu[n, :part] = gate_up[e, units]
                gu[n, width : width + part] = gate_up[e, width + units]
                dn[n, :, :part] = factor * down[e][:, units]
        return torch.nn.Parameter(gu), torch.nn.Parameter(dn)

    def grow(t: torch.Tensor) -> torch.Tensor:  # [E, ...] -> [E * factor, ...], copies adjacent
        return torch.nn.Parameter(_noisy(t.detach().repeat_interleave(factor, dim=0).clone(), noise, t))

    def _noisy(out: torch.Tensor, amount: float, like: torch.Tensor) -> torch.Tensor:
        if amount:
            out += amount * float(like.std()) * torch.randn(out.shape, generator=gen, dtype=out.dtype)
        return out

    with torch.no_grad():
        for layer in model.model.language_model.layers:
            moe = layer.mlp
            ex = moe.experts
            if mode == "copy":
                ex.gate_up_proj, ex.down_proj = grow(ex.gate_up_proj), grow(ex.down_proj)
            else:
                ex.gate_up_proj, ex.down_proj = split(ex.gate_up_proj.detach(), ex.down_proj.detach())
            w = moe.gate.weight.detach()
            moe.gate.weight = torch.nn.Parameter(
                _noisy(w.repeat_interleave(factor, dim=0).clone(), noise + router_noise, w)
            )
            for m in (moe, moe.experts, moe.gate):
                for attr in ("num_experts", "top_k"):
                    if hasattr(m, attr):
                        setattr(m, attr, getattr(m, attr) * factor)
    tc.num_experts *= factor
    tc.num_experts_per_tok *= factor
    return model
