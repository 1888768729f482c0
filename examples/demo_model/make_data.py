"""Write a split of the synthetic tasks in the calibration format (prompts.jsonl + images/).

    python examples/demo_model/make_data.py examples/demo-model/calibration --split calibration -n 128
    python examples/demo_model/make_data.py examples/images/shapes.png --split test --picture 10

Deterministic: the same split and n give the same files on every machine. Each line also
holds "task" and "answer" (calibration ignores them; `mode-edge eval --tasks DIR` uses them).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mode_edge.evaluate.tasks import SPLIT_SEEDS, export_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--split", default="calibration", choices=sorted(SPLIT_SEEDS))
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument(
        "--picture",
        type=int,
        default=None,
        metavar="I",
        help="write only sample I's picture to OUT (a .png) and print its question and answer",
    )
    a = ap.parse_args()
    if a.picture is not None:
        from PIL import Image

        from mode_edge.evaluate.tasks import example

        ex = example(a.split, a.picture)
        if ex.image is None:
            raise SystemExit(
                f"{a.split} sample {a.picture} is a text task ({ex.task}); pick an even index of test"
            )
        a.out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ex.image).save(a.out, optimize=True)
        print(f"wrote {a.out}: {ex.prompt} -> {ex.answer}")
        return
    export_split(a.out, a.split, a.n)
    print(f"wrote {a.n} {a.split} samples to {a.out}")


if __name__ == "__main__":
    main()
