"""python -m testbed build-large [--out DIR] [--threads N]: build the 64-expert testbed (build_large.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m testbed", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build-large", help="build the 64-expert top-8 testbed into a cache folder")
    b.add_argument(
        "--out", type=Path, default=None, help="default: $MODE_EDGE_CACHE or ~/.cache/mode-edge, /testbed-64e"
    )
    b.add_argument("--threads", type=int, default=2, help="torch threads (the result depends on it)")
    b.add_argument(
        "--steps", type=int, default=None, help="train fewer steps (a quick look; not the testbed)"
    )
    a = ap.parse_args()
    from testbed.build_large import build_large

    print(build_large(a.out, a.threads, a.steps))


if __name__ == "__main__":
    main()
