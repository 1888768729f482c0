"""Build the 64-expert top-8 testbed from the bundled demo model (issue: a second testbed at the
geometry of real MoE-VLMs). Too big for the repository (about 100 MB in bf16), so this fixed
recipe builds it into a cache folder:

    python -m testbed build-large [--out DIR] [--threads 2]

Recipe: examples/demo-model (16 experts, top-2) upcycled by splitting every expert into 4
fine-grained experts (each holds a quarter of the old units, x4, plus fresh units; see
upcycle.py) -> 64 experts of width 256, top-8, the same function at step 0; then trained on the
hard task suite (mode_edge/evaluate/hard_tasks.py) so that the experts diverge and the harder
tasks are learnt. Deterministic for the seed and thread count. Writes DIR.partial and renames it
to DIR when done, so DIR is always a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from testbed.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo-model"
RECIPE = dict(
    seed=0,
    steps=640,
    vision_rows=24,
    text_rows=6,
    lr=1e-3,
    warmup=30,
    router_aux_loss_coef=0.001,  # Qwen3-MoE's coefficient: routing may specialise as in real models
    eval_every=160,
    eval_samples=208,
    upcycle=4,
    upcycle_mode="split",
    upcycle_router_noise=0.01,
    suite="hard",
)


def default_dir() -> Path:
    base = os.environ.get("MODE_EDGE_CACHE") or Path.home() / ".cache" / "mode-edge"
    return Path(base) / "testbed-64e"


def build_large(out: Path | None = None, threads: int = 2, steps: int | None = None) -> Path:
    """The testbed's checkpoint folder (built unless a complete one with this recipe is there)."""
    out = Path(out or default_dir())
    recipe = {**RECIPE, "steps": steps or RECIPE["steps"]}
    done = out / "training.json"
    if done.is_file():
        have = json.loads(done.read_text())["config"]
        if all(have.get(k) == v for k, v in recipe.items()):
            print(f"{out} is built (recipe unchanged)", file=sys.stderr)
            return out
        raise SystemExit(f"{out} holds another model; pass another --out or remove it")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cfg = TrainConfig(init_from=str(DEMO), threads=threads, **recipe)
    t0 = time.perf_counter()

    def progress(rec: dict) -> None:
        s = rec["step"]
        if s % 10 == 0 or "held_out" in rec:
            eta = (time.perf_counter() - t0) / s * (cfg.steps - s)
            extra = f"  held-out {json.dumps(rec['held_out'])}" if "held_out" in rec else ""
            print(
                f"step {s}/{cfg.steps}  loss {rec['loss']:.3f}  {rec['elapsed_s'] / 60:.1f} min, "
                f"about {eta / 60:.0f} min left{extra}",
                file=sys.stderr,
                flush=True,
            )
        with (tmp / "train.log").open("a") as f:
            f.write(json.dumps(rec) + "\n")

    tmp.mkdir(parents=True)
    train(tmp, cfg, log=progress)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(f"built {out} in {(time.perf_counter() - t0) / 60:.1f} min", file=sys.stderr)
    return out
