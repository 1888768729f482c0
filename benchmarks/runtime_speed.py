"""Runtime speed: a file with expert groups vs the stock file of about the same size.

    python benchmarks/runtime_speed.py [--layers 3] [--threads 2] [--repeats 3]

Model: random weights with Qwen3-VL-30B-A3B's expert geometry (128 experts, hidden 2048,
expert width 768, top-8), few layers. Stock: every matrix Q4_K (4.5 bpw). Grouped: experts
alternate Q3_K / Q5_K (3.44 / 5.5 bpw, 4.47 on average: the same size within 1%), everything
else Q4_K, so each expert tensor is two interleaved groups. Prefill of 512 tokens in one batch
and decode of 128 tokens one at a time, through llama-cpp-python on the CPU; each run is a
fresh process that makes three passes (prefill: the fastest; decode: the median time per
token); the files take turns (one round = each file once) and ratios are medians of the
per-round ratios. "groups Q4_K x2 / x4 / x8" is the stock file with its experts split into
two / four / eight interleaved groups of the same type: the cost of grouping alone, with the
same kernels (Q3_K and Q5_K have kernels of their own speed, so the mixed row also measures the types; the
stock Q3_K and Q5_K files, every expert one type, give the time those kernels take without
groups: the last line sets the mixed file against the mean of their times, round by round).
The fallback path (ids clamped, outputs masked, what backends without the skip kernel run) is
measured with MODE_EDGE_GROUPS_FALLBACK=1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's testbed/

RUN = """
import sys, time
import numpy as np
import llama_cpp
path, n_prompt, n_gen, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if sys.argv[5] == "0":  # weights in plain CPU memory, not ggml's repacked layouts
    from mode_edge.runtime.unpacked import load_weights_unpacked
    load_weights_unpacked()
# use_mmap=False: every weight is read at load, so no timed eval waits on page faults (the
# files take turns and evict each other from the page cache)
llm = llama_cpp.Llama(path, n_ctx=n_prompt + n_gen + 8, n_batch=n_prompt, n_ubatch=n_prompt, n_threads=threads,
                      n_threads_batch=threads, use_mmap=False, verbose=False)
toks = [int(t) for t in np.random.default_rng(0).integers(20, llm.n_vocab() - 20, n_prompt)]
# three passes over the same tokens (KV cache cleared between): prefill is the fastest pass, decode
# the median time per token, so a burst of load from elsewhere on a shared machine moves neither
prefill, per_token = [], []
for _ in range(3):
    llm.reset()
    llm._ctx.kv_cache_clear()
    t = time.perf_counter(); llm.eval(toks); prefill.append(time.perf_counter() - t)
    for i in range(n_gen):
        t = time.perf_counter(); llm.eval([toks[i]]); per_token.append(time.perf_counter() - t)
