"""`mode-edge chat`: one-shot and interactive, images, and its refusals."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from tests.helpers import cli

pytestmark = pytest.mark.runtime  # loads models / runs ops of the patched llama.cpp


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    p = tmp_path_factory.mktemp("img") / "red.png"
    Image.new("RGB", (96, 64), (200, 30, 30)).save(p)
    return p


def test_one_shot_answer_with_an_image(converted, image, capsys):
    text, _ = converted["transformers"]
    assert (
        cli(
            [
                "chat",
                str(text.parent),
                "--image",
                str(image),
                "--prompt",
                "What colour is it?",
                "--max-tokens",
                "6",
                "--threads",
                "2",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip()  # random weights: some text, streamed to stdout


def test_interactive_session_with_commands(converted, image):
    text, _ = converted["transformers"]
    script = f"/image {image}\nWhat colour is it?\n/reset\nAnd now?\n/quit\n"
    proc = subprocess.run(
        [sys.executable, "-m", "mode_edge.cli", "chat", str(text), "--max-tokens", "4", "--threads", "2"],
        input=script,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert proc.stdout.count("\n") >= 2  # two answers


def test_refusals(converted, image, tmp_path, capsys, monkeypatch):
    text, _ = converted["transformers"]
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert cli(["chat", str(text.parent), "--image", str(bad), "--prompt", "hi"]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert cli(["chat", str(tmp_path / "nothing"), "--prompt", "hi"]) == 2
    # a grouped file on a build without expert groups: say what to run
    import mode_edge.run.chat as chat
    import mode_edge.runtime.build as build

    monkeypatch.setattr(chat, "needs_patched_runtime", lambda p: True)
    monkeypatch.setattr(build, "capabilities", lambda: 0)
    assert cli(["chat", str(text.parent), "--prompt", "hi"]) == 2
    assert "mode-edge runtime build" in capsys.readouterr().err
