"""The synthetic task generator: determinism, distinct splits, exact answers checked from the
pictures themselves, vision-token dominance, background-dominated pictures, the export."""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest

from mode_edge.evaluate import tasks
from tests.helpers import DEMO


def _digest(ex: tasks.Example) -> str:
    h = hashlib.sha256(f"{ex.task}|{ex.prompt}|{ex.answer}".encode())
    if ex.image is not None:
        h.update(ex.image.tobytes())
    return h.hexdigest()


def test_examples_are_a_function_of_split_and_index():
    a = [_digest(e) for e in tasks.split_examples("test", 40)]
    b = [_digest(tasks.example("test", i)) for i in range(40)]
    assert a == b
    assert [_digest(e) for e in tasks.split_examples("test", 10, start=30)] == a[30:]


def test_family_streams():
    vis = [tasks.family_example("train", "vision", i) for i in range(60)]
    txt = [tasks.family_example("train", "text", i) for i in range(60)]
    assert all(e.family == "vision" for e in vis) and all(e.family == "text" for e in txt)
    assert {e.task for e in vis} == set(tasks.VISION_TASKS)
    assert {e.task for e in txt} == set(tasks.TEXT_TASKS)
    assert [_digest(e) for e in vis] == [
        _digest(tasks.family_example("train", "vision", i)) for i in range(60)
    ]


