"""Conversion throughput and peak memory, mode-edge vs reading the weights alone.

    python benchmarks/convert_speed.py [--layers 2 8 16] [--repeats 3]

Builds tiny random Qwen3-VL-MoE checkpoints of growing depth and, for each, times (median of
repeats, in a fresh process) (a) the baseline: reading every tensor of the checkpoint with
safetensors and dropping it, and (b) `mode-edge convert --precision f16` / `q8_0`.
Prints a table with the ratios convert/baseline and each run's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's testbed/

BASELINE = """
import re, sys, time
from safetensors import safe_open
from pathlib import Path
t = time.perf_counter()
for shard in sorted(Path(sys.argv[1]).glob("*.safetensors")):
    with safe_open(str(shard), framework="pt") as f:
        for k in f.keys():
            f.get_tensor(k).float().numpy().copy()
dt = time.perf_counter() - t
print(dt, re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
"""

CONVERT = """
import re, sys, time
from mode_edge.gguf.export import export_model
t = time.perf_counter()
export_model(sys.argv[1], sys.argv[2], sys.argv[3])
dt = time.perf_counter() - t
print(dt, re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
"""


def run(code: str, *args: str) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    ).stdout
    dt, kb = out.split()
    return float(dt), int(kb) / 1024


def main() -> None:
    from testbed.tiny_qwen3_vl_moe import build_tiny_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 8, 16])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.layers:
            model = build_tiny_model(Path(tmp) / f"m{n}", n_layers=n, layout="published")
            size = sum(p.stat().st_size for p in model.glob("*.safetensors")) / 1e6
            base = [run(BASELINE, str(model)) for _ in range(args.repeats)]
            b_t = statistics.median(x[0] for x in base)
            b_m = statistics.median(x[1] for x in base)
            for prec in ("f16", "q8_0"):
                res = [
                    run(CONVERT, str(model), str(Path(tmp) / f"o{n}-{prec}-{i}"), prec)
                    for i in range(args.repeats)
                ]
                c_t = statistics.median(x[0] for x in res)
                c_m = statistics.median(x[1] for x in res)
                rows.append((n, size, prec, b_t, c_t, c_t / b_t, b_m, c_m))
    print(
        f"{'layers':>6} {'ckpt MB':>8} {'prec':>5} {'read s':>7} {'convert s':>9} {'ratio':>6} "
        f"{'read RSS MB':>11} {'convert RSS MB':>14}"
    )
    for n, size, prec, b_t, c_t, r, b_m, c_m in rows:
        print(f"{n:>6} {size:>8.1f} {prec:>5} {b_t:>7.2f} {c_t:>9.2f} {r:>6.2f} {b_m:>11.0f} {c_m:>14.0f}")


if __name__ == "__main__":
    main()
