"""Calibration data: a folder of images and a JSONL of prompts, rendered as the model sees them.

    DIR/prompts.jsonl     one object per line:
        {"image": "images/0001.png", "prompt": "How many circles are there?"}
        {"prompt": "What is 12 + 30?"}                           (text-only)
        {"image": "...", "prompt": "...", "system": "You are a helpful assistant."}
    DIR/images/...        paths in "image" are relative to DIR

Each sample is rendered through the model's own chat template and image processor in the
order system / image / instruction / generation prompt, with no answer.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mode_edge.errors import UserError

PROMPTS_FILE = "prompts.jsonl"


@dataclass
class Sample:
    prompt: str
    image: Path | None = None
    system: str | None = None


@dataclass
class Rendered:
    """One tokenized sample; image tensors are None for text-only samples."""

    input_ids: np.ndarray  # [T] int64
    pixel_values: np.ndarray | None = None
    image_grid_thw: np.ndarray | None = None


def read_samples(data_dir: Path, n: int, seed: int) -> list[Sample]:
    data_dir = Path(data_dir)
    path = data_dir / PROMPTS_FILE
    if not path.is_file():
        raise UserError(
            f"no {PROMPTS_FILE} in {data_dir}",
            'write one JSON object per line: {"image": "images/x.png", "prompt": "..."}',
        )
    samples = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            prompt = obj["prompt"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f'{path}:{i} is not a JSON object with a "prompt"', "fix that line") from None
        if not isinstance(prompt, str) or not isinstance(obj.get("system") or "", str):
            raise UserError(f"{path}:{i}: prompt and system must be strings", "fix that line")
        image = obj.get("image")
        if image is not None and not isinstance(image, str):
            raise UserError(f"{path}:{i}: image must be a path (a string)", "fix that line")
        if image:
            resolved = (data_dir / image).resolve()
            if not resolved.is_relative_to(data_dir.resolve()):
                raise UserError(
                    f"{path}:{i}: image {image!r} is outside the data folder {data_dir}",
                    "keep images inside the data folder (paths relative to it)",
                )
        samples.append(Sample(prompt, data_dir / image if image else None, obj.get("system")))
    if not samples:
        raise UserError(f"{path} has no samples", "add at least one line")
    if len(samples) > n:
        samples = random.Random(seed).sample(samples, n)
    return samples


def data_hash(samples: list[Sample]) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps([s.prompt, s.system, s.image.name if s.image else None]).encode())
        if s.image is not None and s.image.is_file():
            h.update(s.image.read_bytes())
    return h.hexdigest()[:16]


def load_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # PIL refuses images over 2 x MAX_IMAGE_PIXELS (decompression bombs)
            return im.convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise UserError(
            f"cannot read image {path} ({e.__class__.__name__})",
            "fix or remove it, or pass --skip-bad to leave such samples out",
        ) from None
