"""Streamed calibration speed and memory on Qwen3-VL-30B-A3B's decoder-layer geometry.

    python benchmarks/calibrate_speed.py [--layers 2] [--samples 128] [--image 224] [--types Q2_K,Q4_K,Q6_K]

Random weights with the real text geometry (hidden 2048, 128 experts, top-8, expert width 768,
32 query / 4 KV heads of 128) and a small vision tower; `--samples` image+question samples of
`--image` pixels square. Runs `calibrate` in a fresh process and reports tokens/s (tokens x
layers / time) and peak RSS (VmHWM) against the target: one layer's weights (F32, as
calibration holds them) + the activations of all samples + 2 GB. Baseline in the same run: the
same process that only loads every layer once (the floor any streaming design pays).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's testbed/

RUN = """
import re, sys, time, json
from pathlib import Path
from mode_edge.calibrate.runner import calibrate, CalibrationOptions
model, data, out, types, samples = sys.argv[1:6]
t = time.perf_counter()
calibrate(Path(model), Path(data), Path(out), CalibrationOptions(samples=int(samples), types=types.split(","), probes=4))
dt = time.perf_counter() - t
m = json.loads((Path(out) / "manifest.json").read_text())
print(dt, m["tokens"]["total"], re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
"""

LOAD_ONLY = """
import re, sys, time
from pathlib import Path
from mode_edge.formats.checkpoint import Checkpoint
from mode_edge.arch import architecture_for
conv = architecture_for(Checkpoint(sys.argv[1]))
cal = conv.calibration()
t = time.perf_counter()
for il in range(cal.n_layers):
    layer = cal.load_layer(il)
    del layer
dt = time.perf_counter() - t
print(dt, 0, re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
"""


def run(code: str, *args) -> tuple[float, int, float]:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    dt, tokens, kb = proc.stdout.split()[-3:]
    return float(dt), int(tokens), int(kb) / 1024


def main() -> None:
    from PIL import Image

    from testbed.tiny_qwen3_vl_moe import build_real_geometry_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--types", default="Q2_K,Q4_K,Q6_K")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="calib-bench-", dir=".") as tmp:
        tmp = Path(tmp)
        model = build_real_geometry_model(tmp / "model", args.layers)
        data = tmp / "data"
        (data / "images").mkdir(parents=True)
        lines = []
        for i in range(args.samples):
            Image.new("RGB", (args.image, args.image), (200 + i % 50, 220, 230)).save(
                data / "images" / f"{i}.png"
            )
            lines.append(
                json.dumps({"image": f"images/{i}.png", "prompt": f"Describe picture {i} in one word."})
            )
        (data / "prompts.jsonl").write_text("\n".join(lines))
        base_t, _, base_m = run(LOAD_ONLY, model)
        dt, tokens, peak = run(RUN, model, data, tmp / "stats", args.types, args.samples)
    layer_mb = 128 * 3 * 2048 * 768 * 4 / 2**20 + (2048 * 4096 * 2 + 2048 * 512 * 2) * 4 / 2**20
    act_mb = tokens * 2048 * 4 / 2**20
    target = layer_mb + act_mb + 2048
    print(
        f"{args.layers} layers x (128 experts, hidden 2048, expert 768, top-8); {args.samples} samples, "
        f"{tokens} tokens per layer; sensitivity types {args.types}"
    )
    print(
        f"{'run':<22} {'seconds':>8} {'tokens/s':>9} {'peak RSS MiB':>13} {'target MiB':>11} {'RSS/target':>11}"
    )
    print(f"{'load layers only':<22} {base_t:>8.1f} {'-':>9} {base_m:>13.0f} {'-':>11} {'-':>11}")
    print(
        f"{'calibrate (streamed)':<22} {dt:>8.1f} {tokens * args.layers / dt:>9.1f} {peak:>13.0f} "
        f"{target:>11.0f} {peak / target:>11.2f}"
    )


if __name__ == "__main__":
    main()
