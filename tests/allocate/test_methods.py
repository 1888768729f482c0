"""The published baselines are what their papers and code define, and none falls back silently
to another method; every method's errors are measured with the importance it packs with."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader

from mode_edge.allocate.allocator import AllocOptions, allocate, method_importance
from mode_edge.allocate.budget import Budget
from mode_edge.allocate.methods import get_method
from mode_edge.allocate.methods.base import Context
from mode_edge.arch import architecture_for
from mode_edge.calibrate.gamma import measure_gamma
from mode_edge.errors import UserError
from mode_edge.formats.checkpoint import Checkpoint
from mode_edge.formats.imatrix import Imatrix
from mode_edge.formats.stats import KEY, RED, S_ALL, TEXT, ExpertStats
from mode_edge.gguf.export import export_model
from mode_edge.signals.importance import IMPORTANCES, method_imatrix
from mode_edge.signals.recorder import LayerRecorder
from mode_edge.signals.sensitivity import expert_forward, norm_hessian_trace, stored
from tests.helpers import hf_inputs

T = GGMLQuantizationType


@pytest.fixture(scope="module")
def model_dir(tiny_models):
    return tiny_models["transformers"]


@pytest.fixture(scope="module")
def stats(tiny_stats_dir):
    return ExpertStats.load(tiny_stats_dir)


# -- MC-MoE: the router's probabilities before renormalisation, alpha and beta ------------------


def test_probability_sums_are_transformers_softmax_before_renormalisation(stats, rendered, hf_models):
    cal, rs = rendered
    model = hf_models("transformers")
    expected = np.zeros((cal.n_layers, 2, cal.n_experts))
    renorm = np.zeros_like(expected)
    for r in rs:
        with torch.no_grad():
            out = model(**hf_inputs(r, cal.image_token_id), output_router_logits=True)
        is_img = torch.from_numpy(r.input_ids == cal.image_token_id)
        for il, logits in enumerate(out.router_logits):
            p = torch.softmax(logits.double(), -1)
            top, idx = torch.topk(p, cal.top_k, dim=-1)
            for mod, sel in ((0, ~is_img), (1, is_img)):
                np.add.at(expected[il, mod], idx[sel].flatten().numpy(), top[sel].flatten().numpy())
                w = top[sel] / top[sel].sum(-1, keepdim=True)
                np.add.at(renorm[il, mod], idx[sel].flatten().numpy(), w.flatten().numpy())
    for il in range(cal.n_layers):
        d = stats.layers[il]
        got = np.stack([d["prob_sums"][TEXT], d["prob_sums"][KEY] + d["prob_sums"][RED]])
        np.testing.assert_allclose(got, expected[il], rtol=1e-4, atol=1e-6)
        # and they are not the renormalised weights (top-2 of 8: the sums differ)
        assert not np.allclose(got, renorm[il], rtol=1e-2)
        np.testing.assert_allclose(d["weight_sums"][TEXT], renorm[il, 0], rtol=1e-4, atol=1e-6)


def test_frequency_cost_is_mc_moe_objective_with_alpha_and_beta(stats):
    from mode_edge.allocate.allocator import _layer_stats

    method = get_method("frequency")
    ls = _layer_stats(stats, 0, method)
    ctx = Context(hidden=int(stats.manifest["hidden"]), tokens={})
    counts, probs = ls.counts.sum(0).astype(float), ls.prob_sums.sum(0)
    rbar = np.divide(ls.weight_sums.sum(0), counts, out=np.zeros(len(counts)), where=counts > 0)
    eps = rbar[:, None] * np.sqrt(counts[:, None] * ctx.hidden * ls.sensitivity[:, 0, :, S_ALL])
    for alpha, beta in ((1.0, 1.5), (0.5, 3.0)):
        ctx.options = {"alpha": alpha, "beta": beta}
        want = ((counts / counts.sum()) ** alpha * (probs / probs.sum()) ** beta)[:, None] * eps**alpha
        np.testing.assert_allclose(method.cost(ls, 0, ctx), want, rtol=1e-12)
    ctx.options = {"alpha": 1.0, "beta": 1.5}
    a = method.cost(ls, 0, ctx)
    ctx.options = {"alpha": 1.0, "beta": 0.0}
    assert not np.allclose(a, method.cost(ls, 0, ctx))


def test_frequency_runs_one_ilp_per_block_by_default(stats, model_dir):
    alloc = allocate(stats, model_dir, Budget(bpw=3.2), AllocOptions(method="frequency"))
    assert alloc.plan.extra["per_layer_bits"] is True
    for layer in np.unique(alloc.items.layer_of):
        sel = alloc.items.layer_of == layer
        assert (
            8 * alloc.items.sizes[np.nonzero(sel)[0], alloc.choice[sel]].sum() / alloc.items.params[sel].sum()
            <= 3.2
        )
    g = allocate(stats, model_dir, Budget(bpw=3.2), AllocOptions(method="frequency", per_layer=False))
    assert g.plan.extra["per_layer_bits"] is False


# -- MoPEQ: the Hessian of ||W||_F, no data ------------------------------------------------------


def test_norm_hessian_trace_is_the_published_double_backward_estimator():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 10, generator=g, dtype=torch.float64) * 0.3
    n = w.numel()
    # krishnateja95/MoE-Mixed-Prec, Hutchinson_estimate.py, in float64
    wr = w.clone().requires_grad_(True)
    est = []
    for _ in range(3000):
        v = torch.randn(w.shape, generator=g, dtype=torch.float64)
        v = v / torch.norm(v)
        loss = torch.norm(wr)
        grad1 = torch.autograd.grad(loss, wr, create_graph=True)[0]
        hvp = torch.autograd.grad(grad1, wr, grad_outputs=v)[0]
        est.append(float((v * hvp).sum()))
    ref = float(np.mean(est))
    exact = (1 - 1 / n) / float(torch.norm(w))
    ours = norm_hessian_trace(w, 3000, torch.Generator().manual_seed(1))
    assert abs(ref - exact) / exact < 2e-3 and abs(ours - exact) / exact < 2e-3
    # the per-probe spread matches too (the same random variable, drawn without n-vectors)
    ours_sd = np.std([norm_hessian_trace(w, 1, torch.Generator().manual_seed(s)) for s in range(1500)])
    assert 0.8 < ours_sd / np.std(est) < 1.25


def test_published_hessian_is_a_function_of_the_weights_alone(stats, model_dir):
    conv = architecture_for(Checkpoint(model_dir))
    for il, d in stats.layers.items():
        specs = {s.name.split(".")[2]: s for s in conv._expert_specs(il)}
        for e in range(d["hessian_norm"].shape[0]):
            for p, key in enumerate(("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")):
                w = specs[key].load_expert(e).astype(np.float64)
                want = (1 - 1 / w.size) / np.linalg.norm(w)
                assert d["hessian_norm"][e, p] == pytest.approx(want, rel=1e-4)
    # and the data-dependent variant is not it
    assert not np.allclose(stats.layers[0]["hessian_norm"], stats.layers[0]["hessian_trace"], rtol=0.1)


def test_hessian_and_hessian_data_read_different_traces(stats, model_dir):
    st = copy.deepcopy(stats)
    for d in st.layers.values():
        E = d["hessian_norm"].shape[0]
        d["hessian_norm"] = np.repeat(np.arange(1.0, E + 1)[:, None], 3, axis=1)
        d["hessian_trace"] = d["hessian_norm"][::-1].copy()
    a = allocate(st, model_dir, Budget(bpw=3.6), AllocOptions(method="hessian")).choice
    b = allocate(st, model_dir, Budget(bpw=3.6), AllocOptions(method="hessian-data")).choice
    assert not np.array_equal(a, b)


# -- VEQ: uniform + the VEQ-MA importance; gamma ---------------------------------------------------


def test_veq_is_uniform_packed_with_veq_ma(stats, model_dir, tmp_path):
    budget = Budget(bpw=3.2)
    veq = allocate(stats, model_dir, budget, AllocOptions(method="veq"))
    uni = allocate(stats, model_dir, budget, AllocOptions(method="uniform"))
    assert veq.plan.tensors == uni.plan.tensors  # the same types ...
    assert all(not isinstance(v, list) for v in veq.plan.tensors.values())  # one per tensor
    assert veq.plan.extra["importance"] == "veq-ma" and uni.plan.extra["importance"] == "plain"
    files = {}
    for name, a in (("veq", veq), ("uniform", uni)):
        r = export_model(
            model_dir,
            tmp_path / name,
            None,
            plan=a.plan,
            label=name,
            imatrix=method_importance(stats, AllocOptions(method=name)),
        )
        files[name] = {t.name: bytes(t.data.tobytes()) for t in GGUFReader(r.text_path).tensors}
    assert files["veq"].keys() == files["uniform"].keys()
    experts = [n for n in files["veq"] if "_exps" in n]
    # ... and only the importance differs: the expert bytes, nothing else
    assert all(files["veq"][n] == files["uniform"][n] for n in files["veq"] if n not in experts)
    assert any(files["veq"][n] != files["uniform"][n] for n in experts)


def test_gamma_equals_full_model_autograd(rendered, hf_models):
    """gamma from the layer-streamed backward equals transformers' whole-model autograd."""
    cal, rs = rendered
    model = hf_models("transformers")
    lm = model.model.language_model
    text, image = [], []
    picks = [r for r in rs if (r.input_ids == cal.image_token_id).any()][:3]
    for r in picks:
        leaf = {}

        def pre(m, args, kw):
            x = kw["inputs_embeds"].detach().requires_grad_(True)
            leaf["x"] = x
            return args, {**kw, "inputs_embeds": x}

        h = lm.register_forward_pre_hook(pre, with_kwargs=True)
        try:
            logits = model(**hf_inputs(r, cal.image_token_id)).logits[0, -1:].float()
        finally:
            h.remove()
        loss = torch.nn.functional.cross_entropy(logits, logits.argmax(-1))
        (g,) = torch.autograd.grad(loss, leaf["x"])
        norms = g[0].double().norm(dim=-1).numpy()
        img = r.input_ids == cal.image_token_id
        text.append(norms[~img])
        image.append(norms[img])
    want = float(np.concatenate(text).mean() / np.concatenate(image).mean())
    got = measure_gamma(cal, rs, 3)
    assert got["samples"] == 3
    assert got["gamma"] == pytest.approx(want, rel=1e-4)


