"""Calibration of Llama 4 against transformers: hidden states through interleaved dense and MoE
layers (chunked and full masks), the top-1 router's choices by modality, statistics of what an
expert really reads (its input scaled by the routing weight), and key-token scores under chunked
attention against eager attention (a 16-token chunk on the transformers side, so chunks matter)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mode_edge.arch import architecture_for
from mode_edge.calibrate.runner import CalibrationOptions, calibrate
from mode_edge.formats.checkpoint import Checkpoint
from mode_edge.formats.stats import KEY, RED, TEXT, ExpertStats
from mode_edge.signals.keytokens import key_scores, newline_ids, query_positions, select_key_tokens
from testbed.tiny_llama4 import build_tiny_model
from tests.helpers import FAST, render_calibration

CHUNK = 16


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("l4cal") / "tiny")


def _lm(model_dir, **overrides):
    from transformers import Llama4Config, Llama4ForConditionalGeneration

    cfg = Llama4Config.from_pretrained(model_dir)
    for k, v in overrides.items():
        setattr(cfg.text_config, k, v)
    model = Llama4ForConditionalGeneration.from_pretrained(
        model_dir, config=cfg, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval().language_model


@pytest.fixture(scope="module")
def hf(model_dir):
    return _lm(model_dir)


@pytest.fixture(scope="module")
def rendered(model_dir, calibration_data):
    return render_calibration(model_dir, calibration_data)


@pytest.fixture(scope="module")
def stats(model_dir, calibration_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("l4stats")
    calibrate(model_dir, calibration_data, out, CalibrationOptions(**FAST))
    return ExpertStats.load(out), out


def _trace(lm, cal, r):
    """transformers' language model on calibration's first hidden state (token embeddings with
    the image features in llama.cpp's order): each layer's input, each MoE layer's input and
    router output, attention weights."""
    seen = {"in": [], "moe_in": {}, "router": {}}
    layers = lm.model.layers
    hooks = [
        layer.register_forward_pre_hook(
            lambda m, a, kw: seen["in"].append(a[0] if a else kw["hidden_states"]), with_kwargs=True
        )
        for layer in layers
    ]
    for il, layer in enumerate(layers):
        if layer.is_moe_layer:
            ff = layer.feed_forward
            hooks.append(
                ff.register_forward_pre_hook(lambda m, a, il=il: seen["moe_in"].__setitem__(il, a[0]))
            )
            hooks.append(
                ff.router.register_forward_hook(lambda m, a, o, il=il: seen["router"].__setitem__(il, o))
            )
    try:
        with torch.no_grad():
            out = lm(inputs_embeds=cal.embed(r)["hidden"][None], output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    return seen, out


def test_streamed_hidden_states_equal_full_forward(rendered, hf):
    cal, rs = rendered
    assert [cal.is_moe(il) for il in range(cal.n_layers)] == [False, True, False, True]
    assert [cal.attention_chunk(il) for il in range(cal.n_layers)] == [8192, 8192, 8192, None]
    for r in rs[:1] + rs[-1:]:  # an image sample and the text-only one
        seen, _ = _trace(hf, cal, r)
        s = cal.embed(r)
        for il in range(cal.n_layers):
            ref = seen["in"][il][0]
            torch.testing.assert_close(s["hidden"], ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
            s["hidden"] = cal.run_layer(cal.load_layer(il), il, s)


def test_counts_follow_the_router_and_experts_read_scaled_inputs(stats, rendered, hf):
    """Counts per MoE layer and modality are transformers' top-1 choices; an expert's input
    statistics are those of w * x (the sigmoid score scales the input), not of x."""
    cal, rs = rendered
    st, _ = stats
    assert st.moe_layers == [1, 3] and sorted(st.manifest["dense_tensors"]) == ["0", "2"]
    special = cal.special_ids()
    tok = cal.tokenizer
    newline = newline_ids(tok)
    expected = {il: np.zeros((3, cal.n_experts), dtype=np.int64) for il in st.moe_layers}
    scaled = {il: np.zeros((cal.n_experts, cal.hidden)) for il in st.moe_layers}
    plain = {il: np.zeros((cal.n_experts, cal.hidden)) for il in st.moe_layers}
    for r in rs:
        seen, out = _trace(hf, cal, r)
        ids = torch.from_numpy(r.input_ids)
        image = ids == cal.image_token_id
        for il in st.moe_layers:
            mod = torch.full(ids.shape, TEXT)
            if bool(image.any()):
                queries = query_positions(ids, image, special, newline, cal.turn_start_id())
                scores = out.attentions[il][0][:, queries][:, :, image].mean(dim=(0, 1))
                mod[image] = RED
                mod[torch.nonzero(image).flatten()[select_key_tokens(scores, 0.2)]] = KEY
            router_scores, logits = seen["router"][il]
            top = torch.topk(logits, 1, dim=-1).indices[:, 0]
            w = router_scores.gather(1, top[:, None])
            x = seen["moe_in"][il].reshape(-1, cal.hidden)
            for m in (TEXT, KEY, RED):
                expected[il][m] += np.bincount(top[mod == m].numpy(), minlength=cal.n_experts)
            for e in range(cal.n_experts):
                sel = top == e
                scaled[il][e] += ((w[sel] * x[sel]).double() ** 2).sum(0).numpy()
                plain[il][e] += (x[sel].double() ** 2).sum(0).numpy()
    for il in st.moe_layers:
        np.testing.assert_array_equal(st.layers[il]["counts"], expected[il], err_msg=f"layer {il}")
        got = st.layers[il]["in_sq"][:, 0].sum(0)  # plain sums, all modalities
        np.testing.assert_allclose(
            got, scaled[il], rtol=1e-4, atol=1e-6 * scaled[il].max()
        )  # stored as float32
        assert not np.allclose(got, plain[il], rtol=1e-2)


def test_key_scores_under_chunked_attention_equal_eager_attention(model_dir, rendered):
    """With a 16-token chunk (transformers only; llama.cpp's is 8192): attention_qk plus
    key_scores(chunk=16) reproduce eager attention on every layer, the chunked ones included,
    and ignoring the chunk would not."""
    lm = _lm(model_dir, attention_chunk_size=CHUNK)
    cal = architecture_for(Checkpoint(model_dir)).calibration(attn_implementation="eager")
    cal.config.text_config.attention_chunk_size = CHUNK
    _, rs = rendered
    r = next(r for r in rs if bool((r.input_ids == cal.image_token_id).any()))
    assert len(r.input_ids) > 2 * CHUNK
    ids = torch.from_numpy(r.input_ids)
    image = ids == cal.image_token_id
    tok = cal.tokenizer
    newline = newline_ids(tok)
    queries = query_positions(ids, image, cal.special_ids(), newline, cal.turn_start_id())
    _, out = _trace(lm, cal, r)
    s = cal.embed(r)
    differs = 0
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
            ours = key_scores(q, k, scaling, queries, image, cal.attention_chunk(il))
            unchunked = key_scores(q, k, scaling, queries, image)
        ref = out.attentions[il][0][:, queries][:, :, image].mean(dim=(0, 1))
        torch.testing.assert_close(ours, ref.float(), rtol=1e-4, atol=1e-6)
        if cal.attention_chunk(il) is not None:
            differs += int(not torch.allclose(unchunked, ref.float(), rtol=1e-2, atol=1e-4))
    assert differs == 3  # the three chunked layers
