"""Quality at equal bytes: every allocation method on the demo model, evaluated through llama.cpp.

    python benchmarks/quality.py [--model examples/demo-model] [--data DIR] [--limit 312]
                                 [--seeds 0 1] [--methods mode frequency …] [--out /tmp/mode-quality]

Calibration data: without --data, the first 256 samples of the generator's calibration split
(the demo model's own calibration/ folder holds the first 128); each seed draws its --samples
from them. For each calibration seed: calibrate once (all ladder types, so W2-class budgets can use the
IQ2 types), then for three budgets -- W3-class (3.2 bits per routed-expert weight), W2-class
(2.45) and W1-class (2.1) -- and both granularities, plan with every method and pack; plus F32, Q8_0 and uniform
Q4_K/Q3_K/Q2_K references (uniform files use calibration's plain importance matrix). Every
file is evaluated with `mode-edge eval`'s engine (llama.cpp, images included) against the F32
file: exact match per family, KL divergence, and relative loss vs F32. Files whose experts
differ in type need the patched runtime (issue 7); on a stock build their rows say so.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mode_edge.allocate.allocator import AllocOptions, allocate, method_importance
from mode_edge.allocate.budget import Budget
from mode_edge.allocate.methods import METHODS
from mode_edge.allocate.plan import QuantPlan
from mode_edge.calibrate.runner import CalibrationOptions, calibrate
from mode_edge.gguf.export import export_model
from mode_edge.quant_types import LADDER, bits_per_weight, parse_type
from mode_edge.quantize.imatrix import Imatrix
from mode_edge.signals.stats import ExpertStats
from mode_edge.testbed.tasks import export_split

# W1 (2.1) sits just above IQ2_XXS (2.06): nearly every expert at the lowest type, so which few
# experts a method spares decides the accuracy
BUDGETS = {"W3": 3.2, "W2": 2.45, "W1": 2.1}
BASELINE_METHODS = ["uniform", "frequency", "hessian", "veq", "mode", "mode-text", "mode-pooled",
                    "mode-allvision", "mode-nosens"]


REF_CACHE: dict = {}  # the F32 reference's answer logits, computed once for all files


def _eval(path: Path, reference: Path | None, limit: int) -> dict:
    from mode_edge.evaluate import evaluate

    try:
        r = evaluate(path, limit=limit, reference=reference, reference_cache=REF_CACHE)
    except Exception as e:  # a grouped file on a stock build, typically
        return {"error": f"{type(e).__name__}: {str(e)[:80]}"}
    return {"vision": r.families.get("vision", {}).get("accuracy"), "text": r.families.get("text", {}).get("accuracy"),
            "kl": r.kl_mean}


def _size(out: Path) -> int:
    return sum(p.stat().st_size for p in out.glob("*.gguf") if not p.name.startswith("plan"))


def summary(rows: list[dict]) -> list[str]:
    """One line per file kind: mean vision / text accuracy and KLD over the calibration seeds."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if "error" not in r and r["seed"] != "-":
            groups.setdefault(r["name"], []).append(r)
    out = [f"{'file':<32} {'n':>2} {'vision':>14} {'text':>14} {'KLD x1e4':>16}"]
    for name, rs in groups.items():
        cells = []
        for f, scale, digits in (("vision", 100, 1), ("text", 100, 1), ("kl", 1e4, 3)):
            v = [scale * r[f] for r in rs]
            cells.append(f"{sum(v) / len(v):>7.{digits}f} ±{(max(v) - min(v)):<5.{digits}f}")
        out.append(f"{name:<32} {len(rs):>2} {cells[0]:>14} {cells[1]:>14} {cells[2]:>16}")
    return out


