"""Synthetic image+text tasks for the demo model, built so that MODE's situation arises.

Two families:

- vision: questions about a rendered picture (colour, shape, count, position, left-of,
  bigger-than, a rendered digit, a rendered short word). Pictures are large and mostly plain
  background (320x320 px = 100 merged image tokens for patch 16 / merge 2), so vision tokens
  outnumber the text tokens of a sample about 6x and most image tokens carry nothing.
- text: questions without a picture (addition, reversing letters, sorting digits, the letter
  that follows, and facts that exist only inside this generator), so some experts must serve
  text.

Every example has one exact answer. Splits are streams drawn from different seeds: example i
of a split depends only on (split seed, i), so a split is the same on every machine and any
prefix of it is a fixed set. The calibration split can be written out in the format
`mode-edge calibrate --data` reads (prompts.jsonl plus images/).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SIZE = 320  # a multiple of patch * merge (32): neither transformers nor llama.cpp resizes it
BACKGROUND = (242, 242, 242)

COLORS = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "yellow": (235, 200, 20),
    "purple": (148, 60, 190),
    "orange": (255, 127, 14),
}
SHAPES = ("circle", "square", "triangle")
WORDS = ("cat", "dog", "sun", "map", "box", "key", "owl", "pen")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
LETTERS = "abcdefghijklmnopqrstuvwxyz"

# Facts that exist only here: the model can know them only from training.
FACTS = {
    "Vandoria": "Kesh",
    "Molvany": "Tirel",
    "Quorth": "Baso",
    "Elbrisk": "Nuvo",
    "Trastia": "Pell",
    "Gondrel": "Umar",
    "Saphen": "Dorik",
    "Yllith": "Voss",
    "Brecca": "Lumo",
    "Cathmor": "Fenn",
    "Ostrava": "Zilt",
    "Perrin": "Gasko",
}

VISION_TASKS = ("color", "shape", "count", "position", "left_of", "bigger", "digit", "word")
TEXT_TASKS = ("add", "reverse", "sort", "next_letter", "capital")
TASKS = VISION_TASKS + TEXT_TASKS

SPLIT_SEEDS = {
    "train": 1_000_003,
    "calibration": 2_000_003,
    "test": 3_000_017,
    # the harder suite of the 64-expert testbed (hard_tasks.py): same roles, other seeds
    "hard-train": 4_000_037,
    "hard-calibration": 5_000_011,
    "hard-test": 6_000_047,
}
# Share of vision examples per split. Training sees enough text to learn it; calibration is
# image+text like the data MODE calibrates on (a few text-only lines keep text experts in
# view); test alternates so that both families get the same number.
VISION_SHARE = {"train": 0.75, "calibration": 0.9, "test": 0.5}


@dataclass
class Example:
    task: str
    prompt: str
    answer: str
    image: np.ndarray | None = None  # HxWx3 uint8

    @property
    def family(self) -> str:
        return "vision" if self.image is not None else "text"


def suite_tasks(split: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(vision tasks, text tasks) of a split's suite: the demo's, or hard_tasks' for hard-* splits."""
    if split.startswith("hard-"):
        from mode_edge.evaluate import hard_tasks

        return hard_tasks.VISION_TASKS, hard_tasks.TEXT_TASKS
    return VISION_TASKS, TEXT_TASKS


def family_of(task: str) -> str:
    from mode_edge.evaluate import hard_tasks

    return "vision" if task in VISION_TASKS or task in hard_tasks.VISION_TASKS else "text"


# -- rendering -------------------------------------------------------------------------------


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _draw_shape(draw, shape: str, box: tuple[int, int, int, int], color) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=color)


def _px(v: float, size: int) -> int:
    """A length in pixels of a IMAGE_SIZE picture, scaled to a picture of `size` (identity at IMAGE_SIZE)."""
    return max(1, round(v * size / IMAGE_SIZE))


def _place(rng: random.Random, sizes: list[int], size: int, region=None, tries: int = 1000):
    """Non-overlapping square boxes (with a gap) of the given sizes inside region."""
    m, gap = _px(8, size), _px(12, size)
    rx0, ry0, rx1, ry1 = region or (m, m, size - m, size - m)
    for _ in range(tries):
        boxes = []
        for s in sizes:
            x, y = rng.randint(rx0, rx1 - s), rng.randint(ry0, ry1 - s)
            b = (x, y, x + s, y + s)
            if any(
                not (b[2] + gap < o[0] or o[2] + gap < b[0] or b[3] + gap < o[1] or o[3] + gap < b[1])
                for o in boxes
            ):
                break
            boxes.append(b)
        else:
            return boxes
    raise RuntimeError("could not place shapes")  # unreachable for the sizes used here


