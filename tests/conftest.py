"""Session fixtures: tiny random Qwen3-VL-MoE checkpoints in every expert layout, converted."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from testbed.tiny_qwen3_vl_moe import build_tiny_model, relayout_experts

ROOT = Path(__file__).resolve().parents[1]
# child processes (CLI runs, isolated loads) import testbed/ and tests/ from the checkout too
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])


@contextlib.contextmanager
def _runtime_guard(item):
    """A test that loads a model in llama.cpp (text model or mtmd projector) must be marked
    `runtime`, so `pytest -m "not runtime"` needs no llama.cpp model loading at all: for unmarked
    tests both loaders refuse, during setup too (module fixtures that load a model are caught)."""
    if item.get_closest_marker("runtime") is not None:
        yield
        return
    import llama_cpp.llama_cpp as lib
    import llama_cpp.mtmd_cpp as mtmd

    def refuse(*args, **kwargs):
        raise RuntimeError(f"{item.nodeid} loads a model in llama.cpp: mark it @pytest.mark.runtime")

    saved = lib.llama_model_load_from_file, mtmd.mtmd_init_from_file
    lib.llama_model_load_from_file = mtmd.mtmd_init_from_file = refuse
    try:
        yield
    finally:
        lib.llama_model_load_from_file, mtmd.mtmd_init_from_file = saved


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with _runtime_guard(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _runtime_guard(item):
        return (yield)


# "published_square": hidden == 2 * moe_intermediate, so gate_up_proj is square and only
# down_proj's shape tells the published layout from transformers' own.
LAYOUT_CASES = ["transformers", "published", "per_expert", "published_square"]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    base = build_tiny_model(root / "tiny-transformers", seed=0)
    models = {"transformers": base}
    for layout in ("published", "per_expert"):
        d = shutil.copytree(base, root / f"tiny-{layout}")
        relayout_experts(d, layout)
        models[layout] = d
    # transformers itself misreads this case (its shape-checked transpose skips a square
    # gate_up_proj), so the reference is loaded from the same weights in its own layout
    square = build_tiny_model(root / "tiny-square-ref", seed=1, expert_ff=128)
    models["published_square"] = shutil.copytree(square, root / "tiny-square")
    relayout_experts(models["published_square"], "published")
    models["square_reference"] = square
    return models


@pytest.fixture(scope="session")
def converted(tiny_models, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """F32 text GGUF + F16 mmproj for each layout case."""
    from mode_edge.gguf.export import export_model

    out = {}
    for case in LAYOUT_CASES:
        model_dir = tiny_models[case]
        r = export_model(model_dir, tmp_path_factory.mktemp(f"gguf-{case}"), "f32")
        out[case] = (r.text_path, r.mmproj_path)
    return out


@pytest.fixture(scope="session")
def hf_models(tiny_models):
    """transformers' own models for the two distinct weight sets, loaded from disk."""
    import torch
    from transformers import Qwen3VLMoeForConditionalGeneration

    cache = {}

    def get(case: str):
        src = "square_reference" if case == "published_square" else "transformers"
        if src not in cache:
            cache[src] = Qwen3VLMoeForConditionalGeneration.from_pretrained(
                tiny_models[src], dtype=torch.float32
            ).eval()
        return cache[src]

    return get


@pytest.fixture(scope="session")
def test_image() -> np.ndarray:
    """A 128x96 RGB image: a multiple of patch*merge (32) on both sides, so neither
    transformers nor llama.cpp resizes it and both see the same pixels."""
    rng = np.random.default_rng(0)
    img = np.full((96, 128, 3), 230, dtype=np.uint8)
    img[20:60, 30:80] = (200, 30, 30)
    img += (rng.random(img.shape) * 20).astype(np.uint8)
    return img


@pytest.fixture(scope="session")
def calibration_data(tmp_path_factory) -> Path:
    """Four shape images with a question each, and a text-only prompt."""
    from tests.helpers import make_data

    return make_data(tmp_path_factory.mktemp("calib"))


@pytest.fixture(scope="session")
def tiny_stats_dir(tiny_models, calibration_data, tmp_path_factory) -> Path:
    """Expert statistics of the tiny model on that data, measured once per session."""
    from mode_edge.calibrate.runner import CalibrationOptions, calibrate
    from tests.helpers import FAST

    out = tmp_path_factory.mktemp("stats")
    calibrate(tiny_models["transformers"], calibration_data, out, CalibrationOptions(**FAST))
    return out


@pytest.fixture(scope="session")
def demo_out(tmp_path_factory) -> Path:
    """The README's main job: the bundled demo model converted to 7 MB, as written there."""
    from tests.helpers import DEMO, cli

    out = tmp_path_factory.mktemp("demo") / "out"
    assert cli(["convert", str(DEMO), "--budget", "7MB", "-o", str(out), "-q"]) == 0
    return out


@pytest.fixture(scope="session")
def rendered(tiny_models, calibration_data):
    """(calibration adapter, every calibration sample rendered) of the tiny model."""

    from tests.helpers import render_calibration

    return render_calibration(tiny_models["transformers"], calibration_data)
