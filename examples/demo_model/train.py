"""Train the demo model (examples/demo-model) from scratch on the synthetic tasks.

    python examples/demo_model/train.py examples/demo-model --seed 0 --steps 1500

Writes an HF checkpoint folder (bf16 safetensors, config, tokenizer, chat template,
preprocessor config) and training.json (options, wall time, held-out accuracy by step).
Progress goes to stderr and OUT/train.log.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's testbed/
from testbed.train import TrainConfig, train  # noqa: E402


def _weights(spec: str | None, suite: str = "demo") -> dict[str, float] | None:
    if not spec:
        return None
    from mode_edge.evaluate.tasks import suite_tasks

    names = sum(suite_tasks("hard-test" if suite == "hard" else "test"), ())
    out = {}
    for part in spec.split(","):
        name, _, w = part.partition("=")
        if name.strip() not in names:
            raise SystemExit(f"--task-weights: unknown task {name!r}; tasks are {', '.join(names)}")
        out[name.strip()] = float(w)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--vision-rows", type=int, default=TrainConfig.vision_rows)
    ap.add_argument("--text-rows", type=int, default=TrainConfig.text_rows)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--aux-coef", type=float, default=TrainConfig.router_aux_loss_coef)
    ap.add_argument("--eval-every", type=int, default=TrainConfig.eval_every)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--init-from", type=Path, default=None, help="continue from a checkpoint this script saved"
    )
    ap.add_argument("--data-offset", type=int, default=0, help="first step of the data stream (continuing)")
    ap.add_argument("--warmup", type=int, default=TrainConfig.warmup)
    ap.add_argument(
        "--task-weights",
        default=None,
        metavar="TASK=W,...",
        help="relative task frequencies, e.g. digit=3,word=3 (others 1)",
    )
    ap.add_argument(
        "--curriculum",
        action="store_true",
        help="mix easier variants of some tasks into training (one-shape pictures for 'shape')",
    )
    ap.add_argument(
        "--grow-vision",
        default=None,
        metavar="DEPTH,FF",
        help="with --init-from: more vision blocks / a wider vision MLP, starting as the same function",
    )
    ap.add_argument(
        "--upcycle",
        default=None,
        metavar="FACTOR,NOISE",
        help="with --init-from: each expert split into FACTOR copies (top-k x FACTOR), weights "
        "perturbed by NOISE x their std so the copies can diverge (e.g. 4,0.01: 16 top-2 -> 64 top-8)",
    )
    ap.add_argument(
        "--upcycle-mode",
        default="copy",
        choices=["copy", "split"],
        help="split: each new expert holds 1/FACTOR of the old one's units plus fresh ones (testbed/upcycle.py)",
    )
    ap.add_argument(
        "--router-noise", type=float, default=0.0, help="with --upcycle: noise on the router rows only"
    )
    ap.add_argument("--suite", default="demo", choices=["demo", "hard"], help="task suite to train on")
    ap.add_argument("--eval-samples", type=int, default=TrainConfig.eval_samples)
    ap.add_argument("--snapshots", action="store_true", help="save OUT-step<N>/ at every evaluation")
    a = ap.parse_args()
    cfg = TrainConfig(
        seed=a.seed,
        steps=a.steps,
        vision_rows=a.vision_rows,
        text_rows=a.text_rows,
        lr=a.lr,
        router_aux_loss_coef=a.aux_coef,
        eval_every=a.eval_every,
        threads=a.threads,
        init_from=str(a.init_from) if a.init_from else None,
        data_offset=a.data_offset,
        warmup=a.warmup,
        eval_samples=a.eval_samples,
        task_weights=_weights(a.task_weights, a.suite),
        suite=a.suite,
        curriculum=a.curriculum,
    )
    if a.upcycle:
        factor, noise = a.upcycle.split(",")
        cfg.upcycle, cfg.upcycle_noise = int(factor), float(noise)
        cfg.upcycle_mode, cfg.upcycle_router_noise = a.upcycle_mode, a.router_noise
    if a.grow_vision:
        cfg.vision_depth, cfg.vision_ff = (int(x) for x in a.grow_vision.split(","))
    a.out.mkdir(parents=True, exist_ok=True)
    logf = open(a.out / "train.log", "a")

    def log(rec: dict) -> None:
        line = json.dumps(rec)
        logf.write(line + "\n")
        logf.flush()
        if rec["step"] % 10 == 0 or "held_out" in rec:
            print(line, file=sys.stderr, flush=True)

    def snapshot(model, step: int) -> None:
        import shutil

        import torch

        d = a.out.with_name(f"{a.out.name}-step{step}")
        copy.deepcopy(model).eval().to(torch.bfloat16).save_pretrained(d)
        for f in a.out.iterdir():
            if (
                f.is_file()
                and f.suffix in (".json", ".jinja")
                and f.name not in ("config.json", "training.json")
            ):
                shutil.copy(f, d / f.name)

    record = train(a.out, cfg, log=log, snapshot=snapshot if a.snapshots else None)
    print(
        f"trained {cfg.steps} steps in {record['train_seconds'] / 60:.1f} min; "
        f"held-out {record['history'][-1]['held_out'] if record['history'] else '-'}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
