"""Tables and the KLD-vs-bytes plot of benchmarks/quality.py's rows (OUT/quality.jsonl).

python benchmarks/quality_report.py OUT     reprint OUT/quality.txt and redraw OUT/quality.png
"""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

PRESETS = ("Q2_K_S", "IQ2_M", "IQ3_XXS", "Q3_K_M", "Q4_K_M")
FIELDS = (
    ("vision", "vis%", 100, 1),
    ("text", "text%", 100, 1),
    ("kl_vision", "KLDv", 1e4, 3),
    ("kl_text", "KLDt", 1e4, 3),
    ("kl", "KLD", 1e4, 3),
    ("top1", "top1%", 100, 1),
)


def _ok(rows: list[dict], split: str = "bench") -> list[dict]:
    return [r for r in rows if "error" not in r and r.get("split", "bench") == split]


def row_key(r: dict) -> tuple:
    """What a row measured: file, seed, split, and for held-out rows where the samples start
    (rows from before the start was recorded all started at 100000)."""
    split = r.get("split", "bench")
    return (r["name"], str(r["seed"]), split, r.get("start", 100_000) if split == "heldout" else None)


def _by_name(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["name"], []).append(r)
    return out


def _mean_sd(v: list[float]) -> tuple[float, float]:
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def summary(rows: list[dict], split: str = "bench") -> list[str]:
    """One line per file kind: means over seeds (sd after the KLD)."""
    head = (
        f"{'file':<30} {'n':>2} {'MB':>7} {'bpw':>6} "
        + " ".join(f"{h:>7}" for _, h, _, _ in FIELDS)
        + "  KLD sd"
    )
    out = [head]
    for name, rs in _by_name(_ok(rows, split)).items():
        cells = []
        for f, _, scale, digits in FIELDS:
            v = [scale * r[f] for r in rs if r.get(f) is not None]
            cells.append(f"{statistics.fmean(v):>7.{digits}f}" if v else f"{'-':>7}")
        kl = [1e4 * r["kl"] for r in rs if r.get("kl") is not None]
        bpw = [r["bpw"] for r in rs if r.get("bpw") is not None]
        out.append(
            f"{name:<30} {len(rs):>2} {statistics.fmean(r['bytes'] for r in rs) / 1e6:>7.3f} "
            f"{(statistics.fmean(bpw) if bpw else float('nan')):>6.3f} "
            + " ".join(cells)
            + f"  {_mean_sd(kl)[1]:.3f}"
        )
    return out


def paired_wins(rows: list[dict], default: str, budget: str, field: str = "kl") -> list[str]:
    """How many seeds the default's file beats each other row at the same budget."""
    ok = _ok(rows)
    mine = {str(r["seed"]): r[field] for r in ok if r["name"] == f"{default}@{budget}"}
    others = sorted(
        {r["name"] for r in ok if r["name"].endswith(f"@{budget}") and r["name"] != f"{default}@{budget}"}
    )
    out = []
    for name in others:
        theirs = {str(r["seed"]): r[field] for r in ok if r["name"] == name}
        seeds = sorted(set(mine) & set(theirs))
        if seeds:
            wins = sum(mine[s] < theirs[s] for s in seeds)
            ratio = statistics.fmean(mine[s] for s in seeds) / max(
                1e-30, statistics.fmean(theirs[s] for s in seeds)
            )
            out.append(
                f"  {default}@{budget} beats {name:<28} in {wins}/{len(seeds)} seeds (mean KLD ratio {ratio:.3f})"
            )
    return out


def preset_lines(rows: list[dict], default: str) -> list[str]:
    ok = _ok(rows)
    out = [
        f"{'preset':<8} {'MB':>7} {'KLDv':>7} {'KLDt':>7}   {'default @ size':<24} {'KLDv':>7} {'KLDt':>7} "
        f"{'v ratio':>7} {'t ratio':>7}  goal <= 0.333 both"
    ]
    for p in PRESETS:
        pre = [r for r in ok if r["name"] == f"preset {p}"]
        if not pre:
            continue
        pv, pt = (statistics.fmean(r[f] for r in pre) for f in ("kl_vision", "kl_text"))
        for tag in ("", "=preset"):
            at = [r for r in ok if r["name"] == f"{default}@{p}{tag}"]
            if not at:
                continue
            dv, dt = (statistics.fmean(r[f] for r in at) for f in ("kl_vision", "kl_text"))
            goal = "met" if dv <= pv / 3 and dt <= pt / 3 else "missed"
            out.append(
                f"{p:<8} {statistics.fmean(r['bytes'] for r in pre) / 1e6:>7.3f} {1e4 * pv:>7.3f} "
                f"{1e4 * pt:>7.3f}   {default + '@' + p + tag:<24} {1e4 * dv:>7.3f} {1e4 * dt:>7.3f} "
                f"{dv / pv:>7.3f} {dt / pt:>7.3f}  {goal}"
            )
    return out


