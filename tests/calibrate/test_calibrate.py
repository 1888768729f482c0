"""Calibration against transformers' own forward pass: hidden states, router choices, attention."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from mode_edge.arch import architecture_for
from mode_edge.calibrate.runner import CalibrationOptions, calibrate
from mode_edge.formats.checkpoint import Checkpoint
from mode_edge.formats.stats import KEY, RED, TEXT, ExpertStats
from mode_edge.signals.keytokens import key_scores, newline_ids, query_positions
from tests.helpers import FAST, hf_inputs, make_data


@pytest.fixture(scope="module")
def data_dir(calibration_data):
    return calibration_data


@pytest.fixture(scope="module")
def model_dir(tiny_models):
    return tiny_models["transformers"]


@pytest.fixture(scope="module")
def stats(tiny_stats_dir):
    return ExpertStats.load(tiny_stats_dir), tiny_stats_dir


def test_streamed_hidden_states_equal_full_forward(rendered, hf_models):
    """Same modules, same order: differences can only come from batch-shape-dependent
    kernels, so we allow 1e-5 of the activations' scale."""
    cal, rs = rendered
    model = hf_models("transformers")
    lm = model.model.language_model
    for r in rs[:2] + rs[-1:]:  # two image samples and the text-only one
        seen = []
        hooks = [
            layer.register_forward_pre_hook(
                lambda m, a, kw: seen.append(a[0] if a else kw["hidden_states"]), with_kwargs=True
            )
            for layer in lm.layers
        ]
        hooks.append(lm.norm.register_forward_pre_hook(lambda m, a: seen.append(a[0])))
        try:
            with torch.no_grad():
                model(**hf_inputs(r, cal.image_token_id))
        finally:
            for h in hooks:
                h.remove()
        s = cal.embed(r)
        torch.testing.assert_close(s["hidden"], seen[0][0], rtol=0, atol=1e-5 * float(seen[0].abs().max()))
        for il in range(cal.n_layers):
            s["hidden"] = cal.run_layer(cal.load_layer(il), il, s)
            ref = seen[il + 1][0]
            torch.testing.assert_close(s["hidden"], ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


def test_counts_equal_transformers_router_decisions(stats, rendered, hf_models):
    cal, rs = rendered
    st, _ = stats
    model = hf_models("transformers")
    expected = np.zeros((cal.n_layers, 2, cal.n_experts), dtype=np.int64)  # text, vision
    for r in rs:
        with torch.no_grad():
            out = model(**hf_inputs(r, cal.image_token_id), output_router_logits=True)
        is_img = torch.from_numpy(r.input_ids == cal.image_token_id)
        for il, logits in enumerate(out.router_logits):
            top = torch.topk(torch.softmax(logits.float(), -1), cal.top_k, dim=-1).indices
            for mod, sel in ((0, ~is_img), (1, is_img)):
                expected[il, mod] += np.bincount(top[sel].flatten().numpy(), minlength=cal.n_experts)
    for il in range(cal.n_layers):
        c = st.layers[il]["counts"]
        np.testing.assert_array_equal(c[TEXT], expected[il, 0])
        np.testing.assert_array_equal(c[KEY] + c[RED], expected[il, 1])


def test_counts_sum_to_tokens_times_top_k(stats):
    st, _ = stats
    m = st.manifest
    for d in st.layers.values():
        c = d["counts"]
        assert c.sum() == m["tokens"]["total"] * m["top_k"]
        assert c[TEXT].sum() == m["tokens"]["text"] * m["top_k"]
        n_key, n_img = d["key_tokens"]
        assert n_img == m["tokens"]["image"]
        assert c[KEY].sum() == n_key * m["top_k"]
        assert 0 < n_key < n_img


def test_key_token_scores_equal_eager_attention(model_dir, rendered):
    from transformers import Qwen3VLMoeForConditionalGeneration

    cal_eager = architecture_for(Checkpoint(model_dir)).calibration(attn_implementation="eager")
    _, rs = rendered
    model = Qwen3VLMoeForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    special = cal_eager.special_ids()
    tok = cal_eager.tokenizer
    newline = newline_ids(tok)
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    r = rs[0]
    with torch.no_grad():
        attentions = model(**hf_inputs(r, cal_eager.image_token_id), output_attentions=True).attentions
    ids = torch.from_numpy(r.input_ids)
    image_mask = ids == cal_eager.image_token_id
    queries = query_positions(ids, image_mask, special, newline, im_start)
    decoded = tok.decode(ids[queries])
    assert "What shape" in decoded and "assistant" not in decoded and "<|" not in decoded
    s = cal_eager.embed(r)
    for il in range(cal_eager.n_layers):
        layer = cal_eager.load_layer(il)
        attn = cal_eager.parts(layer)[0]
        seen = {}
        h = attn.register_forward_pre_hook(
            lambda m, a, kw: seen.update(x=kw["hidden_states"], pe=kw["position_embeddings"]),
            with_kwargs=True,
        )
        s["hidden"] = cal_eager.run_layer(layer, il, s)
        h.remove()
        with torch.no_grad():
            q, k, scaling = cal_eager.attention_qk(attn, seen["x"], seen["pe"])
            ours = key_scores(q, k, scaling, queries, image_mask)
        ref = attentions[il][0][:, queries][:, :, image_mask].mean(dim=(0, 1))
        torch.testing.assert_close(ours, ref.float(), rtol=1e-4, atol=1e-6)


def test_vision_dominates_pooled_counts_not_mode_frequencies(model_dir, tmp_path):
    data = make_data(tmp_path / "big", n_images=2, size=(640, 640), text_only=0)
    out = tmp_path / "stats"
    calibrate(model_dir, data, out, CalibrationOptions(types=["Q4_K"], probes=0))
    st = ExpertStats.load(out)
    m = st.manifest
    assert m["tokens"]["image"] >= 10 * m["tokens"]["text"]
    for d in st.layers.values():
        c = d["counts"].astype(float)
        text, vision = c[TEXT], c[KEY] + c[RED]
        assert vision.sum() / (text.sum() + vision.sum()) >= 0.9  # pooled: vision drowns text
        f_t, f_v = text / text.sum(), c[KEY] / c[KEY].sum()  # MODE: each modality sums to 1
        assert f_t.sum() / (f_t.sum() + f_v.sum()) == pytest.approx(0.5)


def test_sensitivity_monotone_in_bits(stats):
    st, _ = stats
    types = st.manifest["types"]
    order = [types.index(t) for t in ("Q2_K", "Q3_K", "Q4_K", "Q6_K")]
    rng = np.random.default_rng(0)
    for il, d in st.layers.items():
        c = d["counts"]
        seen = np.nonzero(c[TEXT] > 0)[0]
        e = int(rng.choice(seen))
        for k in range(len(st.manifest["importances"])):  # under each importance matrix
            for axis in range(4):  # all projections together, and each alone
                for cache in (0, 2):  # text tokens, and a sample of all the expert's tokens
                    delta = d["sensitivity"][k, e, axis, order, cache]
                    assert np.all(np.diff(delta) < 0), (il, k, e, axis, cache, delta)
        unseen = np.nonzero(c[KEY] == 0)[0]
        for e in unseen:
            assert np.all(d["sensitivity"][:, e, :, :, 1] == 0)  # no key-vision tokens -> delta 0
        assert np.all(d["hessian_trace"][c.sum(0) > 0] > 0)


@pytest.mark.parametrize("offload", ["memory", "disk"])
def test_resume_after_interruption_gives_identical_stats(model_dir, data_dir, stats, tmp_path, offload):
    """Stop after layer 0, rerun: the same bytes as one uninterrupted (in-memory) run; with
    activations on disk too, which also shows offloading changes nothing."""
    _, full = stats
    out = tmp_path / "resumed"
    calibrate(model_dir, data_dir, out, CalibrationOptions(**FAST, offload=offload), stop_after_layer=0)
    assert (out / ".partial" / "layer-000.safetensors").is_file()
    assert not (out / "expert_stats.safetensors").exists()
    if offload == "disk":
        assert sorted(p.name for p in (out / ".partial").glob("act-*")) == ["act-0", "act-1"]
    calibrate(model_dir, data_dir, out, CalibrationOptions(**FAST, offload=offload))
    assert (out / "expert_stats.safetensors").read_bytes() == (full / "expert_stats.safetensors").read_bytes()
    a, b = json.loads((out / "manifest.json").read_text()), json.loads((full / "manifest.json").read_text())
    assert a == b
    assert not (out / ".partial").exists()
    # a finished run with the same identity is reused, not recomputed
    before = (out / "expert_stats.safetensors").stat().st_mtime_ns
    calibrate(model_dir, data_dir, out, CalibrationOptions(**FAST, offload=offload))
    assert (out / "expert_stats.safetensors").stat().st_mtime_ns == before


def test_stats_imatrix_feeds_pack(stats, model_dir, tmp_path):
    """calibrate's imatrix.gguf is what pack needs for the IQ2 types."""
    from gguf import GGMLQuantizationType as T

    from mode_edge.formats.imatrix import Imatrix
    from mode_edge.formats.plan import QuantPlan
    from mode_edge.gguf.export import export_model

    _, out = stats
    im = Imatrix.load(out / "imatrix.gguf")
    plan = QuantPlan(default=T.Q8_0, tensors={"blk.1.ffn_down_exps.weight": [T.IQ2_XS] * 8})
    r = export_model(model_dir, tmp_path, None, plan=plan, label="x", imatrix=im)
    assert r.text_path.is_file()


def test_unreadable_image_error_and_skip_bad(model_dir, tmp_path):
    data = make_data(tmp_path / "bad", n_images=2)
    (data / "images" / "1.png").write_bytes(b"not a png")
    cmd = [
        sys.executable,
        "-m",
        "mode_edge.cli",
        "calibrate",
        str(model_dir),
        "--data",
        str(data),
        "--types",
        "Q4_K",
        "--hessian-probes",
        "0",
        "-q",
    ]
    proc = subprocess.run(cmd + ["-o", str(tmp_path / "s1")], capture_output=True, text=True)
    assert proc.returncode == 2 and "1.png" in proc.stderr and "--skip-bad" in proc.stderr
    proc = subprocess.run(cmd + ["-o", str(tmp_path / "s2"), "--skip-bad"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "s2" / "manifest.json").read_text())["n_samples"] == 2  # 1 image + 1 text


def test_hessian_jvp_and_hutchinson_against_autodiff_and_exact_trace():
    """The closed-form J v equals torch's forward-mode AD; Hutchinson converges to tr(J^T J)/N."""
    from mode_edge.signals.sensitivity import exact_hessian_trace, expert_forward, expert_jvps, hessian_trace

    g = torch.Generator().manual_seed(0)
    H, I, N = 64, 32, 40
    wg, wu, wd = (torch.randn(s, generator=g) * 0.2 for s in ((I, H), (I, H), (H, I)))
    x = torch.randn(N, H, generator=g)
    act = torch.nn.functional.silu
    vs = [torch.randn(w.shape, generator=g) for w in (wg, wu, wd)]
    ours = expert_jvps(x, wg, wu, wd, act, *vs)
    for p, (w, v) in enumerate(zip((wg, wu, wd), vs)):

        def f(w_, p=p):
            ws = [wg, wu, wd]
            ws[p] = w_
            return expert_forward(x, *ws, act)

        _, ref = torch.func.jvp(f, (w,), (v,))
        torch.testing.assert_close(ours[p], ref, rtol=1e-4, atol=1e-5)
    exact = exact_hessian_trace(wg, wu, wd, act, x)
    est = hessian_trace(wg, wu, wd, act, x, probes=400, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(est, exact, rtol=0.1)


def test_unknown_device_is_refused(model_dir, data_dir, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mode_edge.cli",
            "calibrate",
            str(model_dir),
            "--data",
            str(data_dir),
            "-o",
            str(tmp_path / "s"),
            "--device",
            "tpu",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "unknown device 'tpu'" in proc.stderr
    assert not (tmp_path / "s").exists()


def test_bottom_k_cache_keeps_exactly_the_smallest_keys():
    from mode_edge.signals.recorder import BottomK

    g = torch.Generator().manual_seed(0)
    cache = BottomK(50)
    rows, keys = [], []
    for _ in range(30):
        m = int(torch.randint(0, 12, (1,), generator=g))
        r, k = torch.randn(m, 4, generator=g), torch.rand(m, generator=g)
        cache.add(r, k)
        rows.append(r)
        keys.append(k)
    R, K = torch.cat(rows), torch.cat(keys)
    want = {tuple(R[i].tolist()) for i in torch.topk(K, 50, largest=False).indices}
    assert cache.n == 50 and {tuple(x.tolist()) for x in cache.rows} == want


def test_attention_statistics(stats):
    st, _ = stats
    types = st.manifest["types"]
    order = [types.index(t) for t in ("Q2_K", "Q3_K", "Q4_K", "Q6_K")]
    for il, d in st.layers.items():
        # every token passes attention; the modality split matches the MoE's token counts
        assert d["attn_tokens"].sum() == st.manifest["tokens"]["total"]
        assert (d["attn_tokens"] * st.manifest["top_k"] == d["counts"].sum(1)).all()
        names = [n for n, _ in st.manifest["attn_tensors"][str(il)]]
        assert names == [f"blk.{il}.attn_{k}.weight" for k in ("q", "k", "v", "output")]
        sens = d["attn_sensitivity"]
        assert sens.shape == (4, len(types), 3)
        for m in range(4):
            for cache in range(3):
                assert np.all(np.diff(sens[m, order, cache]) < 0), (il, m, cache)
