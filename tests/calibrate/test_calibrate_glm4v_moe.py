"""Calibration of GLM-4.5V against transformers: hidden states through the dense and MoE
layers, the sigmoid router's real choices (score-correction bias, grouped top-k) by modality,
key tokens from eager attention, and the dense layer's and shared expert's statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mode_edge.calibrate.runner import CalibrationOptions, calibrate
from mode_edge.formats.stats import KEY, RED, TEXT, ExpertStats
from mode_edge.signals.keytokens import newline_ids, query_positions, select_key_tokens
from testbed.tiny_glm4v_moe import build_tiny_model
from tests.helpers import FAST, hf_inputs, render_calibration


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("glmcal") / "tiny")


@pytest.fixture(scope="module")
def hf(model_dir):
    from transformers import Glm4vMoeForConditionalGeneration

    return Glm4vMoeForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()


@pytest.fixture(scope="module")
def rendered(model_dir, calibration_data):
    return render_calibration(model_dir, calibration_data)


@pytest.fixture(scope="module")
def stats(model_dir, calibration_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("glmstats")
    calibrate(model_dir, calibration_data, out, CalibrationOptions(**FAST))
    return ExpertStats.load(out), out


def _trace(hf, r, image_token_id):
    """transformers' full forward: each layer's input, each router's (logits, weights, ids)."""
    lm = hf.model.language_model
    seen = {"in": [], "router": {}}
    hooks = [
        layer.register_forward_pre_hook(
            lambda m, a, kw: seen["in"].append(a[0] if a else kw["hidden_states"]), with_kwargs=True
        )
        for layer in lm.layers
    ]
    for il, layer in enumerate(lm.layers):
        if hasattr(layer.mlp, "gate"):
            hooks.append(
                layer.mlp.gate.register_forward_hook(lambda m, a, o, il=il: seen["router"].__setitem__(il, o))
            )
    try:
        with torch.no_grad():
            out = hf(**hf_inputs(r, image_token_id), output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    return seen, out


def test_streamed_hidden_states_equal_full_forward(rendered, hf):
    cal, rs = rendered
    assert [cal.is_moe(il) for il in range(cal.n_layers)] == [False, True, True]
    for r in rs[:1] + rs[-1:]:  # an image sample and the text-only one
        seen, _ = _trace(hf, r, cal.image_token_id)
        s = cal.embed(r)
        for il in range(cal.n_layers):
            ref = seen["in"][il][0]
            torch.testing.assert_close(s["hidden"], ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
            s["hidden"] = cal.run_layer(cal.load_layer(il), il, s)


def test_counts_follow_the_biased_grouped_router(stats, rendered, hf):
    """Per MoE layer and modality, counts equal transformers' router choices (sigmoid + bias,
    the best group only); a plain sigmoid top-k over all experts would count differently."""
    cal, rs = rendered
    st, _ = stats
    assert st.moe_layers == [1, 2]
    special = cal.special_ids()
    tok = cal.tokenizer
    newline = newline_ids(tok)
    expected = {il: np.zeros((3, cal.n_experts), dtype=np.int64) for il in st.moe_layers}
    naive = {il: np.zeros((3, cal.n_experts), dtype=np.int64) for il in st.moe_layers}
    for r in rs:
        seen, out = _trace(hf, r, cal.image_token_id)
        ids = torch.from_numpy(r.input_ids)
        image = ids == cal.image_token_id
        for il in st.moe_layers:
            mod = torch.full(ids.shape, TEXT)
            if bool(image.any()):
                queries = query_positions(ids, image, special, newline, cal.turn_start_id())
                scores = out.attentions[il][0][:, queries][:, :, image].mean(dim=(0, 1))
                mod[image] = RED
                mod[torch.nonzero(image).flatten()[select_key_tokens(scores, 0.2)]] = KEY
            logits, _, top = seen["router"][il]
            plain = torch.topk(torch.sigmoid(logits), cal.top_k, dim=-1).indices
            for m in (TEXT, KEY, RED):
                sel = mod == m
                expected[il][m] += np.bincount(top[sel].flatten().numpy(), minlength=cal.n_experts)
                naive[il][m] += np.bincount(plain[sel].flatten().numpy(), minlength=cal.n_experts)
    for il in st.moe_layers:
        np.testing.assert_array_equal(st.layers[il]["counts"], expected[il], err_msg=f"layer {il}")
    assert any((st.layers[il]["counts"] != naive[il]).any() for il in st.moe_layers)
    # the recorded weights are the block's (renormalised, times routed_scaling_factor 1.5)
    total = sum(st.layers[1]["weight_sums"][m].sum() for m in range(3))
    assert total == pytest.approx(1.5 * st.layers[1]["counts"].sum() / cal.top_k, rel=1e-5)


def test_dense_layer_and_shared_expert_statistics(stats):
    st, out = stats
    types = st.manifest["types"]
    order = [types.index(t) for t in ("Q2_K", "Q3_K", "Q4_K", "Q6_K")]
    assert st.manifest["dense_tensors"] == {
        "0": [
            ["blk.0.ffn_gate.weight", "dense_in"],
            ["blk.0.ffn_up.weight", "dense_in"],
            ["blk.0.ffn_down.weight", "dense_mid"],
        ]
    }
    assert sorted(st.manifest["shared_tensors"]) == ["1", "2"]
    assert sorted(st.manifest["gguf_names"]) == ["1", "2"]
    assert "counts" not in st.layers[0]
    n = st.manifest["tokens"]["total"]
    assert st.layers[0]["dense_tokens"].sum() == n  # every token passes the dense FFN
    for il, key in ((0, "dense_sensitivity"), (1, "shexp_sensitivity"), (2, "shexp_sensitivity")):
        sens = st.layers[il][key]
        for i in range(3):
            for m in range(3):
                assert np.all(np.diff(sens[i, order, m]) < 0), (il, key, i, m)
    from mode_edge.formats.imatrix import Imatrix

    im = Imatrix.load(out / "imatrix.gguf")
    assert {"blk.0.ffn_down.weight", "blk.1.ffn_down_shexp.weight", "blk.1.ffn_gate_exps.weight"} <= set(
        im.entries
    )


@pytest.mark.parametrize("edit", ["no_moe_layers", "dense_arrays_missing"])
def test_edited_statistics_are_refused(stats, tmp_path, edit):
    import json
    import shutil

    from safetensors.numpy import load_file, save_file

    from mode_edge.errors import UserError

    _, out = stats
    d = tmp_path / "s"
    shutil.copytree(out, d)
    if edit == "no_moe_layers":
        m = json.loads((d / "manifest.json").read_text())
        m["moe_layers"], m["gguf_names"] = [], {}
        (d / "manifest.json").write_text(json.dumps(m))
    else:
        arrays = load_file(str(d / "expert_stats.safetensors"))
        arrays.pop("layer.0.dense_sensitivity")
        save_file(arrays, str(d / "expert_stats.safetensors"))
    with pytest.raises(UserError, match="does not match the arrays"):
        ExpertStats.load(d)
