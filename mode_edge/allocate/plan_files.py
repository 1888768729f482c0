"""What a plan is: bytes per part, bits per expert weight, a types histogram, and plan.png
(a heatmap of layers x experts coloured by bits, with the text and key-vision frequency of
each expert beside it). Drawn with PIL: the package has no plotting dependency."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from mode_edge.allocate.allocator import Allocation, AllocOptions, method_importance
from mode_edge.allocate.methods.base import normalised
from mode_edge.files import atomic_path
from mode_edge.formats.imatrix import Imatrix
from mode_edge.formats.quant_types import bits_per_weight, fallback
from mode_edge.formats.stats import KEY, TEXT, ExpertStats


def expert_types(alloc: Allocation) -> dict[tuple[int, int, int], object]:
    """(layer, expert, projection) -> stored type (after fallback)."""
    out = {}
    cands = alloc.candidates
    for (layer, e, projs), c in zip(alloc.items.keys, alloc.choice):
        for p in projs:
            out[layer, e, p] = cands[c]
    return out


def parts(alloc: Allocation) -> list[tuple[str, int]]:
    chosen = [("attention (chosen by the ILP)", alloc.attn_bytes)] if alloc.attn_types else []
    if alloc.shared_types:
        chosen.append(("shared experts (chosen by the ILP)", alloc.shared_bytes))
    if alloc.dense_types:
        chosen.append(("dense-layer FFNs (chosen by the ILP)", alloc.dense_bytes))
    dense = alloc.attn_bytes + alloc.shared_bytes + alloc.dense_bytes
    return [
        ("routed experts", alloc.expert_bytes),
        *chosen,
        ("other text tensors + header", alloc.text_bytes - alloc.expert_bytes - dense),
        ("mmproj file", alloc.mmproj_bytes),
        ("KV-cache reserve", alloc.reserve_bytes),
    ]


def histogram(alloc: Allocation) -> list[tuple[str, int, int]]:
    """(type, expert projections, bytes), smallest type first."""
    units: Counter = Counter()
    nbytes: Counter = Counter()
    rows = np.arange(len(alloc.choice))
    per_item = alloc.items.sizes[rows, alloc.choice]
    for (_layer, e, projs), c, b in zip(alloc.items.keys, alloc.choice, per_item):
        t = alloc.candidates[c].name
        units[t] += len(projs) * (alloc.n_expert if e < 0 else 1)
        nbytes[t] += int(b)
    order = [t.name for t in alloc.candidates]
    return [(t, units[t], nbytes[t]) for t in order if units[t]]


def bits_grid(alloc: Allocation, stats: ExpertStats) -> np.ndarray:
    """[MoE layers, experts] bits per weight of each expert (params-weighted over its projections)."""
    L, E = len(stats.moe_layers), int(stats.manifest["n_experts"])
    hidden, ff = int(stats.manifest["hidden"]), int(stats.manifest["expert_ff"])
    row_size = (hidden, hidden, ff)
    grid = np.zeros((L, E))
    row_of = {layer: i for i, layer in enumerate(stats.moe_layers)}
    for (layer, e, projs), c in zip(alloc.items.keys, alloc.choice):
        t = alloc.candidates[c]
        for p in projs:
            b = bits_per_weight(fallback(t, row_size[p])) / 3.0  # the three projections have equal size
            li = row_of[layer]
            if e < 0:
                grid[li] += b
            else:
                grid[li, e] += b
    return grid


_BITS_RAMP = [
    (2.0, (180, 30, 40)),
    (3.0, (240, 140, 40)),
    (4.5, (240, 220, 80)),
    (6.5, (90, 180, 110)),
    (8.5, (40, 80, 170)),
]


def _ramp(v: float, stops) -> tuple[int, int, int]:
    if v <= stops[0][0]:
        return stops[0][1]
    for (a, ca), (b, cb) in zip(stops, stops[1:]):
        if v <= b:
            f = (v - a) / (b - a)
            return tuple(int(round(x + f * (y - x))) for x, y in zip(ca, cb))
    return stops[-1][1]


def part_bits(alloc: Allocation, stats: ExpertStats, listed_key: str) -> dict[int, float]:
    """{layer: bits per weight} of each layer's shared expert (listed_key "shared_tensors") or
    dense FFN ("dense_tensors"), its three matrices averaged; empty where the model has none."""
    plan = alloc.plan
    out = {}
    for li, names in (stats.manifest.get(listed_key) or {}).items():
        types = [plan.tensors.get(n, plan.default) for n, _ in names]
        out[int(li)] = float(np.mean([bits_per_weight(t) for t in types]))
    return out


def write_png(path: Path, alloc: Allocation, stats: ExpertStats, title: str) -> None:
    from PIL import Image, ImageDraw, ImageFont

    moe = stats.moe_layers
    bits = bits_grid(alloc, stats)
    shared = part_bits(alloc, stats, "shared_tensors") or None
    dense = part_bits(alloc, stats, "dense_tensors")
    f_t = np.stack([normalised(stats.layers[li]["counts"][TEXT]) for li in moe])
    f_v = np.stack([normalised(stats.layers[li]["counts"][KEY]) for li in moe])
    # one row per decoder layer: a dense layer's row is one bar in its FFN's bits, labelled
    row = {li: k for k, li in enumerate(moe)}
    L, E = len(stats.layers), bits.shape[1]
    cw = max(2, min(16, 640 // E))
    ch = max(2, min(16, 480 // L))
    pw, ph = cw * E, ch * L
    gap, top, left, bottom = 24, 40, 40, 60
    sw = 0 if shared is None else 48  # a column for the shared experts, right of the bits panel
    img = Image.new("RGB", (left + 3 * pw + 3 * gap + sw, top + ph + bottom), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((left, 6), title, fill="black", font=font)
    panels = [
        ("bits per weight", lambda li, e: _ramp(bits[li, e], _BITS_RAMP)),
        ("text frequency", _share(f_t, (30, 90, 200))),
        ("key-vision frequency", _share(f_v, (200, 60, 30))),
    ]
    for k, (name, colour) in enumerate(panels):
        x0 = left + k * (pw + gap) + (sw if k else 0)
        d.text((x0, top - 14), name, fill="black", font=font)
        for li in range(L):
            y0, y1 = top + li * ch, top + (li + 1) * ch - 1
            if li not in row:  # a dense layer: no routed experts
                fill = _ramp(dense[li], _BITS_RAMP) if k == 0 and li in dense else (225, 225, 225)
                d.rectangle([x0, y0, x0 + pw - 1, y1], fill=fill)
                if ch >= 10:
                    d.text((x0 + 2, y0), "dense FFN" if k == 0 else "dense layer", fill="black", font=font)
                continue
            for e in range(E):
                d.rectangle([x0 + e * cw, y0, x0 + (e + 1) * cw - 1, y1], fill=colour(row[li], e))
    if shared is not None:
        x0 = left + pw + 8
        d.text((x0, top - 14), "shared", fill="black", font=font)
        for li, b in shared.items():
            d.rectangle([x0, top + li * ch, x0 + sw - 16, top + (li + 1) * ch - 1], fill=_ramp(b, _BITS_RAMP))
    d.text((4, top), "layer", fill="black", font=font)
    d.text(
        (left, top + ph + 4),
        f"experts 0..{E - 1} (left to right), layers top to bottom",
        fill="black",
        font=font,
    )
    x = left
    for t in alloc.candidates:
        bpw = bits_per_weight(t)
        d.rectangle([x, top + ph + 22, x + 12, top + ph + 34], fill=_ramp(bpw, _BITS_RAMP))
        d.text((x + 16, top + ph + 22), f"{t.name} {bpw:.2f}", fill="black", font=font)
        x += 16 + 8 * (len(t.name) + 6)
    with atomic_path(Path(path)) as tmp:
        img.save(tmp, format="PNG")


def save_plan(
    alloc: Allocation, stats: ExpertStats, opts: AllocOptions, path: Path, budget_label: str, png: bool = True
) -> tuple[list[Path], Imatrix]:
    """PLAN.json plus PLAN.imatrix.gguf (the method's importance, which pack picks up) and
    PLAN.png; the plan is written last, so it never names files that are not there. Returns the
    paths written and the importance matrix (so a caller that packs next need not read it back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imatrix_path = path.with_name(path.stem + ".imatrix.gguf")
    imatrix = method_importance(stats, opts)
    imatrix.save(imatrix_path)
    alloc.plan.extra["imatrix"] = imatrix_path.name
    written = [path, imatrix_path]
    if png:
        write_png(
            path.with_suffix(".png"),
            alloc,
            stats,
            f"{alloc.plan.method} @ {budget_label}: {alloc.expert_bpw:.3f} bits per expert weight",
        )
        written.append(path.with_suffix(".png"))
    alloc.plan.save(path)
    return written, imatrix


def _share(grid: np.ndarray, rgb: tuple[int, int, int]):
    top = float(grid.max()) or 1.0

    def colour(li: int, e: int) -> tuple[int, int, int]:
        f = min(1.0, grid[li, e] / top) ** 0.5
        return tuple(int(round(255 + f * (c - 255))) for c in rgb)

    return colour