print(n_prompt / min(prefill), 1 / float(np.median(per_token)))
"""


def measure(path: Path, threads: int, env: dict | None = None, repack: bool = True) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", RUN, str(path), "512", "128", str(threads), "1" if repack else "0"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    ).stdout.split()
    return float(out[0]), float(out[1])


def interleaved(rows: list, threads: int, repeats: int, repack: bool = True) -> tuple[list[dict], list]:
    """Every file once per round, rounds repeated; ratios are taken within a round (against the
    first row) and their median reported, so a machine that slows down mid-run moves every row
    of a round alike instead of skewing the ratios."""
    runs = [[measure(path, threads, env, repack) for _, path, env in rows] for _ in range(repeats)]
    out = []
    for i, (name, path, _) in enumerate(rows):
        pre, dec = [r[i][0] for r in runs], [r[i][1] for r in runs]
        out.append(
            {
                "name": name,
                "mb": path.stat().st_size / 1e6,
                "prefill": statistics.median(pre),
                "decode": statistics.median(dec),
                "prefill_ratio": statistics.median(r[i][0] / r[0][0] for r in runs),
                "decode_ratio": statistics.median(r[i][1] / r[0][1] for r in runs),
                "prefill_ratios": [r[i][0] / r[0][0] for r in runs],
                "decode_ratios": [r[i][1] / r[0][1] for r in runs],
            }
        )
    return out, runs


def main() -> None:
    from gguf import GGMLQuantizationType as T

    from mode_edge.arch import architecture_for
    from mode_edge.formats.checkpoint import Checkpoint
    from mode_edge.formats.plan import QuantPlan
    from mode_edge.formats.tensors import Role
    from mode_edge.gguf.export import export_model
    from mode_edge.runtime.build import GROUPS, capabilities
    from testbed.tiny_qwen3_vl_moe import build_real_geometry_model

    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--layers", type=int, default=3
    )  # 2 text layers with 2 deepstack layers trips a llama.cpp assert
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--no-repack",
        action="store_true",
        help="keep weights out of ggml's repacked CPU layouts (use_extra_bufts off), in every row: "
        "decoding then runs all expert groups in one op",
    )
    args = ap.parse_args()
    if not capabilities() & GROUPS:
        sys.exit("the installed llama.cpp is stock: run `mode-edge runtime build` first")
    with tempfile.TemporaryDirectory(prefix="mode-edge-rt-") as tmp:
        tmp = Path(tmp)
        model = build_real_geometry_model(tmp / "model", args.layers)
        stock = export_model(
            model, tmp / "stock", None, plan=QuantPlan(default=T.Q4_K), label="q4_k"
        ).text_path
        plan = QuantPlan(default=T.Q4_K, method="alternating")
        for s in architecture_for(Checkpoint(model)).text_tensors():
            if s.role == Role.EXPERT:
                plan.tensors[s.name] = [T.Q3_K if e % 2 == 0 else T.Q5_K for e in range(s.n_expert)]
        grouped = export_model(model, tmp / "grouped", None, plan=plan, label="q3k-q5k").text_path
        one_type = {}
        for t in (T.Q3_K, T.Q5_K):  # the mixed file's kernels without groups
            p = QuantPlan(default=T.Q4_K, method=f"all-{t.name}")
            for s in architecture_for(Checkpoint(model)).text_tensors():
                if s.role == Role.EXPERT:
                    p.tensors[s.name] = t
            one_type[t] = export_model(model, tmp / t.name, None, plan=p, label=t.name.lower()).text_path
        # the grouping overhead alone: the stock file's Q4_K experts split into two interleaved groups
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.gguf_rewrite import regroup

        mmproj = next(stock.parent.glob("mmproj-*.gguf"))
        same = {}
        for n in (2, 4, 8):  # a MODE file has one group per type it uses (3 in the README's 7MB demo file)
            same[n] = tmp / f"same{n}" / "groups-q4_k.gguf"
            same[n].parent.mkdir()
            regroup(stock, same[n], n_groups=n)
            (same[n].parent / mmproj.name).write_bytes(mmproj.read_bytes())
        rows = [
            ("stock Q4_K", stock, None),
            ("groups Q4_K x2, skip", same[2], None),
            ("groups Q4_K x4, skip", same[4], None),
            ("groups Q4_K x8, skip", same[8], None),
            ("groups Q3_K/Q5_K, skip", grouped, None),
            ("groups Q3_K/Q5_K, fallback", grouped, {"MODE_EDGE_GROUPS_FALLBACK": "1"}),
            ("stock Q3_K experts", one_type[T.Q3_K], None),
            ("stock Q5_K experts", one_type[T.Q5_K], None),
        ]
        print(
            f"{args.layers} layers x 128 experts (hidden 2048, width 768, top-8); {args.threads} threads; "
            f"{args.repeats} interleaved rounds; medians, ratios vs stock within each round; "
            f"{'no repacked weights' if args.no_repack else 'repacked weights where ggml repacks'}"
        )
        print(
            f"{'file':<28} {'MB':>8} {'prefill tok/s':>14} {'ratio':>6} {'decode tok/s':>13} {'ratio':>6}"
            "   ratio range (prefill; decode)"
        )
        table, runs = interleaved(rows, args.threads, args.repeats, not args.no_repack)
        for r in table:
            print(
                f"{r['name']:<28} {r['mb']:>8.1f} {r['prefill']:>14.1f} {r['prefill_ratio']:>6.3f} "
                f"{r['decode']:>13.2f} {r['decode_ratio']:>6.3f}   "
                f"{min(r['prefill_ratios']):.3f}-{max(r['prefill_ratios']):.3f}; "
                f"{min(r['decode_ratios']):.3f}-{max(r['decode_ratios']):.3f}",
                flush=True,
            )
        # the mixed file against its own kernels: half the experts Q3_K, half Q5_K, so without any
        # cost of grouping it would take the mean of the two one-type files' times
        mix, q3, q5 = (
            next(i for i, r in enumerate(rows) if r[0] == n)
            for n in ("groups Q3_K/Q5_K, skip", "stock Q3_K experts", "stock Q5_K experts")
        )
        for k, what in ((0, "prefill"), (1, "decode")):
            ratios = [r[mix][k] * (1 / r[q3][k] + 1 / r[q5][k]) / 2 for r in runs]
            print(
                f"Q3_K/Q5_K groups vs the mean time of stock Q3_K and Q5_K, {what}: "
                f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
            )


if __name__ == "__main__":
    main()