def plot(rows: list[dict], path: Path, default: str, model: str = "demo model") -> None:
    """KLD (log) vs total bytes: uniform types as a line, presets as points, methods as lines over
    the three budgets, the default at each preset's size as points (means over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = _ok(rows)
    by = _by_name(ok)

    def point(name: str) -> tuple[float, float] | None:
        rs = [r for r in by.get(name, []) if r.get("kl")]
        return (
            (statistics.fmean(r["bytes"] for r in rs) / 1e6, statistics.fmean(r["kl"] for r in rs))
            if rs
            else None
        )

    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    uni = [p for p in (point(f"all {t}") for t in ("Q2_K", "Q3_K", "Q4_K")) if p] + [
        p for p in [point("Q8_0")] if p
    ]
    if uni:
        ax.plot(*zip(*uni), "k--", marker="s", label="uniform Q2_K / Q3_K / Q4_K / Q8_0")
    methods = sorted({r["name"].split("@")[0] for r in ok if r.get("kind") == "method"})
    for m in methods:
        pts = sorted(p for p in (point(f"{m}@{w}") for w in ("W1", "W2", "W3")) if p)
        if pts:
            style = dict(lw=2.5, color="tab:red") if m == default else dict(lw=1, alpha=0.8)
            ax.plot(*zip(*pts), marker="o", ms=3, label=m, **style)
    for p in PRESETS:
        pt = point(f"preset {p}")
        if pt:
            ax.scatter(*pt, marker="^", s=60, color="tab:blue", zorder=5)
            ax.annotate(p, pt, textcoords="offset points", xytext=(4, 4), fontsize=8, color="tab:blue")
        for tag, mk in (("", "*"), ("=preset", "P")):
            d = point(f"{default}@{p}{tag}")
            if d:
                ax.scatter(*d, marker=mk, s=80, color="tab:red", zorder=6)
    ax.scatter([], [], marker="^", color="tab:blue", label="llama.cpp presets (same imatrix)")
    ax.scatter(
        [], [], marker="*", s=80, color="tab:red", label=f"{default} at each preset's bytes (--other Q8_0)"
    )
    ax.scatter(
        [],
        [],
        marker="P",
        s=80,
        color="tab:red",
        label=f"{default} at each preset's bytes (non-experts = preset)",
    )
    ax.set_yscale("log")
    ax.set_xlabel("total bytes of both GGUF files (MB)")
    ax.set_ylabel("KL(F32 || file) per answer token (nats, log)")
    ax.set_title(f"{model}: KLD vs size (mean over calibration seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def per_row(rows: list[dict]) -> list[str]:
    out = [
        f"{'file':<30} {'seed':>4} {'split':>7} {'bytes':>10} " + " ".join(f"{h:>7}" for _, h, _, _ in FIELDS)
    ]
    for r in rows:
        if "error" in r:
            out.append(f"{r['name']:<30} {r['seed']!s:>4}  {r['error']}")
            continue
        cells = [f"{s * r[f]:>7.{d}f}" if r.get(f) is not None else f"{'-':>7}" for f, _, s, d in FIELDS]
        out.append(
            f"{r['name']:<30} {r['seed']!s:>4} {r.get('split', 'bench'):>7} {r['bytes']:>10,} "
            + " ".join(cells)
        )
    return out


def report(rows: list[dict], out: Path, default: str | None = None, model: str = "demo model") -> str:
    from mode_edge.allocate.methods import DEFAULT_METHOD

    default = default or DEFAULT_METHOD
    budgets = sorted({m.group(1) for r in rows if (m := re.search(r"@(W\d)$", r["name"]))}, reverse=True)
    lines = [
        "KLD in 1e-4 nats per answer token vs the F32 file; accuracy = exact match; top1 = answer positions",
        "whose argmax equals F32's. Means over calibration seeds; 'KLD sd' is the seed standard deviation.",
        "",
        *summary(rows),
        "",
        f"paired by seed (KLD on all answers), default = {default}:",
    ]
    for w in budgets:
        lines += paired_wins(rows, default, w)
    lines += [
        "",
        "llama.cpp presets vs the default at the preset's exact total bytes (means over seeds):",
        *preset_lines(rows, default),
    ]
    held = _ok(rows, "heldout")
    for start in sorted({row_key(r)[3] for r in held}):  # one check per start: never pooled
        at = [r for r in held if row_key(r)[3] == start]
        lines += ["", f"held-out check (test samples from {start} on):", *summary(at, "heldout")]
        for w in budgets:
            lines += paired_wins([{**r, "split": "bench"} for r in at], default, w)
    text = "\n".join(lines)
    (out / "quality.txt").write_text(text + "\n\nper file:\n" + "\n".join(per_row(rows)) + "\n")
    if _ok(rows):
        plot(rows, out / "quality.png", default, model)
    return text


if __name__ == "__main__":
    import json

    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/mode-quality")
    data = [json.loads(x) for x in (folder / "quality.jsonl").read_text().splitlines()]
    print(report(data, folder, model=sys.argv[2] if len(sys.argv) > 2 else "demo model"))
