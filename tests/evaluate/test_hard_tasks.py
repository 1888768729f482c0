"""The hard suite (hard_tasks.py, hard-* splits): its own deterministic splits, a balanced test
split, and answers recovered from the pictures and prompts themselves."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np

from mode_edge.evaluate import hard_tasks, tasks
from tests.evaluate.test_tasks import _components, _digest, _foreground


def _mask(img: np.ndarray, color: str) -> np.ndarray:
    return np.all(img == np.array(tasks.COLORS[color], dtype=np.uint8), axis=-1)


def _named(prompt: str) -> list[str]:
    return [w.rstrip(",?") for w in prompt.split() if w.rstrip(",?") in tasks.COLORS]


def test_hard_splits_are_deterministic_and_their_own():
    a = [_digest(e) for e in tasks.split_examples("hard-test", 30)]
    assert a == [_digest(tasks.example("hard-test", i)) for i in range(30)]
    assert not set(a) & {_digest(e) for e in tasks.split_examples("test", 30)}
    assert {e.task for e in tasks.split_examples("hard-calibration", 200)} <= set(
        hard_tasks.VISION_TASKS + hard_tasks.TEXT_TASKS
    )
    vis = [tasks.family_example("hard-train", "vision", i) for i in range(80)]
    assert {e.task for e in vis} == set(hard_tasks.VISION_TASKS)
    assert all(tasks.family_of(e.task) == "vision" for e in vis)


def test_hard_test_split_is_balanced():
    """400 samples: 200 per family (one sample = 0.5 points), every task equally often."""
    exs = tasks.split_examples("hard-test", 400)
    fam = Counter(e.family for e in exs)
    assert fam == {"vision": 200, "text": 200}
    per_task = Counter(e.task for e in exs)
    assert {per_task[t] for t in hard_tasks.VISION_TASKS} == {25}
    assert {per_task[t] for t in hard_tasks.TEXT_TASKS} <= {33, 34}


def test_hard_vision_answers_match_the_pictures():
    for i in range(25):
        rng = random.Random(100 + i)
        ex = tasks.make_example("count_many", rng)
        assert _components(_foreground(ex.image)) == int(ex.answer)

        ex = tasks.make_example("count_color", rng)
        assert _components(_mask(ex.image, _named(ex.prompt)[0])) == int(ex.answer)
        assert _components(_foreground(ex.image)) > int(ex.answer)  # other shapes are there

        ex = tasks.make_example("middle", rng)
        cx = {c: np.nonzero(_mask(ex.image, c))[1] for c in _named(ex.prompt)}
        order = sorted(cx, key=lambda c: cx[c].mean())
        assert ex.answer == order[1]
        assert cx[order[0]].max() < cx[order[1]].min() and cx[order[1]].max() < cx[order[2]].min()

        ex = tasks.make_example("biggest", rng)
        area = {c: int(_mask(ex.image, c).sum()) for c in _named(ex.prompt)}
        assert ex.answer == max(area, key=area.get)  # by area, whatever the shapes

        ex = tasks.make_example("where_color", rng)
        ys, xs = np.nonzero(_mask(ex.image, _named(ex.prompt)[0]))
        half = tasks.IMAGE_SIZE / 2
        assert ex.answer == ("top" if ys.mean() < half else "bottom") + " " + (
            "left" if xs.mean() < half else "right"
        )

        ex = tasks.make_example("color_of_shape", rng)
        ys, xs = np.nonzero(_mask(ex.image, ex.answer))
        fill = len(ys) / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))  # square ~1, circle ~0.79, triangle ~0.5
        shape = ex.prompt.split()[-1].rstrip("?")
        assert {"square": fill > 0.95, "circle": 0.7 < fill < 0.85, "triangle": 0.4 < fill < 0.6}[shape]


def test_hard_text_answers_are_exact():
    for i in range(60):
        rng = random.Random(i)
        ex = tasks.make_example("add_big", rng)
        a, b = ex.prompt.removeprefix("What is ").removesuffix("?").split(" + ")
        assert ex.answer == str(int(a) + int(b)) and 10 <= int(a) <= 99
        ex = tasks.make_example("add_three", rng)
        assert ex.answer == str(
            sum(int(x) for x in ex.prompt.removeprefix("What is ").removesuffix("?").split(" + "))
        )
        ex = tasks.make_example("reverse_long", rng)
        assert ex.answer.split() == ex.prompt.removeprefix("Reverse: ").split()[::-1]
        ex = tasks.make_example("sort_long", rng)
        assert ex.answer.split() == sorted(ex.prompt.removeprefix("Sort: ").split())
        ex = tasks.make_example("capital_initial", rng)
        country = ex.prompt.split("capital of ")[1].split()[0]
        assert ex.answer == tasks.FACTS[country][0]
        ex = tasks.make_example("letter_after", rng)
        k, letter = int(ex.prompt.split()[3]), ex.prompt.split()[-1].rstrip("?")
        assert ord(ex.answer) == ord(letter) + k


def test_every_hard_picture_can_be_drawn():
    """Placement never gives up (seven shapes to count once did, and stopped a training run)."""
    for i in range(300):
        for task in hard_tasks.VISION_TASKS:
            assert hard_tasks.vision(task, random.Random(7_000 + i), tasks.IMAGE_SIZE).image is not None