def test_stats_record_gamma_and_plan_prints_it(stats, tiny_stats_dir, tmp_path, capsys):
    from tests.helpers import cli

    assert stats.manifest["gamma_info"]["source"] == "measured" and stats.manifest["gamma"] > 0
    assert (
        cli(
            [
                "plan",
                "--stats",
                str(tiny_stats_dir),
                "--budget",
                "3.2bpw",
                "--method",
                "veq-alloc",
                "-o",
                str(tmp_path / "p.json"),
                "--no-png",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert f"VEQ gamma {stats.manifest['gamma']:.4g} (measured)" in text and "not a published method" in text


def test_veq_alloc_refuses_a_gamma_its_errors_were_not_measured_with(stats, model_dir):
    g = float(stats.manifest["gamma"]) * 2
    with pytest.raises(UserError, match="re-run `mode-edge calibrate --veq-gamma"):
        allocate(
            stats,
            model_dir,
            Budget(bpw=3.2),
            AllocOptions(method="veq-alloc", method_options={"veq_gamma": g}),
        )
    # veq itself measures nothing: another gamma only changes its importance matrix
    a = allocate(
        stats, model_dir, Budget(bpw=3.2), AllocOptions(method="veq", method_options={"veq_gamma": g})
    )
    assert a.plan.extra["veq_gamma"] == g
    m1 = method_importance(stats, AllocOptions(method="veq", method_options={"veq_gamma": g}))
    m0 = method_importance(stats, AllocOptions(method="veq"))
    name = stats.manifest["gguf_names"]["0"][0]
    assert not np.allclose(m1.entries[name].importance(), m0.entries[name].importance())


# -- one importance to measure and to pack ------------------------------------------------------------


def test_sensitivity_is_the_error_under_the_importance_pack_writes(tmp_path):
    """For each importance: quantize with the matrix plan writes (through a GGUF file, as pack
    reads it) and the error on the recorder's cached tokens is exactly the recorded one."""
    g = torch.Generator().manual_seed(0)
    E, H, I, gamma = 3, 256, 256, 7.0
    ws = [
        (
            torch.randn(I, H, generator=g) * 0.05,
            torch.randn(I, H, generator=g) * 0.05,
            torch.randn(H, I, generator=g) * 0.05,
        )
        for _ in range(E)
    ]
    act = torch.nn.functional.silu

    def experts_fn(e):
        return (*ws[e], act)

    rec = LayerRecorder(E, H, I, cap=64, seed=3)
    for _ in range(4):
        x = torch.randn(40, H, generator=g) * torch.linspace(0.1, 3.0, H)
        idx = torch.stack(
            [torch.randint(0, E, (40,), generator=g), torch.randint(0, E, (40,), generator=g)], 1
        )
        w = torch.rand(40, 2, generator=g)
        mod = torch.randint(0, 3, (40,), generator=g)
        rec.add(x, idx, w, mod, experts_fn)
    types = [T.Q2_K, T.Q4_K]
    arrays = rec.finish(experts_fn, types, probes=0, gamma=gamma)
    names = ["blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight", "blk.0.ffn_down_exps.weight"]
    st = ExpertStats({"gguf_names": {"0": names}, "importances": list(IMPORTANCES)}, {0: arrays})
    for k, kind in enumerate(IMPORTANCES):
        path = tmp_path / f"{kind}.gguf"
        method_imatrix(st, kind, gamma).save(path)
        im = Imatrix.load(path)
        imp_in, imp_mid = im.for_tensor(names[0], E, H), im.for_tensor(names[2], E, I)
        for e in range(E):
            x = rec.caches[("all", e)].rows
            wg, wu, wd = ws[e]
            ref = expert_forward(x, wg, wu, wd, act)
            for ti, t in enumerate(types):
                q = expert_forward(
                    x, stored(wg, t, imp_in[e]), stored(wu, t, imp_in[e]), stored(wd, t, imp_mid[e]), act
                )
                assert float(torch.mean((q - ref) ** 2)) == arrays["sensitivity"][k, e, 0, ti, S_ALL]
    assert not np.array_equal(arrays["sensitivity"][0], arrays["sensitivity"][1])


def test_every_method_prices_with_the_importance_it_packs_with(stats):
    from mode_edge.allocate.methods import METHODS

    for name in METHODS:
        m = get_method(name)
        assert m.importance in IMPORTANCES, name
        assert (
            method_importance(stats, AllocOptions(method=name)).datasets[-1] == f"importance:{m.importance}"
        )
    assert get_method("mode").importance == "plain" and get_method("veq-alloc").importance == "veq-ma"
