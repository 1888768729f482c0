"""The runtime build talks: stages and compile progress while it runs, the last lines on failure."""

from __future__ import annotations

import sys

import pytest

from mode_edge.errors import UserError
from mode_edge.runtime.build import _run_with_progress

FAKE_NINJA = (
    "import time\nfor i in range(1, 9):\n    print(f'[{i}/8] Building CXX object ggml/src/x{i}.o', flush=True)\n"
    "    time.sleep(0.3)\n"
)


def test_progress_lines_report_compiled_units():
    said, logged = [], []
    _run_with_progress([sys.executable, "-c", FAKE_NINJA], logged.append, said.append, every=0.5)
    assert len(logged) == 9  # the command and every output line (--verbose)
    assert len(said) >= 2 and all(s.startswith("  compiling: ") for s in said)
    done = [int(s.split(": ")[1].split("/")[0]) for s in said]
    assert done == sorted(done) and said[-1].split(", ")[0].endswith("/8 compiled units")


def test_failure_shows_the_last_lines():
    with pytest.raises(UserError) as e:
        _run_with_progress(
            [sys.executable, "-c", "print('\\n'.join(map(str, range(100)))); raise SystemExit(3)"],
            lambda m: None,
            lambda m: None,
        )
    msg = e.value.message
    assert "exit 3" in msg and "\n99" in msg and "\n69" not in msg  # the last 30 lines only


def test_runtime_build_command_finds_the_cached_wheel(capsys):
    """The README's install builds first, so this is a cache hit: the command itself, end to end
    (it once called the `build` submodule instead of the function)."""
    import mode_edge.run.chat  # noqa: F401  (imports mode_edge.runtime.build, as chat and serve do)
    from tests.helpers import cli

    assert cli(["runtime", "build", "--no-install"]) == 0
    out = capsys.readouterr()
    assert "built " in out.out and out.out.strip().endswith(".whl")
    assert "using the cached runtime" in out.err
