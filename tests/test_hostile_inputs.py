"""Every input file mode-edge reads besides GGUF models, mutated (benchmarks/mutate_inputs.py):
each case ends with exit code 2, one line on stderr, no traceback, and the output folder as it
was. The 15 cases that failed when the harness was first run are regression cases here too."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "mutate_inputs", Path(__file__).resolve().parents[1] / "benchmarks" / "mutate_inputs.py"
)
mutate = importlib.util.module_from_spec(_spec)
sys.modules["mutate_inputs"] = mutate  # its dataclass looks its module up there
_spec.loader.exec_module(mutate)
CASES = {f"{c.kind}: {c.name}": c for c in mutate.cases()}


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return mutate.build_fixture(tmp_path_factory.mktemp("hostile") / "fixture")


@pytest.mark.parametrize("name", list(CASES))
def test_mutated_input_is_refused_cleanly(name, fixture, tmp_path):
    ok, what = mutate.run_case(CASES[name], fixture, tmp_path)
    assert ok, what