def render(rows: list[dict]) -> str:
    """The table: one line per file and seed, then the means over seeds."""
    base = rows[0]
    table = [f"{'file':<32} {'seed':>4} {'bytes':>10} {'bpw':>6} {'vision':>7} {'text':>7} {'KLDx1e4':>8} "
             f"{'rel.loss v/t %':>15}"]
    for r in rows:
        if "error" in r:
            table.append(f"{r['name']:<32} {r['seed']!s:>4}  {r['error']}")
            continue
        rel = [100 * (base[f] - r[f]) / base[f] if base[f] else float("nan") for f in ("vision", "text")]
        table.append(f"{r['name']:<32} {r['seed']!s:>4} {r['bytes']:>10,} {r['bpw'] or 0:>6.3f} "
                     f"{100 * r['vision']:>6.1f}% {100 * r['text']:>6.1f}% {1e4 * (r['kl'] or 0):>8.3f} "
                     f"{rel[0]:>7.1f}/{rel[1]:<7.1f}")
    table += ["", "mean over seeds (spread = max - min):", *summary(rows)]
    return "\n".join(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("examples/demo-model"))
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--limit", type=int, default=312)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--methods", nargs="+", default=BASELINE_METHODS, choices=list(METHODS))
    ap.add_argument("--budgets", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    ap.add_argument("--granularities", nargs="+", default=["expert", "tensor"])
    ap.add_argument("--out", type=Path, default=Path("/tmp/mode-quality"))
    ap.add_argument("--table", type=Path, metavar="QUALITY_JSON", help="only print the table of an earlier run")
    args = ap.parse_args()
    if args.table:
        print(render(json.loads(args.table.read_text())))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    # the test split and this pool come from the same generator (mode_edge/testbed/tasks.py)
    data = args.data or export_split(args.out / "calibration-256", "calibration", 256)
    rows: list[dict] = []

    f32 = export_model(args.model, args.out / "f32", "f32")
    ref = f32.text_path
    t0 = time.perf_counter()
    rows.append({"name": "F32", "seed": "-", "bytes": _size(args.out / "f32"), "bpw": 32.0,
                 **_eval(ref, ref, args.limit)})
    q8 = export_model(args.model, args.out / "q8_0", "q8_0")
    rows.append({"name": "Q8_0", "seed": "-", "bytes": _size(q8.text_path.parent), "bpw": 8.5,
                 **_eval(q8.text_path, ref, args.limit)})
    for seed in args.seeds:
        stats_dir = calibrate(args.model, data, args.out / f"stats-{seed}",
                              CalibrationOptions(samples=args.samples, seed=seed, types=[t.name for t in LADDER]))
        stats = ExpertStats.load(stats_dir)
        plain = Imatrix.load(stats_dir / "imatrix.gguf")
        for t in ("Q4_K", "Q3_K", "Q2_K"):
            out = args.out / f"uniform-{t}-{seed}"
            r = export_model(args.model, out, None, plan=QuantPlan(method=f"uniform:{t}", default=parse_type(t)),
                             label=t.lower(), imatrix=plain)
            rows.append({"name": f"all {t}", "seed": seed, "bytes": _size(out), "bpw": bits_per_weight(parse_type(t)),
                         **_eval(r.text_path, ref, args.limit)})
            print(json.dumps(rows[-1]), flush=True)
        for budget in args.budgets:
            for gran in args.granularities:
                for method in args.methods:
                    if method == "uniform" and gran == "tensor":
                        continue  # the same file as uniform/expert
                    opts = AllocOptions(method=method, granularity=gran)
                    try:
                        alloc = allocate(stats, args.model, Budget(bpw=BUDGETS[budget]), opts)
                    except Exception as e:
                        rows.append({"name": f"{method}/{gran}@{budget}", "seed": seed, "error": str(e)[:80]})
                        continue
                    out = args.out / f"{method}-{gran}-{budget}-{seed}"
                    r = export_model(args.model, out, None, plan=alloc.plan, label=method,
                                     imatrix=method_importance(stats, opts))
                    rows.append({"name": f"{method}/{gran}@{budget}", "seed": seed, "bytes": _size(out),
                                 "bpw": round(alloc.expert_bpw, 3), **_eval(r.text_path, ref, args.limit)})
                    print(json.dumps(rows[-1]), flush=True)
    (args.out / "quality.txt").write_text(render(rows) + "\n")
    (args.out / "quality.json").write_text(json.dumps(rows, indent=1))
    print("\n" + render(rows))
    print(f"\n{time.perf_counter() - t0:.0f} s; rows in {args.out / 'quality.json'}")


if __name__ == "__main__":
    main()
