"""Write a split of the synthetic tasks in the calibration format (prompts.jsonl + images/).

    python examples/demo_model/make_data.py examples/demo-data/calibration --split calibration -n 128

Deterministic: the same split and n give the same files on every machine. Each line also
holds "task" and "answer" (calibration ignores them; `mode-edge eval --tasks DIR` uses them).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mode_edge.testbed.tasks import SPLIT_SEEDS, export_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--split", default="calibration", choices=sorted(SPLIT_SEEDS))
    ap.add_argument("-n", type=int, default=128)
    a = ap.parse_args()
    export_split(a.out, a.split, a.n)
    print(f"wrote {a.n} {a.split} samples to {a.out}")


if __name__ == "__main__":
    main()
