"""ExpertStats + a budget + a method -> QuantPlan, with exact byte accounting.

Items are what gets one type: an expert (gate, up and down together), an expert's single
projection (`split_projections`), or a whole expert tensor (`granularity="tensor"`: stock
llama.cpp runs the result). Everything that is not a routed expert has a fixed type; its
bytes, the GGUF headers and alignment are measured on the real serialised headers, so the
plan's total is the size of the files pack writes. Expert groups add a little header per
group, which is only known once the types are; the loop below solves, measures the exact
size, and shrinks the expert capacity by any excess until the files fit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType

from mode_edge.allocate.budget import Budget
from mode_edge.allocate.ilp import solve
from mode_edge.allocate.layout import ExpertTensor, ModelLayout
from mode_edge.allocate.methods import get_method
from mode_edge.allocate.methods.base import Assignment, Context, LayerStats, Method
from mode_edge.allocate.methods.veq import gamma as veq_gamma
from mode_edge.arch import Architecture
from mode_edge.errors import UserError
from mode_edge.formats.imatrix import Imatrix
from mode_edge.formats.plan import QuantPlan
from mode_edge.formats.quant_types import LADDER, bits_per_weight, fallback, parse_type, row_bytes
from mode_edge.formats.stats import ExpertStats
from mode_edge.formats.tensors import Role
from mode_edge.quantize import requires_imatrix
from mode_edge.signals import method_imatrix

T = GGMLQuantizationType
GRANULARITIES = ("expert", "tensor")


@dataclass
class AllocOptions:
    method: str = "mode"
    granularity: str = "expert"
    split_projections: bool = False  # expert granularity: a type per projection
    per_layer: bool | None = None  # one ILP per layer (None: the method's own default)
    types: list[str] | None = None  # candidates (default: the types calibration measured)
    floor: str | None = None
    ceiling: str | None = None
    other: str = "Q8_0"  # non-expert text matrices
    attn: str | None = None  # attention matrices: a type, "auto" (chosen by the ILP), or `other`
    # shared experts: a type, "auto" (ILP items), or None: auto where the method prices types by
    # sensitivity under a byte budget, else `other`
    shared: str | None = None
    dense: str | None = None  # dense (non-MoE) layers' FFNs: the same choices as `shared`
    mmproj: str = "F16"
    fixed: dict[str, T] = field(default_factory=dict)  # types of named non-expert tensors (e.g. a preset's)
    context: int = 0  # KV-cache tokens to reserve in a byte budget
    method_options: dict[str, Any] = field(default_factory=dict)
    time_limit: float | None = 60.0


@dataclass
class Items:
    keys: list[tuple[int, int, tuple[int, ...]]]  # (layer, expert or -1 for all, projections)
    sizes: np.ndarray  # [n, k] bytes per candidate type
    params: np.ndarray  # [n] weights
    layer_of: np.ndarray  # [n]
    cost: np.ndarray | None  # [n, k] method cost (ILP methods)
    scores: np.ndarray  # [n] method score (assignment methods)


@dataclass
class Allocation:
    plan: QuantPlan
    text_bytes: int
    mmproj_bytes: int
    reserve_bytes: int
    expert_bytes: int
    expert_params: int
    items: Items
    choice: np.ndarray
    candidates: list[T]
    attn_types: dict[str, T]  # attention types the ILP chose (--attn-type auto)
    attn_bytes: int
    n_expert: int
    status: str
    gap: float | None
    seconds: float
    notes: list[str]
    shared_types: dict[str, T] = field(default_factory=dict)  # shared-expert types the ILP chose
    shared_bytes: int = 0
    dense_types: dict[str, T] = field(default_factory=dict)  # dense-layer FFN types the ILP chose
    dense_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.text_bytes + self.mmproj_bytes + self.reserve_bytes

    @property
    def expert_bpw(self) -> float:
        return 8.0 * self.expert_bytes / max(1, self.expert_params)


def _candidates(opts: AllocOptions, stats: ExpertStats, method: Method) -> tuple[list[T], list[int]]:
    measured = [parse_type(t) for t in stats.types]
    cands = (
        [parse_type(t) for t in opts.types]
        if opts.types
        else (measured if method.needs_sensitivity else measured or list(LADDER))
    )
    lo = bits_per_weight(parse_type(opts.floor)) if opts.floor else 0.0
    hi = bits_per_weight(parse_type(opts.ceiling)) if opts.ceiling else 99.0
    cands = sorted({t for t in cands if lo <= bits_per_weight(t) <= hi}, key=bits_per_weight)
    if not cands:
        raise UserError(
            "no candidate type is left between the floor and the ceiling", "widen --floor/--ceiling"
        )
    cols = []
    if method.needs_sensitivity:
        missing = [t.name for t in cands if t.name not in stats.types]
        if missing:
            raise UserError(
                f"method {method.name} needs the sensitivity of {', '.join(missing)}, "
                f"which calibration did not measure (it measured {', '.join(stats.types)})",
                "re-run `mode-edge calibrate --types` with them, or choose --types among the measured",
            )
        cols = [stats.types.index(t.name) for t in cands]
    return cands, cols


def _layer_stats(stats: ExpertStats, layer: int, method: Method) -> LayerStats:
    d = stats.layers[layer]
    return LayerStats(
        layer,
        d["counts"],
        d["weight_sums"],
        stats.sensitivity(layer, method.importance),
        d["hessian_trace"],
        d["prob_sums"],
        d["hessian_norm"],
    )


def build_items(
    stats: ExpertStats,
    tensors: dict[tuple[int, int], ExpertTensor],
    method: Method,
    cands: list[T],
    cols: list[int],
    ctx: Context,
    opts: AllocOptions,
) -> Items:
    keys, sizes, params, layers, costs, scores = [], [], [], [], [], []
    use_cost = method.needs_sensitivity
    for layer in stats.moe_layers:
        ls = _layer_stats(stats, layer, method)
        ts = [tensors[layer, p] for p in range(3)]
        bytes_ = np.array([[t.expert_bytes(c) for c in cands] for t in ts], dtype=np.int64)  # [3, k]
        E = ts[0].n_expert
        if opts.granularity == "tensor":
            for p in range(3):
                keys.append((layer, -1, (p,)))
                sizes.append(E * bytes_[p])
                params.append(E * ts[p].params)
                layers.append(layer)
                costs.append(method.cost(ls, 1 + p, ctx)[:, cols].sum(0) if use_cost else None)
                scores.append(float(method.score(ls, p, ctx).sum()) if not use_cost else 0.0)
            continue
        groups = [(0, 1, 2)] if not opts.split_projections else [(0,), (1,), (2,)]
        for projs in groups:
            axis = 0 if len(projs) == 3 else 1 + projs[0]
            c = method.cost(ls, axis, ctx)[:, cols] if use_cost else None
            s = method.score(ls, None if len(projs) == 3 else projs[0], ctx) if not use_cost else None
            for e in range(E):
                keys.append((layer, e, projs))
                sizes.append(bytes_[list(projs)].sum(0))
                params.append(sum(ts[p].params for p in projs))
                layers.append(layer)
                costs.append(c[e] if c is not None else None)
                scores.append(float(s[e]) if s is not None else 0.0)
    cost = np.array(costs, dtype=np.float64) if use_cost else None
    return Items(
        keys,
        np.array(sizes, dtype=np.int64),
        np.array(params, dtype=np.int64),
        np.array(layers),
        cost,
        np.array(scores, dtype=np.float64),
    )


def _plan(
    items: Items,
    choice: np.ndarray,
    cands: list[T],
    tensors: dict[tuple[int, int], ExpertTensor],
    layout: ModelLayout,
    opts: AllocOptions,
    method: str,
    stats: ExpertStats,
    budget: Budget,
    attn_types: dict[str, T],
) -> QuantPlan:
    per_tensor: dict[str, list[T]] = {t.name: [cands[0]] * t.n_expert for t in tensors.values()}
    for (layer, e, projs), c in zip(items.keys, choice):
        for p in projs:
            t = tensors[layer, p]
            if e < 0:
                per_tensor[t.name] = [cands[c]] * t.n_expert
            else:
                per_tensor[t.name][e] = cands[c]
    plan = QuantPlan(
        method=method,
        model=stats.manifest.get("model_name"),
        budget_bytes=budget.bytes,
        default=parse_type(opts.other),
        mmproj=parse_type(opts.mmproj),
    )
    for flag, role in ((opts.attn, Role.ATTN), (opts.shared, Role.SHARED), (opts.dense, Role.FFN)):
        if flag and flag != "auto":
            for name, r in layout.other_roles.items():
                if r == role:
                    plan.tensors[name] = parse_type(flag)
    plan.tensors.update(opts.fixed)
    plan.tensors.update(attn_types)
    for name, types in per_tensor.items():
        plan.tensors[name] = types[0] if len(set(types)) == 1 else types
    return plan


def _check_fixed_types(opts: AllocOptions) -> None:
    for flag, name in (
        ("--other", opts.other),
        ("--attn-type", opts.attn),
        ("--shared-type", opts.shared),
        ("--dense-type", opts.dense),
        ("--mmproj-type", opts.mmproj),
    ):
        if name and name != "auto" and requires_imatrix(parse_type(name)):
            raise UserError(
                f"{flag} {name} needs an importance matrix, and calibration measures one only for the "
                "routed experts",
                f"choose a type >= Q2_K for {flag}",
            )


@dataclass
class AttnItems:
    names: list[str]
    sizes: np.ndarray  # [m, k]
    cost: np.ndarray  # [m, k]


#: dense matrices that can be ILP items: (manifest list, sensitivity array) in the statistics
DENSE = {
    "attention": ("attn_tensors", "attn_sensitivity"),
    "shared experts": ("shared_tensors", "shexp_sensitivity"),
    "dense layers": ("dense_tensors", "dense_sensitivity"),
}
#: parts that are ILP items or one fixed type: (name in DENSE, role, AllocOptions field, flag)
FIXED_OR_AUTO = (
    ("shared experts", Role.SHARED, "shared", "--shared-type"),
    ("dense layers", Role.FFN, "dense", "--dense-type"),
)


def dense_items(
    stats: ExpertStats,
    layout: ModelLayout,
    method: Method,
    cands: list[T],
    cols: list[int],
    ctx: Context,
    what: str = "attention",
) -> AttnItems:
    """Every attention matrix (or shared-expert matrix) as one more ILP item, priced by its own
    measured sensitivity at frequency 1 in each modality (every token passes it)."""
    listed, sens_key = DENSE[what]
    if listed not in stats.manifest:
        raise UserError(f"these statistics have no {what} sensitivity", "re-run `mode-edge calibrate`")
    shapes = {s.name: s.shape for s in layout.text_specs}
    names, sizes, costs = [], [], []
    for layer in sorted(stats.layers):
        if str(layer) not in stats.manifest[listed]:  # e.g. no shared expert in a dense layer
            continue
        sens = stats.layers[layer][sens_key]
        for i, (name, _) in enumerate(stats.manifest[listed][str(layer)]):
            if name not in shapes:
                raise UserError(
                    f"the statistics name {name}, which this model does not have",
                    "calibrate this model (the statistics belong to another one)",
                )
            rows, row_size = shapes[name]
            names.append(name)
            sizes.append([rows * row_bytes(fallback(t, row_size), row_size) for t in cands])
            costs.append(method.attention_cost(sens[i][cols], ctx))
    return AttnItems(names, np.array(sizes, dtype=np.int64), np.array(costs, dtype=np.float64))


def attention_items(stats, layout, method, cands, cols, ctx) -> AttnItems:
    return dense_items(stats, layout, method, cands, cols, ctx, "attention")


def _auto(opts: AllocOptions, attr: str, flag: str, method: Method, byte_budget: bool, present: bool) -> bool:
    """Whether a FIXED_OR_AUTO part (shared experts, dense layers) is ILP items: "auto", or
    unset where the method prices types by sensitivity under a byte budget."""
    value = getattr(opts, attr)
    if not present or (value is not None and value != "auto"):
        return False
    able = byte_budget and method.prices_dense
    if value == "auto" and not able:
        raise UserError(
            f"{flag} auto needs a byte budget and a method that prices types by sensitivity",
            f"give --budget in bytes and a mode method, or a fixed {flag}",
        )
    return able


def _auto_parts(opts: AllocOptions, method: Method, byte_budget: bool, roles) -> dict[str, bool]:
    """{part: ILP items?} for the FIXED_OR_AUTO parts the model has."""
    roles = set(roles)
    return {
        what: _auto(opts, attr, flag, method, byte_budget, role in roles)
        for what, role, attr, flag in FIXED_OR_AUTO
        if role in roles
    }


def _too_small(budget_bytes: int, need: int, detail: str) -> UserError:
    return UserError(
        f"budget {budget_bytes:,} bytes is below the smallest file these options allow, {need:,} bytes "
        f"({detail})",
        f"raise --budget to at least {need:,} bytes ({need / 1e9:.3g} GB) or choose smaller types",
    )


def check_budget_before_calibration(
    model: Path | Architecture, budget: Budget, opts: AllocOptions, types: list[str]
) -> None:
    """Refuse a byte budget below the smallest possible file before hours of calibration:
    every routed expert at the smallest candidate, everything else as the options say."""
    if budget.bytes is None:
        return
    _check_fixed_types(opts)
    layout = ModelLayout(model)
    cands = [parse_type(t) for t in types]
    smallest = min(cands, key=bits_per_weight)
    plan = QuantPlan(default=parse_type(opts.other), mmproj=parse_type(opts.mmproj), tensors=dict(opts.fixed))
    auto = _auto_parts(opts, get_method(opts.method), True, (s.role for s in layout.text_specs))
    by_role = {role: (what, attr) for what, role, attr, _ in FIXED_OR_AUTO}
    for spec in layout.text_specs:
        fixed_by = by_role.get(spec.role)
        if (
            spec.role == Role.EXPERT
            or (spec.role == Role.ATTN and opts.attn == "auto")
            or (fixed_by is not None and auto[fixed_by[0]])
        ):
            plan.tensors[spec.name] = smallest
        elif spec.role == Role.ATTN and opts.attn:
            plan.tensors[spec.name] = parse_type(opts.attn)
        elif fixed_by is not None and getattr(opts, fixed_by[1]) not in (None, "auto"):
            plan.tensors[spec.name] = parse_type(getattr(opts, fixed_by[1]))
    reserve = layout.kv_cache_bytes(opts.context)
    need = sum(layout.file_bytes(plan)) + reserve
    if need > budget.bytes:
        raise _too_small(
            budget.bytes,
            need,
            f"routed experts and ILP-chosen parts at {smallest.name}, the rest as the options say; "
            + _parts_detail(layout, plan, reserve),
        )


def _parts_detail(layout: ModelLayout, plan: QuantPlan, reserve: int) -> str:
    """Where the bytes of the smallest file go, largest part first (what to shrink)."""
    parts = layout.part_bytes(plan)
    text_b, mm_b = layout.file_bytes(plan)
    parts["mmproj file"] = mm_b
    parts["headers, norms, routers"] = text_b - sum(v for k, v in parts.items() if k != "mmproj file")
    if reserve:
        parts["KV reserve"] = reserve
    return ", ".join(f"{k} {v:,}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]) if v)


def _method_options(stats: ExpertStats, opts: AllocOptions) -> dict[str, Any]:
    measured = {"measured_gamma": stats.manifest["gamma"]} if "gamma" in stats.manifest else {}
    return {**measured, **opts.method_options}


def _check_gamma(stats: ExpertStats, method: Method, options: dict[str, Any]) -> float:
    """The gamma the plan uses; a sensitivity measured under VEQ-MA holds only for its own gamma."""
    g = veq_gamma(options)
    if (
        method.importance == "veq-ma"
        and method.needs_sensitivity
        and "gamma" in stats.manifest
        and abs(g - float(stats.manifest["gamma"])) > 1e-9 * max(1.0, g)
    ):
        raise UserError(
            f"method {method.name} prices errors measured with gamma {stats.manifest['gamma']:.4g}, "
            f"not the --veq-gamma {g:g} asked for",
            f"re-run `mode-edge calibrate --veq-gamma {g:g}`, or drop --veq-gamma",
        )
    return g


def _gamma_source(stats: ExpertStats, opts: AllocOptions) -> str:
    if opts.method_options.get("veq_gamma"):
        return "--veq-gamma"
    info = stats.manifest.get("gamma_info") or {}
    return str(info.get("source", "reported (VEQ, Qwen3-VL)"))


def method_importance(stats: ExpertStats, opts: AllocOptions) -> Imatrix:
    """The importance matrix pack should quantize this plan with (the method's own weighting)."""
    return method_imatrix(stats, get_method(opts.method).importance, veq_gamma(_method_options(stats, opts)))


def allocate(
    stats: ExpertStats, model: Path | Architecture, budget: Budget, opts: AllocOptions
) -> Allocation:
    t0 = time.perf_counter()
    if opts.granularity not in GRANULARITIES:
        raise UserError(f"unknown granularity {opts.granularity!r}", "use expert or tensor")
    _check_fixed_types(opts)
    method = get_method(opts.method)
    layout = ModelLayout(model)
    tensors = layout.expert_tensors(stats.manifest["gguf_names"])
    cands, cols = _candidates(opts, stats, method)
    ctx = Context(
        hidden=int(stats.manifest["hidden"]),
        tokens=dict(stats.manifest.get("tokens") or {}),
        options=_method_options(stats, opts),
        type_names=[t.name for t in cands],
    )
    gamma = _check_gamma(stats, method, ctx.options)
    items = build_items(stats, tensors, method, cands, cols, ctx, opts)
    n = len(items.keys)
    rows = np.arange(n)
    reserve = layout.kv_cache_bytes(opts.context) if budget.bytes is not None else 0
    dense: list[AttnItems] = []
    if opts.attn == "auto":
        if budget.bytes is None or not method.needs_sensitivity:
            raise UserError(
                "--attn-type auto needs a byte budget and a method that prices types by sensitivity",
                "give --budget in bytes and a mode method, or a fixed --attn-type",
            )
        dense.append(dense_items(stats, layout, method, cands, cols, ctx, "attention"))
    auto = _auto_parts(opts, method, budget.bytes is not None, layout.other_roles.values())
    for what, on in auto.items():
        if on:
            dense.append(dense_items(stats, layout, method, cands, cols, ctx, what))
    attn = (
        None
        if not dense
        else AttnItems(
            [n for d in dense for n in d.names],
            np.vstack([d.sizes for d in dense]),
            np.vstack([d.cost for d in dense]),
        )
    )
    sizes = items.sizes if attn is None else np.vstack([items.sizes, attn.sizes])
    cost = None
    if items.cost is not None:
        cost = items.cost if attn is None else np.vstack([items.cost, attn.cost])
        if not np.isfinite(cost).all():
            raise UserError("the statistics hold non-finite values", "re-run `mode-edge calibrate`")
        # ties (experts that saw no tokens cost 0 at every type) go to the larger type when bytes allow
        tau = 1e-9 * max(float(cost.max()), 1e-30)
        cost = cost + tau * np.arange(len(cands))[::-1][None, :] / len(cands)

    def attn_types(choice_all: np.ndarray) -> dict[str, T]:
        return {} if attn is None else {nm: cands[c] for nm, c in zip(attn.names, choice_all[n:])}

    zeros = np.zeros(len(sizes), dtype=np.int64)
    base = _plan(
        items, zeros[:n], cands, tensors, layout, opts, method.name, stats, budget, attn_types(zeros)
    )
    fixed = sum(layout.file_bytes(base)) - int(sizes[:, 0].sum())
    smallest = int(sizes.min(axis=1).sum())
    if budget.bytes is not None:
        capacity = budget.bytes - reserve - fixed
        if smallest > capacity:
            need = fixed + smallest + reserve
            dense_what = [w for w, on in (("attention", opts.attn == "auto"), *auto.items()) if on]
            what = " and ".join(["routed experts", *dense_what])
            raise _too_small(
                budget.bytes,
                need,
                f"{what} at {cands[0].name}: {smallest:,}; everything else at --other "
                f"{opts.other} / --mmproj-type {opts.mmproj}, with headers: {fixed:,}; by part: "
                + _parts_detail(layout, base, reserve),
            )
    else:
        capacity = int(budget.bpw / 8.0 * int(items.params.sum()))
        if smallest > capacity:
            need = 8.0 * smallest / int(items.params.sum())
            raise UserError(
                f"{budget.bpw:g} bits per expert weight is below the smallest candidate, "
                f"{need:.3f} ({cands[0].name})",
                f"raise --budget to at least {need:.3f}bpw",
            )

    # per-layer constraint: each layer's experts get its parameter share of the expert bytes
    per_layer = method.per_layer if opts.per_layer is None else opts.per_layer
    layers = (
        [np.nonzero(items.layer_of == layer)[0] for layer in np.unique(items.layer_of)] if per_layer else []
    )
    shares = [int(items.params[idx].sum()) / int(items.params.sum()) for idx in layers]

    def layer_groups(cap: int):
        return [(idx, cap * share, items.sizes) for idx, share in zip(layers, shares)] or None

    notes: list[str] = []
    for attempt in range(12):
        grp = layer_groups(capacity)

        def fits(choice: np.ndarray, cap=capacity, grp=grp) -> bool:
            if int(items.sizes[rows, choice].sum()) > cap:
                return False
            return all(items.sizes[idx, choice[idx]].sum() <= gcap for idx, gcap, _ in grp or [])

        ctx.notes.clear()
        choice = method.assign(Assignment(items.sizes, capacity, items.scores, items.layer_of, fits), ctx)
        if choice is not None:
            if not fits(choice):
                raise UserError(
                    f"no assignment of method {method.name} fits the budget",
                    "raise --budget or allow smaller types",
                )
            status, gap = "assigned", None
        else:
            sol = solve(cost, sizes, capacity, groups=grp, time_limit=opts.time_limit)
            choice, status, gap = sol.choice, sol.status, sol.gap
        plan = _plan(
            items, choice[:n], cands, tensors, layout, opts, method.name, stats, budget, attn_types(choice)
        )
        text_b, mm_b = layout.file_bytes(plan)
        if budget.bytes is None or text_b + mm_b + reserve <= budget.bytes:
            break
        # expert-group headers and alignment: shrink and solve again. The overshoot can come back
        # as large after each shrink (a fuller plan has more groups), so the step doubles.
        capacity -= (text_b + mm_b + reserve - budget.bytes) << attempt
    else:
        raise UserError("could not fit the expert-group headers into the budget", "raise --budget slightly")
    notes.extend(ctx.notes)
    for what, _role, attr, _ in FIXED_OR_AUTO:
        if what in auto:
            notes.append(
                f"{what}: ILP items at frequency 1 in each modality, priced by their own sensitivity"
                if auto[what]
                else f"{what} at {getattr(opts, attr) or opts.other} (fixed)"
            )
    notes.append(
        f"packed with the {method.importance} importance matrix, the one its errors were measured with"
        if method.needs_sensitivity
        else f"packed with the {method.importance} importance matrix"
    )
    if status != "assigned":
        notes.append(
            "one ILP per layer (each layer its share of the expert bytes)"
            if per_layer
            else "one ILP over all layers"
        )
    if method.importance == "veq-ma":
        notes.append(f"VEQ gamma {gamma:.4g} ({_gamma_source(stats, opts)})")
    if not method.published:
        notes.append(f"{method.name} is mode-edge's variant, not a published method (docs/methods.md)")
    chosen = attn_types(choice)
    role = layout.other_roles
    item_bytes = dict(zip([] if attn is None else attn.names, sizes[np.arange(n, len(sizes)), choice[n:]]))

    def part(keep) -> tuple[dict[str, T], int]:  # the ILP's choices and bytes for some roles
        names = [nm for nm in chosen if keep(role[nm])]
        return {nm: chosen[nm] for nm in names}, int(sum(item_bytes[nm] for nm in names))

    chosen_shared, shared_bytes = part(lambda r: r == Role.SHARED)
    chosen_dense, dense_bytes = part(lambda r: r == Role.FFN)
    chosen_attn, attn_bytes = part(lambda r: r not in (Role.SHARED, Role.FFN))
    choice = choice[:n]
    expert_bytes = int(items.sizes[rows, choice].sum())
    plan.extra = {
        "granularity": opts.granularity + ("/projection" if opts.split_projections else ""),
        "per_layer_bits": per_layer,
        **({"budget_bpw": budget.bpw} if budget.bpw is not None else {}),
        "candidates": [t.name for t in cands],
        "planned_bytes": {"text": text_b, "mmproj": mm_b, "kv_reserve": reserve},
        "routed_expert_bytes": expert_bytes,
        **({"attention_bytes": attn_bytes} if chosen_attn else {}),
        **({"shared_expert_bytes": shared_bytes} if chosen_shared else {}),
        **({"dense_ffn_bytes": dense_bytes} if chosen_dense else {}),
        "routed_expert_bpw": round(8.0 * expert_bytes / int(items.params.sum()), 4),
        "solver": {"status": status, "gap": gap},
        "stats_data": stats.manifest.get("data"),
        "importance": method.importance,
        "published": method.published,
        **(
            {"veq_gamma": gamma, "gamma_source": _gamma_source(stats, opts)}
            if method.importance == "veq-ma"
            else {}
        ),
        **({"notes": notes} if notes else {}),
    }
    return Allocation(
        plan,
        text_b,
        mm_b,
        reserve,
        expert_bytes,
        int(items.params.sum()),
        items,
        choice,
        cands,
        chosen_attn,
        attn_bytes,
        next(iter(tensors.values())).n_expert,
        status,
        gap,
        time.perf_counter() - t0,
        notes,
        chosen_shared,
        shared_bytes,
        chosen_dense,
        dense_bytes,
    )
