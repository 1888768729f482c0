"""Sparse upcycling (testbed/upcycle.py): with no noise the upcycled model (experts split into 4
copies, top-k x 4) computes what the original does, in transformers' own forward pass, before
and after a save/load round trip; with noise the copies differ and the function moves a little."""

from __future__ import annotations

import pytest
import torch

from testbed.tiny_qwen3_vl_moe import build_tiny_model
from testbed.upcycle import upcycle


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("up") / "tiny")


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


def test_upcycled_model_computes_the_same_function(tiny, tmp_path):
    from transformers import Qwen3VLMoeForConditionalGeneration

    def load():
        return Qwen3VLMoeForConditionalGeneration.from_pretrained(tiny, dtype=torch.float32).eval()

    ids = torch.randint(0, 400, (1, 40), generator=torch.Generator().manual_seed(0))
    ref = _logits(load(), ids)
    big = upcycle(load(), 4)
    tc = big.config.text_config
    assert (tc.num_experts, tc.num_experts_per_tok) == (32, 8)
    assert big.model.language_model.layers[0].mlp.experts.gate_up_proj.shape[0] == 32
    torch.testing.assert_close(_logits(big, ids), ref, rtol=1e-4, atol=1e-5)
    big.save_pretrained(tmp_path / "big")
    again = Qwen3VLMoeForConditionalGeneration.from_pretrained(tmp_path / "big", dtype=torch.float32).eval()
    torch.testing.assert_close(_logits(again, ids), ref, rtol=1e-4, atol=1e-5)
    noisy = upcycle(load(), 4, noise=0.01, seed=1)
    g = noisy.model.language_model.layers[0].mlp.experts.gate_up_proj
    assert not torch.equal(g[0], g[1])  # copies of one expert differ
    gap = (_logits(noisy, ids) - ref).abs().max() / (ref.max() - ref.min())
    assert 0 < gap < 0.2  # measured 0.078 on this random model (ties between copies flip)


def test_split_upcycling_computes_the_same_function_with_different_experts(tiny):
    """split: each new expert holds a quarter of the old one's units (down x 4) plus fresh units
    whose down projection is 0; the four together compute the old expert, one by one they differ."""
    from transformers import Qwen3VLMoeForConditionalGeneration

    def load():
        return Qwen3VLMoeForConditionalGeneration.from_pretrained(tiny, dtype=torch.float32).eval()

    ids = torch.randint(0, 400, (1, 40), generator=torch.Generator().manual_seed(2))
    ref = _logits(load(), ids)
    base = load().model.language_model.layers[0].mlp.experts
    big = upcycle(load(), 4, mode="split", seed=3)
    ex = big.model.language_model.layers[0].mlp.experts
    width = ex.down_proj.shape[2]
    assert ex.gate_up_proj.shape == (4 * base.gate_up_proj.shape[0], *base.gate_up_proj.shape[1:])
    assert ex.down_proj.shape[2] == base.down_proj.shape[2]  # the old width: K-quants still apply
    torch.testing.assert_close(_logits(big, ids), ref, rtol=1e-4, atol=1e-5)
    for j in range(4):  # part j of expert 0 holds its units j, j+4, ... scaled by 4
        torch.testing.assert_close(
            ex.down_proj[j, :, : width // 4].detach(), 4 * base.down_proj[0][:, j::4].detach()
        )
    assert not torch.equal(ex.gate_up_proj[0], ex.gate_up_proj[1])
    assert float(ex.down_proj[:, :, width // 4 :].detach().abs().max()) == 0.0  # fresh units: no output yet
    noisy = upcycle(load(), 4, mode="split", seed=3, router_noise=0.01)
    router = noisy.model.language_model.layers[0].mlp.gate.weight
    assert not torch.equal(router[0], router[1])
    with pytest.raises(ValueError, match="mode"):
        upcycle(load(), 4, mode="shuffle")