def _canvas(size: int):
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), BACKGROUND)
    return im, ImageDraw.Draw(im)


def _scene(
    rng: random.Random,
    size: int,
    n: int,
    *,
    distinct_colors: bool = True,
    distinct_sizes: bool = False,
    region=None,
):
    colors = rng.sample(list(COLORS), n) if distinct_colors else [rng.choice(list(COLORS)) for _ in range(n)]
    shapes = [rng.choice(SHAPES) for _ in range(n)]
    if distinct_sizes:
        small, big = rng.randint(_px(36, size), _px(52, size)), rng.randint(_px(76, size), _px(100, size))
        sizes = [small, big] if rng.random() < 0.5 else [big, small]
    else:
        sizes = [rng.randint(_px(40, size), _px(80 if n <= 3 else 56, size)) for _ in range(n)]
    boxes = _place(rng, sizes, size, region)
    im, draw = _canvas(size)
    for c, s, b in zip(colors, shapes, boxes):
        _draw_shape(draw, s, b, COLORS[c])
    return im, colors, shapes, boxes, sizes


def _text_image(rng: random.Random, size: int, text: str):
    im, draw = _canvas(size)
    font = _font(rng.randint(_px(72, size), _px(104, size)))
    l, t, r, b = draw.textbbox((0, 0), text, font=font)
    m = _px(8, size)
    x = rng.randint(m - l, size - m - r)
    y = rng.randint(m - t, size - m - b)
    draw.text((x, y), text, font=font, fill=(20, 20, 20))
    return im


# -- tasks -----------------------------------------------------------------------------------


