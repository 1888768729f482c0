"""`convert --budget` killed (SIGKILL) at two random moments and rerun: the rerun's files equal an
uninterrupted run's byte for byte and no final-name file was partial (benchmarks/interrupt_convert.py
runs more kills)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "interrupt_convert", Path(__file__).resolve().parents[1] / "benchmarks" / "interrupt_convert.py"
)
kill = importlib.util.module_from_spec(_spec)
sys.modules["interrupt_convert"] = kill
_spec.loader.exec_module(kill)


def test_killed_convert_reruns_to_identical_files(tmp_path):
    assert kill.run(tmp_path, kills=2, seed=1, say=lambda s: None) == []
