"""Kill `mode-edge convert --budget` at random moments (calibrate, plan, pack), rerun it, and check
that the rerun finishes with the bytes of an uninterrupted run and that no file under a final name
was ever partial.

    python benchmarks/interrupt_convert.py [--kills 10] [--seed 0] [--work DIR]

Compared byte for byte with the uninterrupted run: both GGUFs, plan.json, plan.imatrix.gguf,
stats/expert_stats.safetensors, stats/imatrix.gguf. Files whose text records paths or seconds
(report, card, manifest, run.json) are not compared. Exits 1 on any difference.
tests/test_interrupt_convert.py runs two kills.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COMPARED = ("*.gguf", "plan.json", "stats/expert_stats.safetensors", "stats/imatrix.gguf")
BUDGET = "6.5MB"


def build_model(root: Path) -> Path:
    from testbed.tiny_qwen3_vl_moe import build_tiny_model
    from tests.helpers import make_data

    model = root / "model"
    if not (model / "calibration" / "prompts.jsonl").is_file():
        shutil.rmtree(model, ignore_errors=True)
        build_tiny_model(model)
        make_data(model / "calibration", n_images=2)
    return model


def _argv(model: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mode_edge.cli",
        "convert",
        str(model),
        "--budget",
        BUDGET,
        "--types",
        "Q2_K,Q3_K,Q4_K",
        "-o",
        str(out),
        "-q",
    ]


def hashes(out: Path) -> dict[str, str]:
    files = sorted({p for pat in COMPARED for p in out.glob(pat) if p.is_file()})
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def reference(model: Path, out: Path) -> tuple[dict[str, str], float]:
    t0 = time.perf_counter()
    subprocess.run(_argv(model, out), check=True, capture_output=True, timeout=1200)
    return hashes(out), time.perf_counter() - t0


def stage_of(out: Path) -> str:
    """Where a killed run stopped, from what it left."""
    if not (out / "stats" / "expert_stats.safetensors").is_file():
        return "calibrate" if (out / "stats").exists() else "start"
    if not (out / "plan.json").is_file():
        return "plan"
    return "pack" if not list(out.glob("*.gguf")) or len(list(out.glob("*.gguf"))) < 3 else "finished"


def one_kill(
    model: Path,
    out: Path,
    after: float,
    ref: dict[str, str],
    stages: list | None = None,
    in_pack: bool = False,
) -> list[str]:
    """Kill a run `after` seconds after its start (in_pack: after plan.json appears, so the kill
    lands while pack writes), check what it left, finish it; the problems found."""
    problems = []
    proc = subprocess.Popen(_argv(model, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if in_pack:
        while proc.poll() is None and not (out / "plan.json").is_file():
            time.sleep(0.01)
    try:
        proc.wait(timeout=after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    if stages is not None:
        stages.append(stage_of(out))
    left = hashes(out) if out.exists() else {}
    for name, h in left.items():  # a file under its final name must be whole
        if ref.get(name) != h:
            problems.append(f"after the kill at {after:.1f} s, {name} is not the finished file")
    subprocess.run(_argv(model, out), check=True, capture_output=True, timeout=1200)
    got = hashes(out)
    for name in sorted(set(ref) | set(got)):
        if ref.get(name) != got.get(name):
            problems.append(f"rerun after the kill at {after:.1f} s: {name} differs")
    return problems


def run(work: Path, kills: int, seed: int, say=print) -> list[str]:
    model = build_model(work)
    shutil.rmtree(work / "ref", ignore_errors=True)
    ref, seconds = reference(model, work / "ref")
    say(f"uninterrupted run: {seconds:.1f} s, {len(ref)} files compared")
    rng = random.Random(seed)
    problems = []
    for k in range(kills):
        # every other kill while pack writes (a short stage: a random moment would rarely hit it)
        in_pack = k % 2 == 1
        after = rng.uniform(0.0, 0.8) if in_pack else rng.uniform(0.5, seconds)
        out = work / f"killed-{k}"
        shutil.rmtree(out, ignore_errors=True)
        stages: list[str] = []
        found = one_kill(model, out, after, ref, stages, in_pack)
        when = f"{after:.2f} s after plan.json" if in_pack else f"{after:5.1f} s"
        say(
            f"kill {k + 1}/{kills} at {when} ({stages[0]}): "
            + ("identical" if not found else "; ".join(found))
        )
        problems += found
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="mode-edge-kill-"))
    problems = run(work, args.kills, args.seed)
    bad = len({p.split(" s")[0] for p in problems})  # one prefix per kill
    print(f"\n{args.kills} kills, {args.kills - bad} reruns identical, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
