"""Calibration of Qwen3.5-MoE against transformers: hidden states through hybrid layers, router
choices, key tokens (eager softmax attention on the full-attention layers; the linear layers
take the nearest full-attention layer's selection), shared-expert and ssm_out statistics, and
resume across the look-ahead."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mode_edge.arch import architecture_for
from mode_edge.arch.qwen3_5_moe import v_head_order
from mode_edge.calibrate.runner import CalibrationOptions, calibrate
from mode_edge.formats.checkpoint import Checkpoint
from mode_edge.formats.stats import KEY, RED, TEXT, ExpertStats
from mode_edge.signals.keytokens import key_scores, newline_ids, query_positions, select_key_tokens
from testbed.tiny_qwen3_5_moe import build_tiny_model
from tests.helpers import FAST, hf_inputs, render_calibration


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("q35cal") / "tiny", layout="fused")


@pytest.fixture(scope="module")
def hf(model_dir):
    from transformers import Qwen3_5MoeForConditionalGeneration

    return Qwen3_5MoeForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()


@pytest.fixture(scope="module")
def rendered(model_dir, calibration_data):
    return render_calibration(model_dir, calibration_data)


@pytest.fixture(scope="module")
def stats(model_dir, calibration_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("q35stats")
    calibrate(model_dir, calibration_data, out, CalibrationOptions(**FAST))
    return ExpertStats.load(out), out


def _attentions(out, cal) -> dict:
    """transformers lists attention weights for the full-attention layers only: by layer."""
    full = [il for il in range(cal.n_layers) if cal.softmax_attention(il)]
    assert len(out.attentions) == len(full)
    return dict(zip(full, out.attentions))


def _layer_trace(hf, r, cal):
    """transformers' full forward: each decoder layer's input, router logits, attention
    weights of the full-attention layers, and ssm_out's input."""
    lm = hf.model.language_model
    seen = {"in": [], "o_in": {}}
    hooks = [
        layer.register_forward_pre_hook(
            lambda m, a, kw: seen["in"].append(a[0] if a else kw["hidden_states"]), with_kwargs=True
        )
        for layer in lm.layers
    ]
    for il, layer in enumerate(lm.layers):
        if layer.block_type == "linear_attention":
            hooks.append(
                layer.linear_attn.out_proj.register_forward_pre_hook(
                    lambda m, a, il=il: seen["o_in"].__setitem__(il, a[0][0])
                )
            )
    try:
        with torch.no_grad():
            out = hf(**hf_inputs(r, cal.image_token_id), output_router_logits=True, output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    return seen, out


def test_streamed_hidden_states_equal_full_forward(rendered, hf):
    cal, rs = rendered
    for r in rs[:1] + rs[-1:]:  # an image sample and the text-only one
        seen, _ = _layer_trace(hf, r, cal)
        s = cal.embed(r)
        for il in range(cal.n_layers):
            ref = seen["in"][il][0]
            torch.testing.assert_close(s["hidden"], ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
            s["hidden"] = cal.run_layer(cal.load_layer(il), il, s)


def test_counts_and_key_tokens_follow_transformers(stats, rendered, hf, model_dir):
    """Per layer and modality, counts equal transformers' router choices; the key image tokens
    are those eager softmax attention selects at full-attention layer 1 for layers 0 (look-ahead),
    1 and 2 (the nearest before it), and at layer 3 for layer 3."""
    cal, rs = rendered
    st, _ = stats
    conv = architecture_for(Checkpoint(model_dir))
    assert [cal.softmax_attention(il) for il in range(cal.n_layers)] == [False, True, False, True]
    source = {0: 1, 1: 1, 2: 1, 3: 3}  # which layer's attention picks each layer's key tokens
    special = cal.special_ids()
    tok = cal.tokenizer
    newline = newline_ids(tok)
    expected = np.zeros((cal.n_layers, 3, cal.n_experts), dtype=np.int64)
    for r in rs:
        seen, out = _layer_trace(hf, r, cal)
        ids = torch.from_numpy(r.input_ids)
        image = ids == cal.image_token_id
        mod = {il: torch.full(ids.shape, TEXT) for il in range(cal.n_layers)}
        if bool(image.any()):
            queries = query_positions(ids, image, special, newline, cal.turn_start_id())
            for il, src in source.items():
                att = _attentions(out, cal)[src][0]  # [heads, T, T], eager softmax
                scores = att[:, queries][:, :, image].mean(dim=(0, 1))
                m = mod[il]
                m[image] = RED
                m[torch.nonzero(image).flatten()[select_key_tokens(scores, 0.2)]] = KEY
        for il, logits in enumerate(out.router_logits):
            top = torch.topk(torch.softmax(logits.float(), -1), cal.top_k, dim=-1).indices
            for m in (TEXT, KEY, RED):
                sel = mod[il] == m
                expected[il, m] += np.bincount(top[sel].flatten().numpy(), minlength=cal.n_experts)
    for il in range(cal.n_layers):
        np.testing.assert_array_equal(st.layers[il]["counts"], expected[il], err_msg=f"layer {il}")
    assert conv.layer_types == ["linear_attention", "full_attention", "linear_attention", "full_attention"]


def test_key_scores_equal_eager_attention_on_full_layers(rendered, hf, model_dir):
    """attention_qk (query = first half of each head's q_proj rows, partial M-RoPE) reproduces
    eager attention's weights on the full-attention layers."""
    cal_eager = architecture_for(Checkpoint(model_dir)).calibration(attn_implementation="eager")
    _, rs = rendered
    r = rs[0]
    _, out = _layer_trace(hf, r, cal_eager)
    ids = torch.from_numpy(r.input_ids)
    image = ids == cal_eager.image_token_id
    tok = cal_eager.tokenizer
    newline = newline_ids(tok)
    queries = query_positions(ids, image, cal_eager.special_ids(), newline, cal_eager.turn_start_id())
    s = cal_eager.embed(r)
    checked = 0
    for il in range(cal_eager.n_layers):
        layer = cal_eager.load_layer(il)
        attn = cal_eager.parts(layer).attention
        seen = {}
        h = attn.register_forward_pre_hook(
            lambda m, a, kw: seen.update(io=cal_eager.attention_inputs(a, kw)), with_kwargs=True
        )
        s["hidden"] = cal_eager.run_layer(layer, il, s)
        h.remove()
        if not cal_eager.softmax_attention(il):
            assert seen["io"][1] is None  # Gated DeltaNet gets no position embeddings
            continue
        with torch.no_grad():
            q, k, scaling = cal_eager.attention_qk(attn, *seen["io"])
            ours = key_scores(q, k, scaling, queries, image)
        ref = _attentions(out, cal_eager)[il][0][:, queries][:, :, image].mean(dim=(0, 1))
        torch.testing.assert_close(ours, ref.float(), rtol=1e-4, atol=1e-6)
        checked += 1
    assert checked == 2


def test_shared_expert_and_ssm_out_statistics(stats, rendered, hf):
    cal, rs = rendered
    st, out = stats
    types = st.manifest["types"]
    order = [types.index(t) for t in ("Q2_K", "Q3_K", "Q4_K", "Q6_K")]
    assert st.manifest["shared_tensors"]["0"] == [
        ["blk.0.ffn_gate_shexp.weight", "shexp_in"],
        ["blk.0.ffn_up_shexp.weight", "shexp_in"],
        ["blk.0.ffn_down_shexp.weight", "shexp_mid"],
    ]
    assert [n for n, _ in st.manifest["attn_tensors"]["0"]] == [
        f"blk.0.{n}.weight" for n in ("attn_qkv", "attn_gate", "ssm_beta", "ssm_alpha", "ssm_out")
    ]
    for il, d in st.layers.items():
        assert d["shexp_tokens"].sum() == st.manifest["tokens"]["total"]  # every token: frequency 1
        for m in range(3):
            for cache in range(3):
                assert np.all(np.diff(d["shexp_sensitivity"][m, order, cache]) < 0), (il, m, cache)
    # ssm_out's input statistics in the GGUF's column order (V heads regrouped), from transformers
    conv = cal.conv
    perm = v_head_order(conv.n_k_heads, conv.n_v_heads, conv.v_dim)
    want = sum((_layer_trace(hf, r, cal)[0]["o_in"][0].double() ** 2).sum(0) for r in rs)
    got = st.layers[0]["o_in_sq"].sum(0)
    np.testing.assert_allclose(got, want.numpy()[perm], rtol=1e-4)
    assert not np.allclose(got, want.numpy(), rtol=1e-2)  # the order matters
    # and the imatrix pack reads has entries for them
    from mode_edge.formats.imatrix import Imatrix

    im = Imatrix.load(out / "imatrix.gguf")
    assert "blk.0.ffn_down_shexp.weight" in im.entries and "blk.0.ssm_out.weight" in im.entries


@pytest.mark.parametrize("stop", [0, 1])  # inside the look-ahead's span, and after a full layer
def test_resume_gives_identical_stats(model_dir, calibration_data, stats, tmp_path, stop):
    _, full = stats
    out = tmp_path / "resumed"
    calibrate(model_dir, calibration_data, out, CalibrationOptions(**FAST), stop_after_layer=stop)
    assert (out / ".partial" / "key_tokens.pt").is_file() == (stop >= 1)
    calibrate(model_dir, calibration_data, out, CalibrationOptions(**FAST))
    assert (out / "expert_stats.safetensors").read_bytes() == (full / "expert_stats.safetensors").read_bytes()
    assert json.loads((out / "manifest.json").read_text()) == json.loads((full / "manifest.json").read_text())
