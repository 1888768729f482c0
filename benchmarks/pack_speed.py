"""Pack speed and memory: mode-edge's quantizer vs llama.cpp's llama_model_quantize.

    python benchmarks/pack_speed.py [--layers 1] [--types Q4_K Q2_K] [--threads 2] [--repeats 3]

Model: random weights with Qwen3-VL-30B-A3B's expert geometry (128 experts, hidden 2048,
expert width 768, top-8) but few layers. Same input data (llama.cpp reads our F32 GGUF of
it; we read the HF checkpoint), same pure type, same thread count. Each run is a fresh
process; times are medians and exclude interpreter start-up. Peak RSS is VmHWM.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's testbed/

OURS = """
import re, sys, time
from gguf import GGMLQuantizationType as T
from mode_edge.formats.plan import QuantPlan
from mode_edge.gguf.export import export_model
model, out, qtype, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t = time.perf_counter()
export_model(model, out, None, plan=QuantPlan(default=T[qtype]), label="bench", n_threads=threads)
dt = time.perf_counter() - t
print(dt, re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
"""

LLAMA = """
import re, sys, time
import llama_cpp
src, dst, qtype, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M"}.get(qtype, qtype))
p.pure = True
p.nthread = threads
t = time.perf_counter()
assert llama_cpp.llama_model_quantize(src.encode(), dst.encode(), p) == 0
dt = time.perf_counter() - t
print(dt, re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
"""


def run(code: str, *args) -> tuple[float, float]:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    dt, kb = proc.stdout.split()[-2:]
    return float(dt), int(kb) / 1024


def main() -> None:
    from gguf import GGUFReader

    from mode_edge.gguf.export import export_model
    from testbed.tiny_qwen3_vl_moe import build_real_geometry_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--types", nargs="+", default=["Q4_K", "Q2_K", "IQ4_XS"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="pack-bench-", dir=".") as tmp:
        tmp = Path(tmp)
        model = build_real_geometry_model(tmp / "model", args.layers)
        f32 = export_model(model, tmp / "f32", "f32").text_path
        reader = GGUFReader(f32)
        n_params = sum(int(t.n_elements) for t in reader.tensors)
        largest_mb = max(int(t.n_bytes) for t in reader.tensors) / 2**20
        del reader
        rows = []
        for qtype in args.types:
            ours = [
                run(OURS, model, tmp / f"ours-{qtype}-{i}", qtype, args.threads) for i in range(args.repeats)
            ]
            ref = [
                run(LLAMA, f32, tmp / f"ref-{qtype}-{i}.gguf", qtype, args.threads)
                for i in range(args.repeats)
            ]
            for i in range(args.repeats):
                (tmp / f"ref-{qtype}-{i}.gguf").unlink()
            o_t, r_t = statistics.median(x[0] for x in ours), statistics.median(x[0] for x in ref)
            o_m, r_m = statistics.median(x[1] for x in ours), statistics.median(x[1] for x in ref)
            rows.append((qtype, o_t, r_t, o_m, r_m))

    print(
        f"model: {args.layers} MoE layer(s) x 128 experts, hidden 2048, expert width 768; "
        f"{n_params / 1e6:.0f} M params; largest tensor {largest_mb:.0f} MiB (F32); {args.threads} threads; "
        f"median of {args.repeats}"
    )
    print(
        f"{'type':<7} {'ours s':>7} {'llama s':>8} {'ours Mp/s':>10} {'llama Mp/s':>11} {'speed vs llama':>15} "
        f"{'ours RSS MiB':>13} {'llama RSS MiB':>14} {'ours RSS / largest':>19}"
    )
    for qtype, o_t, r_t, o_m, r_m in rows:
        print(
            f"{qtype:<7} {o_t:>7.2f} {r_t:>8.2f} {n_params / o_t / 1e6:>10.1f} {n_params / r_t / 1e6:>11.1f} "
            f"{r_t / o_t:>14.2f}x {o_m:>13.0f} {r_m:>14.0f} {o_m / largest_mb:>19.2f}"
        )


if __name__ == "__main__":
    main()
