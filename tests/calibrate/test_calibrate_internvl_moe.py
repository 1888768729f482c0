"""Calibration of InternVL3.5-MoE against transformers: hidden states (vision tower, pixel shuffle
and projector in embed), router choices per layer and modality, key scores against eager
attention, and the rendering (<img> + 256 <IMG_CONTEXT> per tile + </img>)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mode_edge.arch import architecture_for
from mode_edge.calibrate.runner import CalibrationOptions, calibrate
from mode_edge.formats.checkpoint import Checkpoint
from mode_edge.formats.stats import KEY, RED, TEXT, ExpertStats
from mode_edge.signals.keytokens import key_scores, newline_ids, query_positions
from testbed.tiny_internvl_moe import build_tiny_model
from tests.helpers import FAST, render_calibration


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("ivlcal") / "tiny")


@pytest.fixture(scope="module")
def hf(model_dir):
    from transformers import InternVLForConditionalGeneration

    return InternVLForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()


@pytest.fixture(scope="module")
def rendered(model_dir, calibration_data):
    return render_calibration(model_dir, calibration_data)


def _inputs(r):
    kw = {"input_ids": torch.from_numpy(r.input_ids)[None]}
    if r.pixel_values is not None:
        kw["pixel_values"] = torch.from_numpy(r.pixel_values)
    return kw


def test_rendering_marks_one_tile_per_small_image(rendered):
    cal, rs = rendered
    tok = cal.tokenizer
    ids = rs[0].input_ids
    assert rs[0].pixel_values.shape == (1, 3, 448, 448)  # 128x96 fits a tile: one tile, as mtmd
    assert int((ids == cal.image_token_id).sum()) == 256
    text = tok.decode(ids)
    assert "<img>" + "<IMG_CONTEXT>" * 256 + "</img>\n" in text and text.count("<img>") == 1


def test_streamed_hidden_states_equal_full_forward(rendered, hf):
    cal, rs = rendered
    lm = hf.model.language_model
    for r in rs[:1] + rs[-1:]:
        seen = []
        hooks = [
            layer.register_forward_pre_hook(
                lambda m, a, kw: seen.append(a[0] if a else kw["hidden_states"]), with_kwargs=True
            )
            for layer in lm.layers
        ]
        try:
            with torch.no_grad():
                hf(**_inputs(r))
        finally:
            for h in hooks:
                h.remove()
        s = cal.embed(r)
        for il in range(cal.n_layers):
            ref = seen[il][0]
            torch.testing.assert_close(s["hidden"], ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
            s["hidden"] = cal.run_layer(cal.load_layer(il), il, s)


def test_counts_equal_transformers_router_decisions(rendered, hf, model_dir, calibration_data, tmp_path):
    cal, rs = rendered
    calibrate(model_dir, calibration_data, tmp_path / "stats", CalibrationOptions(**FAST))
    st = ExpertStats.load(tmp_path / "stats")
    expected = np.zeros((cal.n_layers, 2, cal.n_experts), dtype=np.int64)
    gates = [layer.mlp.gate for layer in hf.model.language_model.layers]
    for r in rs:
        # the composite model cannot return router_logits in 5.24: its own router modules' outputs
        logged: list = []
        hooks = [g.register_forward_hook(lambda m, a, o: logged.append(o[0])) for g in gates]
        try:
            with torch.no_grad():
                hf(**_inputs(r))
        finally:
            for h in hooks:
                h.remove()
        is_img = torch.from_numpy(r.input_ids == cal.image_token_id)
        assert len(logged) == cal.n_layers
        for il, logits in enumerate(logged):
            top = torch.topk(torch.softmax(logits.float(), -1), cal.top_k, dim=-1).indices
            for mod, sel in ((0, ~is_img), (1, is_img)):
                expected[il, mod] += np.bincount(top[sel].flatten().numpy(), minlength=cal.n_experts)
    for il in range(cal.n_layers):
        c = st.layers[il]["counts"]
        np.testing.assert_array_equal(c[TEXT], expected[il, 0])
        np.testing.assert_array_equal(c[KEY] + c[RED], expected[il, 1])
        assert 0 < st.layers[il]["key_tokens"][0] < st.layers[il]["key_tokens"][1] == 4 * 256


def test_key_token_scores_equal_eager_attention(rendered, hf, model_dir):
    cal = architecture_for(Checkpoint(model_dir)).calibration(attn_implementation="eager")
    _, rs = rendered
    r = rs[0]
    with torch.no_grad():
        attentions = hf(**_inputs(r), output_attentions=True).attentions
    ids = torch.from_numpy(r.input_ids)
    image = ids == cal.image_token_id
    tok = cal.tokenizer
    newline = newline_ids(tok)
    queries = query_positions(ids, image, cal.special_ids(), newline, cal.turn_start_id())
    assert "What shape" in tok.decode(ids[queries]) and "<" not in tok.decode(ids[queries])
    s = cal.embed(r)
    assert len(attentions) == cal.n_layers
    for il in range(cal.n_layers):
        layer = cal.load_layer(il)
        attn = cal.parts(layer).attention
        seen = {}
        h = attn.register_forward_pre_hook(
            lambda m, a, kw: seen.update(io=cal.attention_inputs(a, kw)), with_kwargs=True
        )
        s["hidden"] = cal.run_layer(layer, il, s)
        h.remove()
        with torch.no_grad():
            q, k, scaling = cal.attention_qk(attn, *seen["io"])
            ours = key_scores(q, k, scaling, queries, image)
        ref = attentions[il][0][:, queries][:, :, image].mean(dim=(0, 1))
        torch.testing.assert_close(ours, ref.float(), rtol=1e-4, atol=1e-6)
