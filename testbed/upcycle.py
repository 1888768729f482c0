"""Sparse upcycling of a trained Qwen3-VL-MoE: every expert split into `factor` copies, the
router's row copied for each, top-k multiplied by `factor` (issue: a testbed at the geometry of
real MoE-VLMs, 64+ experts routed top-8, from the 16-expert top-2 demo model).

Why it starts as the same function: with copies of equal logits, the softmax gives each copy
p_e / factor, the top-(k*factor) picks the factor copies of each of the old top-k, and Qwen3-VL-
MoE's renormalisation gives each copy w_e / factor, so the copies' outputs sum to the old
expert's. `noise` (relative to each tensor's std) breaks the tie so training can make the copies
diverge; with noise 0 the upcycled model computes what the original does (tests/testbed).
"""

from __future__ import annotations


def upcycle(model, factor: int, noise: float = 0.0, seed: int = 0):
    """In place on a Qwen3VLMoeForConditionalGeneration; returns it."""
    import torch

    tc = model.config.text_config
    if factor < 1:
        raise ValueError("factor must be at least 1")
    gen = torch.Generator().manual_seed(seed)

    def grow(t: torch.Tensor) -> torch.Tensor:  # [E, ...] -> [E * factor, ...], copies adjacent
        out = t.detach().repeat_interleave(factor, dim=0).clone()
        if noise:
            out += noise * float(t.std()) * torch.randn(out.shape, generator=gen, dtype=out.dtype)
        return torch.nn.Parameter(out)

    with torch.no_grad():
        for layer in model.model.language_model.layers:
            moe = layer.mlp
            moe.experts.gate_up_proj = grow(moe.experts.gate_up_proj)
            moe.experts.down_proj = grow(moe.experts.down_proj)
            moe.gate.weight = grow(moe.gate.weight)
            for m in (moe, moe.experts, moe.gate):
                for attr in ("num_experts", "top_k"):
                    if hasattr(m, attr):
                        setattr(m, attr, getattr(m, attr) * factor)
    tc.num_experts *= factor
    tc.num_experts_per_tok *= factor
    return model
