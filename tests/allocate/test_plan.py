"""Allocation end to end: budgets against the bytes pack really writes, granularities, the
methods' defining behaviour on constructed statistics, and the `plan` command."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader

from mode_edge.allocate.allocator import AllocOptions, allocate, method_importance
from mode_edge.allocate.budget import Budget
from mode_edge.allocate.methods.hessian import kmeans_1d
from mode_edge.formats.groups import GROUPS_KEY
from mode_edge.formats.quant_types import bits_per_weight
from mode_edge.formats.stats import ExpertStats
from mode_edge.gguf.export import export_model
from tests.helpers import FAST, cli

TYPES = FAST["types"]  # Q2_K, Q3_K, Q4_K, Q6_K


@pytest.fixture(scope="module")
def model_dir(tiny_models):
    return tiny_models["transformers"]


@pytest.fixture(scope="module")
def stats_dir(tiny_stats_dir):
    return tiny_stats_dir


@pytest.fixture(scope="module")
def stats(stats_dir):
    return ExpertStats.load(stats_dir)


def _files_bytes(paths) -> int:
    return sum(p.stat().st_size for p in paths)


def _bounds(stats, model_dir) -> tuple[int, int]:
    lo = allocate(stats, model_dir, Budget(bpw=2.625), AllocOptions(method="uniform")).total_bytes
    hi = allocate(stats, model_dir, Budget(bpw=6.5625), AllocOptions(method="uniform")).total_bytes
    return lo, hi


@pytest.mark.parametrize(
    "method,granularity,split,attn",
    [
        ("mode", "expert", False, None),
        ("mode", "expert", True, None),
        ("mode", "tensor", False, None),
        ("frequency", "expert", False, None),
        ("hessian", "expert", False, None),
        ("veq", "expert", True, None),
        ("mode", "expert", False, "auto"),
    ],
)
def test_planned_bytes_equal_packed_files_and_fit(
    stats, stats_dir, model_dir, tmp_path, method, granularity, split, attn
):
    lo, hi = _bounds(stats, model_dir)
    budget = lo + (hi - lo) * 2 // 5
    opts = AllocOptions(method=method, granularity=granularity, split_projections=split, attn=attn)
    alloc = allocate(stats, model_dir, Budget(bytes=budget), opts)
    assert alloc.total_bytes <= budget
    assert alloc.total_bytes > lo  # the budget above the smallest file is spent
    r = export_model(
        model_dir,
        tmp_path / "out",
        None,
        plan=alloc.plan,
        label=method,
        imatrix=method_importance(stats, opts),
    )
    assert r.text_path.stat().st_size == alloc.text_bytes
    assert r.mmproj_path.stat().st_size == alloc.mmproj_bytes
    assert _files_bytes([r.text_path, r.mmproj_path]) <= budget
    reader = GGUFReader(r.text_path)
    grouped = reader.get_field(GROUPS_KEY) is not None
    per_expert = any(isinstance(v, list) for v in alloc.plan.tensors.values())
    assert grouped == per_expert
    if granularity == "tensor":
        assert not per_expert  # one type per expert tensor: a stock file
    attn_names = [
        t.name
        for t in reader.tensors
        if ".attn_" in t.name and t.name.endswith(".weight") and "norm" not in t.name
    ]
    stored = {
        reader.get_tensor(i).name: reader.get_tensor(i).tensor_type.name for i in range(len(reader.tensors))
    }
    if attn == "auto":
        assert len(alloc.attn_types) == len(attn_names)  # every attention matrix was an ILP item
        assert all(stored[n] == alloc.attn_types[n].name for n in attn_names)
    else:
        assert all(stored[n] == "Q8_0" for n in attn_names)


def test_budget_sweep_never_exceeds_and_uses_the_budget(stats, model_dir):
    lo, hi = _bounds(stats, model_dir)
    prev = 0.0
    for frac in (0.0, 0.15, 0.5, 0.85, 1.0):
        budget = int(lo + frac * (hi - lo))
        # one global ILP: every upgrade lowers the cost, so what is left cannot pay for any single
        # upgrade (per layer, each layer's share can leave up to one upgrade unspent)
        alloc = allocate(stats, model_dir, Budget(bytes=budget), AllocOptions(method="mode", per_layer=False))
        assert alloc.total_bytes <= budget
        sizes = alloc.items.sizes
        upgrade = sizes[:, 1:] - sizes[:, :-1]
        if (alloc.choice < sizes.shape[1] - 1).any():
            assert budget - alloc.total_bytes < upgrade.max()
        assert alloc.plan.extra["solver"]["status"] == "optimal"
        assert alloc.expert_bpw >= prev - 1e-9  # more budget never buys fewer bits
        prev = alloc.expert_bpw


def test_unlimited_budget_gives_every_expert_the_best_type(stats, model_dir):
    for method in ("mode", "frequency", "veq", "mode-pooled"):
        alloc = allocate(stats, model_dir, Budget(bytes=10**12), AllocOptions(method=method))
        assert set(alloc.choice.tolist()) == {len(TYPES) - 1}, method


def test_bpw_budget_and_per_layer_constraint(stats, model_dir):
    for per_layer in (False, True):
        alloc = allocate(stats, model_dir, Budget(bpw=3.2), AllocOptions(method="mode", per_layer=per_layer))
        assert alloc.expert_bpw <= 3.2
        if per_layer:  # every layer alone holds the average
            sizes = alloc.items.sizes[np.arange(len(alloc.choice)), alloc.choice]
            for layer in np.unique(alloc.items.layer_of):
                sel = alloc.items.layer_of == layer
                assert 8 * sizes[sel].sum() / alloc.items.params[sel].sum() <= 3.2 + 1e-9


def test_floor_ceiling_and_fixed_types(stats, model_dir):
    alloc = allocate(
        stats,
        model_dir,
        Budget(bytes=10**12),
        AllocOptions(method="mode", floor="Q3_K", ceiling="Q4_K", attn="Q6_K", other="Q4_K"),
    )
    assert {alloc.candidates[c].name for c in alloc.choice} == {"Q4_K"}
    assert [t.name for t in alloc.candidates] == ["Q3_K", "Q4_K"]
    attn = [n for n, t in alloc.plan.tensors.items() if "attn_q.weight" in n]
    assert attn and all(alloc.plan.tensors[n].name == "Q6_K" for n in attn)
    assert alloc.plan.default.name == "Q4_K"


def test_context_reserve_is_the_kv_cache(stats, model_dir, tiny_models):
    cfg = json.loads((model_dir / "config.json").read_text())["text_config"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    kv = cfg["num_hidden_layers"] * 1000 * 2 * cfg["num_key_value_heads"] * head_dim * 2
    alloc = allocate(stats, model_dir, Budget(bytes=10**9), AllocOptions(method="mode", context=1000))
    assert alloc.reserve_bytes == kv


def _constructed(stats: ExpertStats) -> ExpertStats:
    """Experts 0 and 1 of every layer serve text and almost never vision; the other experts
    take nearly all the (20x more numerous) image tokens. Every expert is equally sensitive."""
    st = copy.deepcopy(stats)
    bits = np.array([bits_per_weight(GGMLQuantizationType[t]) for t in st.types])
    delta = 4.0**-bits
    for d in st.layers.values():
        E = d["counts"].shape[1]
        counts = np.zeros((3, E), dtype=np.int64)
        counts[0, :2], counts[0, 2:] = 40, 2  # text
        counts[1, 2:], counts[2, 2:] = 300, 1200  # key and redundant vision
        d["counts"] = counts
        d["weight_sums"] = counts * 0.5
        d["prob_sums"] = counts * 0.3
        sens = np.zeros((len(st.manifest["importances"]), E, 4, len(bits), 3))
        sens[..., 0] = delta  # text tokens reached every expert
        sens[:, 2:, :, :, 1] = delta  # vision tokens only experts 2..
        sens[..., 2] = delta
        d["sensitivity"] = sens
        d["hessian_trace"] = np.ones((E, 3))
    return st


def test_mode_protects_rare_text_experts_and_frequency_does_not(stats, model_dir):
    st = _constructed(stats)
    got = {}
    for method in ("mode", "frequency", "mode-pooled"):
        # room for about two of the eight experts per layer to move up from Q2_K
        alloc = allocate(st, model_dir, Budget(bpw=2.9), AllocOptions(method=method))
        per_layer = {}
        for (layer, e, _), c in zip(alloc.items.keys, alloc.choice):
            per_layer.setdefault(layer, {})[e] = bits_per_weight(alloc.candidates[c])
        got[method] = per_layer
    for layer, types in got["mode"].items():
        text_bits = min(types[0], types[1])
        assert text_bits > np.median([types[e] for e in types if e >= 2]), (layer, types)
    for method in ("frequency", "mode-pooled"):  # pooled counts: the text experts look idle
        for layer, types in got[method].items():
            assert types[0] == types[1] == min(types.values()) < max(types.values()), (method, layer, types)


def test_hessian_kmeans_orders_classes_by_score():
    x = np.array([0.1, 0.12, 5.0, 5.2, 0.11, 20.0, 19.0])
    labels = kmeans_1d(x, 3)
    assert labels.tolist() == [0, 0, 1, 1, 0, 2, 2]


@pytest.mark.parametrize("method,field", [("hessian", "hessian_norm"), ("hessian-data", "hessian_trace")])
def test_hessian_gives_high_trace_experts_more_bits(stats, model_dir, method, field):
    """Each MoPEQ variant reads its own trace: the other one, reversed, must not matter."""
    st = copy.deepcopy(stats)
    other = {"hessian_norm": "hessian_trace", "hessian_trace": "hessian_norm"}[field]
    for d in st.layers.values():
        E = d[field].shape[0]
        d[field] = np.repeat(np.linspace(1.0, 50.0, E)[:, None], 3, axis=1)
        d[other] = np.repeat(np.linspace(50.0, 1.0, E)[:, None], 3, axis=1)
    alloc = allocate(st, model_dir, Budget(bpw=3.6), AllocOptions(method=method))
    for layer in np.unique(alloc.items.layer_of):
        b = [
            bits_per_weight(alloc.candidates[c])
            for (l, e, _), c in zip(alloc.items.keys, alloc.choice)
            if l == layer
        ]
        assert b == sorted(b) and b[0] < b[-1]
    assert alloc.expert_bpw <= 3.6


def test_method_importance_matrices_differ_as_defined(stats, stats_dir):
    plain = method_importance(stats, AllocOptions(method="uniform"))
    veq = method_importance(stats, AllocOptions(method="veq"))
    veq_alloc = method_importance(stats, AllocOptions(method="veq-alloc"))
    mode = method_importance(stats, AllocOptions(method="mode"))
    name = stats.manifest["gguf_names"]["0"][0]
    a, b, c, d = (m.entries[name].importance() for m in (plain, veq, mode, veq_alloc))
    assert a.shape == b.shape == c.shape
    assert not np.allclose(a, b)
    assert np.array_equal(a, c)  # MODE packs with all routed tokens, unweighted (its GPTQ Hessian)
    assert np.array_equal(b, d)  # both VEQ rows pack with VEQ-MA
    # plain is exactly what calibration wrote beside the statistics for pack
    from mode_edge.formats.imatrix import Imatrix

    written = Imatrix.load(stats_dir / "imatrix.gguf")
    assert np.allclose(written.entries[name].importance(), a)


def test_plan_command_writes_plan_png_imatrix_and_pack_uses_them(stats_dir, model_dir, tmp_path, capsys):
    plan = tmp_path / "plans" / "mode.json"
    assert cli(["plan", "--stats", str(stats_dir), "--budget", "3.2bpw", "-o", str(plan)]) == 0
    text = capsys.readouterr().out
    assert "routed experts by type" in text and "bits per routed-expert weight" in text
    data = json.loads(plan.read_text())
    assert data["method"] == "mode" and data["extra"]["imatrix"] == "mode.imatrix.gguf"
    from PIL import Image

    with Image.open(plan.with_suffix(".png")) as im:
        assert im.width > 100 and im.height > 50
    assert cli(["pack", str(model_dir), "--plan", str(plan), "-o", str(tmp_path / "out"), "-q"]) == 0
    files = sorted((tmp_path / "out").glob("*.gguf"))
    assert _files_bytes(files) == sum(data["extra"]["planned_bytes"].values())


def test_infeasible_budget_exits_2_with_the_smallest_size(stats_dir, tmp_path, capsys):
    assert cli(["plan", "--stats", str(stats_dir), "--budget", "1MB", "-o", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert "at least" in err and "bytes" in err
    assert not (tmp_path / "p.json").exists() and not (tmp_path / "p.imatrix.gguf").exists()
    assert (
        cli(
            [
                "plan",
                "--stats",
                str(stats_dir),
                "--budget",
                "3bpw",
                "--method",
                "mode",
                "--types",
                "IQ2_XS",
                "-o",
                str(tmp_path / "p.json"),
            ]
        )
        == 2
    )
    assert "did not measure" in capsys.readouterr().err