def _train_stream(n: int) -> list[tasks.Example]:
    """What the trainer draws: the train split's vision and text streams."""
    return [tasks.family_example("train", "vision" if i % 2 else "text", i // 2) for i in range(n)]


def test_splits_differ():
    images = {}
    for split in ("train", "calibration", "test"):
        exs = _train_stream(120) if split == "train" else tasks.split_examples(split, 60)
        images[split] = {_digest(e) for e in exs if e.image is not None}
        assert len(images[split]) == sum(e.image is not None for e in exs)  # no repeats inside a split
    assert not images["train"] & images["calibration"]
    assert not images["train"] & images["test"]
    assert not images["calibration"] & images["test"]


def test_test_split_alternates_families_and_covers_every_task():
    exs = tasks.split_examples("test", 2 * 8 * 5)
    assert [e.family for e in exs[:6]] == ["vision", "text"] * 3
    assert {e.task for e in exs} == set(tasks.TASKS)
    assert all(tasks.family_of(e.task) == e.family for e in exs)


def _foreground(img: np.ndarray) -> np.ndarray:
    return np.any(img != np.array(tasks.BACKGROUND, dtype=np.uint8), axis=-1)


def test_answers_match_the_pictures():
    """Recover the answer of colour, position, count and left-of questions from the pixels."""
    names = list(tasks.COLORS)
    rgb = np.array([tasks.COLORS[n] for n in names])
    for i in range(40):
        rng = random.Random(i)
        ex = tasks.make_example("color", rng)
        px = ex.image[_foreground(ex.image)]
        nearest = np.argmin(((px[:, None, :].astype(int) - rgb[None]) ** 2).sum(-1), axis=1)
        assert names[np.bincount(nearest).argmax()] == ex.answer

        ex = tasks.make_example("position", rng)
        ys, xs = np.nonzero(_foreground(ex.image))
        half = tasks.IMAGE_SIZE / 2
        where = ("top" if ys.mean() < half else "bottom") + " " + ("left" if xs.mean() < half else "right")
        assert where == ex.answer

        ex = tasks.make_example("count", rng)
        assert _components(_foreground(ex.image)) == int(ex.answer)

        ex = tasks.make_example("left_of", rng)
        c1, c2 = ex.prompt.split("the ")[1].split()[0], ex.prompt.split("the ")[2].split()[0]
        extent = {}
        for c in (c1, c2):
            xs = np.nonzero(np.all(ex.image == np.array(tasks.COLORS[c], dtype=np.uint8), axis=-1))[1]
            extent[c] = (xs.min(), xs.max())
        left, right = sorted((c1, c2), key=lambda c: extent[c][0])
        assert extent[left][1] < extent[right][0]  # one shape wholly left of the other
        assert ex.answer == left


def _components(mask: np.ndarray) -> int:
    """4-connected components of a boolean mask (shapes never touch: the generator leaves gaps)."""
    seen = np.zeros_like(mask)
    n = 0
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        n += 1
        stack = [(y, x)]
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
    return n


def test_text_answers_are_exact():
    for i in range(50):
        rng = random.Random(i)
        ex = tasks.make_example("add", rng)
        a, b = ex.prompt.removeprefix("What is ").removesuffix("?").split(" + ")
        assert ex.answer == str(int(a) + int(b))
        ex = tasks.make_example("reverse", rng)
        assert ex.answer.split() == ex.prompt.removeprefix("Reverse: ").split()[::-1]
        ex = tasks.make_example("sort", rng)
        assert ex.answer.split() == sorted(ex.prompt.removeprefix("Sort: ").split())
        ex = tasks.make_example("next_letter", rng)
        assert ord(ex.answer) == ord(ex.prompt[-2]) + 1


def test_pictures_are_mostly_background():
    """Most 32x32 cells (one merged image token each) hold nothing but background."""
    shares = []
    for ex in tasks.split_examples("calibration", 60):
        if ex.image is None:
            continue
        fg = _foreground(ex.image)
        cells = fg.reshape(10, 32, 10, 32).any(axis=(1, 3))
        shares.append(1 - cells.mean())
    assert np.mean(shares) > 0.7
    assert min(shares) > 0.4


@pytest.fixture(scope="module")
def encoder():
    from testbed.train import Encoder

    return Encoder.from_dir(DEMO)


def test_vision_tokens_dominate(encoder):
    """Per picture, image tokens outnumber the prompt's text tokens (template included) about
    6x (4.8x for the longest question); pooled over the calibration split, >= 80% of the
    tokens are image tokens."""
    n_img = n_txt = 0
    ratios = []
    for ex in tasks.split_examples("calibration", 128):
        ids = encoder.prompt(ex).input_ids
        img = int((ids == encoder.image_token_id).sum())
        txt = len(ids) - img
        if ex.image is not None:
            assert img == (tasks.IMAGE_SIZE // 32) ** 2
            ratios.append(img / txt)
        else:
            assert img == 0
        n_img, n_txt = n_img + img, n_txt + txt
    assert 4.5 <= min(ratios) and max(ratios) <= 20 and np.mean(ratios) >= 5
    assert n_img / (n_img + n_txt) >= 0.8


def test_export_is_calibration_data(tmp_path):
    from mode_edge.formats.samples import load_image, read_samples

    d = tasks.export_split(tmp_path / "calib", "calibration", 12)
    samples = read_samples(d, 100, seed=0)
    exs = tasks.split_examples("calibration", 12)
    assert [s.prompt for s in samples] == [e.prompt for e in exs]
    for s, e in zip(samples, exs):
        assert (s.image is None) == (e.image is None)
        if e.image is not None:
            assert np.array_equal(np.asarray(load_image(s.image)), e.image)  # PNG is lossless
    answers = [json.loads(line)["answer"] for line in (d / "prompts.jsonl").read_text().splitlines()]
    assert answers == [e.answer for e in exs]


def test_committed_calibration_data_is_the_split():
    """examples/demo-model/calibration is the calibration split's first 128 samples, as exported."""
    from mode_edge.formats.samples import load_image

    d = DEMO / "calibration"
    lines = [json.loads(line) for line in (d / "prompts.jsonl").read_text().splitlines()]
    exs = tasks.split_examples("calibration", len(lines))
    assert len(lines) == 128
    for obj, ex in zip(lines, exs):
        assert (obj["prompt"], obj["answer"], obj["task"]) == (ex.prompt, ex.answer, ex.task)
        assert ("image" in obj) == (ex.image is not None)
        if ex.image is not None:
            assert np.array_equal(np.asarray(load_image(d / obj["image"])), ex.image)
