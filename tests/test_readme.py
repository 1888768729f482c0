"""The README's main job on the bundled demo model, as written there: convert --budget (its own
calibration data, all 128 samples: 12 did not show the header-overshoot bug the full run hit),
then chat answers the question about the bundled picture correctly."""

from __future__ import annotations

import json

import pytest
from gguf import GGUFReader

from mode_edge.formats.groups import GROUPS_KEY
from tests.helpers import ANSWER, PICTURE, QUESTION, cli

pytestmark = pytest.mark.runtime  # loads models / runs ops of the patched llama.cpp

BUDGET = 7_000_000  # the README's 7MB: between the demo's uniform Q2_K and Q4_K files


def test_demo_budget_convert_then_chat_answers(demo_out, capsys):
    out = demo_out
    files = [p for p in out.glob("*.gguf") if not p.name.startswith("plan")]
    assert len(files) == 2 and sum(p.stat().st_size for p in files) <= BUDGET
    report = json.loads((out / "report.json").read_text())
    assert report["total_bytes"] <= BUDGET
    text = next(p for p in files if not p.name.startswith("mmproj-"))
    assert GGUFReader(text).get_field(GROUPS_KEY) is not None  # per-expert types: the patched runtime runs it
    capsys.readouterr()
    assert cli(["chat", str(out), "--image", str(PICTURE), "--prompt", QUESTION, "--max-tokens", "8"]) == 0
    assert capsys.readouterr().out.strip() == ANSWER


def test_output_folder_is_a_model_card(demo_out, capsys):
    card = (demo_out / "README.md").read_text()
    front = card.split("---")[1]
    assert "base_model: demo-model" in front and "  - gguf" in front and "  - mode-edge" in front
    assert "quantization:" in front
    text = next(p for p in demo_out.glob("*.gguf") if not p.name.startswith(("mmproj-", "plan")))
    assert f"`{text.name}` | {text.stat().st_size:,} |" in card  # sizes as on disk
    assert "--budget 7MB" in card and "mode-edge serve" in card and "patched llama.cpp" in card
    assert "Quality not measured yet" in card
    assert cli(["eval", str(demo_out), "--limit", "8", "--threads", "2"]) == 0
    card = (demo_out / "README.md").read_text()
    assert "## Measured quality" in card and "| vision | 4 |" in card and "| text | 4 |" in card
    assert json.loads((demo_out / "eval.json").read_text())["samples"] == 8
