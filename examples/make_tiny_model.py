"""Write a tiny random Qwen3-VL-MoE checkpoint (HF folder) for trying the pipeline offline.

    python examples/make_tiny_model.py examples/tiny-model

It is random, so its answers are noise; it has the real architecture (8 experts, top-2,
deepstack vision tower, Qwen tokenizer format) so every stage runs on it for real.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's testbed/
from testbed.tiny_qwen3_vl_moe import LAYOUTS, build_tiny_model  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="published",
        help="expert weight layout on disk (default: as Qwen publishes it)",
    )
    args = ap.parse_args()
    if args.out_dir.exists() and any(args.out_dir.iterdir()):
        raise SystemExit(f"{args.out_dir} is not empty; pick a new folder")
    build_tiny_model(args.out_dir, seed=args.seed, layout=args.layout)
    print(f"wrote a tiny random Qwen3-VL-MoE to {args.out_dir}")
