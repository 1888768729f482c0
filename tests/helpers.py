"""Shared test helpers: the CLI in-process, and a small calibration data folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mode_edge.cli import main


def cli(args: list[str]) -> int:
    """Run `mode-edge ARGS` in this process; its exit code."""
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo-model"
PICTURE = ROOT / "examples" / "images" / "shapes.png"
QUESTION, ANSWER = "Which is bigger, the yellow or the green shape?", "green"  # the README's

FAST = dict(types=["Q2_K", "Q3_K", "Q4_K", "Q6_K"], probes=4)


def hf_inputs(r, image_token_id: int) -> dict:
    """transformers' forward arguments for one rendered calibration sample."""
    import torch

    ids = torch.from_numpy(r.input_ids)[None]
    kw = {"input_ids": ids}
    if r.pixel_values is not None:
        kw.update(
            pixel_values=torch.from_numpy(r.pixel_values),
            image_grid_thw=torch.from_numpy(r.image_grid_thw),
            mm_token_type_ids=(ids == image_token_id).int(),
        )
    return kw


def make_data(folder, n_images: int = 4, size=(128, 96), seed: int = 0, text_only: int = 1):
    """Shapes on a plain background, and a question after each image."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    lines = []
    for i in range(n_images):
        im = Image.new("RGB", size, (235, 235, 235))
        d = ImageDraw.Draw(im)
        x, y = int(rng.integers(5, size[0] - 40)), int(rng.integers(5, size[1] - 40))
        box = [x, y, x + 30, y + 30]
        color = tuple(int(c) for c in rng.integers(0, 200, 3))
        (d.ellipse if i % 2 else d.rectangle)(box, fill=color)
        im.save(folder / "images" / f"{i}.png")
        lines.append({"image": f"images/{i}.png", "prompt": "What shape is in the picture, and where is it?"})
    for i in range(text_only):
        lines.append({"prompt": f"What is {i + 12} + 30? Answer with a number."})
    (folder / "prompts.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    return folder


def render_calibration(model_dir, data, attn_implementation: str = "sdpa"):
    """(calibration object, every sample of `data` rendered as calibration renders it)."""
    from mode_edge.arch import architecture_for
    from mode_edge.formats.checkpoint import Checkpoint
    from mode_edge.formats.samples import load_image, read_samples

    cal = architecture_for(Checkpoint(model_dir)).calibration(attn_implementation)
    samples = read_samples(data, 128, 0)
    return cal, [cal.render(s, load_image(s.image) if s.image else None) for s in samples]