def _vision(task: str, rng: random.Random, size: int, curriculum: bool = False) -> Example:
    if task == "color":
        im, colors, *_ = _scene(rng, size, 1)
        return Example(task, "What color is the shape?", colors[0], np.asarray(im))
    if task == "shape":
        # curriculum (training only): some pictures hold the one shape asked about, so the
        # shapes themselves are learnt before picking one out among several is
        im, colors, shapes, *_ = _scene(rng, size, rng.randint(1 if curriculum else 2, 3))
        i = rng.randrange(len(colors))
        return Example(task, f"What shape is the {colors[i]} one?", shapes[i], np.asarray(im))
    if task == "count":
        n = rng.randint(1, 4)
        im, *_ = _scene(rng, size, n, distinct_colors=False)
        return Example(task, "How many shapes are there?", str(n), np.asarray(im))
    if task == "position":
        q = rng.randrange(4)
        half = size // 2
        x0, y0 = (q % 2) * half, (q // 2) * half
        im, colors, shapes, *_ = _scene(
            rng,
            size,
            1,
            region=(
                x0 + _px(12, size),
                y0 + _px(12, size),
                x0 + half - _px(12, size),
                y0 + half - _px(12, size),
            ),
        )
        return Example(task, f"Where is the {shapes[0]}?", POSITIONS[q], np.asarray(im))
    if task == "left_of":
        # one shape wholly left of the other (their x-extents apart): with overlapping extents
        # "left of" has no clear answer, even for a person
        while True:
            im, colors, shapes, boxes, _ = _scene(rng, size, 2)
            if boxes[0][0] - boxes[1][2] >= _px(8, size) or boxes[1][0] - boxes[0][2] >= _px(8, size):
                break
        i, j = (0, 1) if rng.random() < 0.5 else (1, 0)
        answer = colors[i] if boxes[i][0] < boxes[j][0] else colors[j]
        return Example(
            task, f"Which is left, the {colors[i]} or the {colors[j]} shape?", answer, np.asarray(im)
        )
    if task == "bigger":
        im, colors, shapes, boxes, sizes = _scene(rng, size, 2, distinct_sizes=True)
        i, j = (0, 1) if rng.random() < 0.5 else (1, 0)
        answer = colors[i] if sizes[i] > sizes[j] else colors[j]
        return Example(
            task, f"Which is bigger, the {colors[i]} or the {colors[j]} shape?", answer, np.asarray(im)
        )
    if task == "digit":
        d = str(rng.randrange(10))
        return Example(task, "What digit is written?", d, np.asarray(_text_image(rng, size, d)))
    if task == "word":
        w = rng.choice(WORDS)
        return Example(task, "What word is written?", w, np.asarray(_text_image(rng, size, w)))
    raise ValueError(task)


def _text(task: str, rng: random.Random) -> Example:
    if task == "add":
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        return Example(task, f"What is {a} + {b}?", str(a + b))
    if task == "reverse":
        letters = rng.sample(LETTERS, rng.randint(3, 4))
        return Example(task, "Reverse: " + " ".join(letters), " ".join(reversed(letters)))
    if task == "sort":
        digits = rng.sample("0123456789", rng.randint(3, 4))
        return Example(task, "Sort: " + " ".join(digits), " ".join(sorted(digits)))
    if task == "next_letter":
        i = rng.randrange(len(LETTERS) - 1)
        return Example(task, f"What letter comes after {LETTERS[i]}?", LETTERS[i + 1])
    if task == "capital":
        country = rng.choice(sorted(FACTS))
        return Example(task, f"What is the capital of {country}?", FACTS[country])
    raise ValueError(task)


def make_example(
    task: str, rng: random.Random, image_size: int = IMAGE_SIZE, curriculum: bool = False
) -> Example:
    if task in VISION_TASKS:
        return _vision(task, rng, image_size, curriculum)
    if task in TEXT_TASKS:
        return _text(task, rng)
    from mode_edge.evaluate import hard_tasks

    if task in hard_tasks.VISION_TASKS:
        return hard_tasks.vision(task, rng, image_size)
    return hard_tasks.text(task, rng)


def example(split: str, i: int, image_size: int = IMAGE_SIZE) -> Example:
    """Example i of a split: a function of (split seed, i) only."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; one of {sorted(SPLIT_SEEDS)}")
    rng = random.Random(SPLIT_SEEDS[split] * 1_000_003 + i)
    vision, text = suite_tasks(split)
    if split.endswith("test"):  # alternate families, cycle through each family's tasks
        tasks = vision if i % 2 == 0 else text
        task = tasks[(i // 2) % len(tasks)]
    else:
        tasks = vision if rng.random() < VISION_SHARE[split.removeprefix("hard-")] else text
        task = rng.choice(tasks)
    return make_example(task, rng, image_size)


def split_examples(split: str, n: int, start: int = 0, image_size: int = IMAGE_SIZE) -> list[Example]:
    return [example(split, i, image_size) for i in range(start, start + n)]


def family_example(
    split: str,
    family: str,
    i: int,
    image_size: int = IMAGE_SIZE,
    weights: dict[str, float] | None = None,
    curriculum: bool = False,
) -> Example:
    """Example i of one family's stream of a split (the trainer draws vision and text apart).

    weights: relative frequency per task (missing tasks 1.0); None draws tasks uniformly.
    curriculum: easier variants mixed in (training only; see _vision)."""
    if family not in ("vision", "text"):
        raise ValueError(f"family must be vision or text, not {family!r}")
    rng = random.Random((SPLIT_SEEDS[split] * 1_000_003 + i) * 2 + (family == "text"))
    names = suite_tasks(split)[family != "vision"]
    if weights:
        task = rng.choices(names, weights=[weights.get(t, 1.0) for t in names])[0]
    else:
        task = rng.choice(names)
    return make_example(task, rng, image_size, curriculum)


def text_corpus(n: int = 4000) -> list[str]:
    """Prompts and answers like the training streams' (plus every digit, letter and chat role), for the tokenizer."""
    out = [" ".join("0123456789"), " ".join(LETTERS), " ".join(LETTERS.upper())] * 8
    out += ["system\nuser\nassistant\n"] * max(200, n // 4)  # the chat roles become single tokens
    for i in range(n):
        ex = family_example("train", "vision" if i % 2 == 0 else "text", i // 2, image_size=64)
        out.append(f"{ex.prompt}\n{ex.answer}")
    return out


def export_split(
    out_dir: Path, split: str = "calibration", n: int = 128, image_size: int = IMAGE_SIZE
) -> Path:
    """Write n examples of a split as DIR/prompts.jsonl + DIR/images/*.png (the calibration format).

    Answers are kept under "answer" (calibration ignores them; eval can use them)."""
    from PIL import Image

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, ex in enumerate(split_examples(split, n, image_size=image_size)):
        obj = {"task": ex.task, "prompt": ex.prompt, "answer": ex.answer}
        if ex.image is not None:
            name = f"images/{split}-{i:05d}.png"
            Image.fromarray(ex.image).save(out_dir / name, optimize=True)
            obj = {"image": name, **obj}
        lines.append(json.dumps(obj))
    (out_dir / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    return out_dir
