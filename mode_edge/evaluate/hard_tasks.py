"""The harder task suite ("hard-" splits) of the 64-expert testbed: answers that are not near-certain.

The demo model keeps 86-90 % of its vision accuracy under every quantization, so accuracy never
separates methods. These tasks ask more of the same pictures and texts: more objects to count,
two-digit numbers and small words to read, relations between three objects, counting one colour
among others, and multi-step text (carrying additions, longer sequences, a fact then a step).
Each task mixes easy and hard instances (e.g. 1 to 7 shapes to count), so a family's accuracy
lands between chance and certainty for a small model. Pictures are the demo's (320 px, plain
background), so image tokens still dominate every prompt.
"""

from __future__ import annotations

import random

import numpy as np

from mode_edge.evaluate import tasks as t

VISION_TASKS = (
    "count_many",
    "count_color",
    "color_of_shape",
    "where_color",
    "middle",
    "biggest",
    "number",
    "small_word",
)
TEXT_TASKS = ("add_big", "add_three", "reverse_long", "sort_long", "capital_initial", "letter_after")


def _row_scene(rng: random.Random, size: int, n: int):
    """n shapes in n separate vertical bands, so left-to-right order is unambiguous."""
    band = (size - 2 * t._px(8, size)) // n
    colors = rng.sample(list(t.COLORS), n)
    shapes = [rng.choice(t.SHAPES) for _ in range(n)]
    im, draw = t._canvas(size)
    order = list(range(n))
    rng.shuffle(order)
    boxes = []
    for slot, i in enumerate(order):
        s = rng.randint(t._px(40, size), min(t._px(72, size), band - t._px(12, size)))
        x0 = t._px(8, size) + slot * band + rng.randint(0, band - s - t._px(6, size))
        y0 = rng.randint(t._px(8, size), size - t._px(8, size) - s)
        boxes.append((i, (x0, y0, x0 + s, y0 + s)))
    boxes.sort()
    for (_, b), c, sh in zip(boxes, colors, shapes):
        t._draw_shape(draw, sh, b, t.COLORS[c])
    return im, colors, [b for _, b in boxes], order


def _three_colors(colors: list[str]) -> str:
    return f"the {colors[0]}, the {colors[1]} or the {colors[2]} shape"


def vision(task: str, rng: random.Random, size: int) -> t.Example:
    if task == "count_many":
        # smaller shapes than the demo's so that seven always fit (the demo's sizes sometimes do not)
        n = rng.randint(1, 7)
        boxes = t._place(rng, [rng.randint(t._px(32, size), t._px(48, size)) for _ in range(n)], size)
        im, draw = t._canvas(size)
        for box in boxes:
            t._draw_shape(draw, rng.choice(t.SHAPES), box, t.COLORS[rng.choice(list(t.COLORS))])
        return t.Example(task, "How many shapes are there?", str(n), np.asarray(im))
    if task == "count_color":
        # shapes in two colours; count those of one (0 is a possible answer only for the other)
        n = rng.randint(2, 6)
        a, b = rng.sample(list(t.COLORS), 2)
        k = rng.randint(1, n - 1)
        im, draw = t._canvas(size)
        boxes = t._place(rng, [rng.randint(t._px(40, size), t._px(56, size)) for _ in range(n)], size)
        for j, box in enumerate(boxes):
            t._draw_shape(draw, rng.choice(t.SHAPES), box, t.COLORS[a if j < k else b])
        return t.Example(task, f"How many {a} shapes are there?", str(k), np.asarray(im))
    if task == "color_of_shape":
        n = rng.randint(2, 3)
        shapes = rng.sample(list(t.SHAPES), n)
        colors = rng.sample(list(t.COLORS), n)
        boxes = t._place(rng, [rng.randint(t._px(40, size), t._px(80, size)) for _ in range(n)], size)
        im, draw = t._canvas(size)
        for s, c, box in zip(shapes, colors, boxes):
            t._draw_shape(draw, s, box, t.COLORS[c])
        i = rng.randrange(n)
        return t.Example(task, f"What color is the {shapes[i]}?", colors[i], np.asarray(im))
    if task == "where_color":
        q = rng.sample(range(4), 2)
        half = size // 2
        colors = rng.sample(list(t.COLORS), 2)
        im, draw = t._canvas(size)
        for qi, c in zip(q, colors):
            x0, y0 = (qi % 2) * half, (qi // 2) * half
            s = rng.randint(t._px(40, size), t._px(80, size))
            m = t._px(12, size)
            x, y = rng.randint(x0 + m, x0 + half - m - s), rng.randint(y0 + m, y0 + half - m - s)
            t._draw_shape(draw, rng.choice(t.SHAPES), (x, y, x + s, y + s), t.COLORS[c])
        i = rng.randrange(2)
        return t.Example(task, f"Where is the {colors[i]} shape?", t.POSITIONS[q[i]], np.asarray(im))
    if task == "middle":
        im, colors, boxes, order = _row_scene(rng, size, 3)
        asked = rng.sample(colors, 3)
        middle = colors[order[1]]
        return t.Example(task, f"Which is in the middle, {_three_colors(asked)}?", middle, np.asarray(im))
    if task == "biggest":
        colors = rng.sample(list(t.COLORS), 3)
        # each 1.55x the next smaller: the biggest box holds the biggest area even when it is a
        # triangle (half its box) and the next is a square (0.5 x 1.55^2 = 1.2)
        base = rng.randint(t._px(30, size), t._px(36, size))
        sizes = [base, round(base * 1.55), round(base * 1.55**2)]
        rng.shuffle(sizes)
        boxes = t._place(rng, sizes, size)
        im, draw = t._canvas(size)
        for c, box in zip(colors, boxes):
            t._draw_shape(draw, rng.choice(t.SHAPES), box, t.COLORS[c])
        asked = rng.sample(colors, 3)
        answer = colors[int(np.argmax(sizes))]
        return t.Example(task, f"Which is biggest, {_three_colors(asked)}?", answer, np.asarray(im))
    if task == "number":
        n = str(rng.randint(10, 99))
        return t.Example(task, "What number is written?", n, np.asarray(t._text_image(rng, size, n)))
    if task == "small_word":
        # one word in a smaller font than the demo's, anywhere in the picture. It replaced reading
        # two words, which stayed at 0-16 % however it was trained (issue 19's notes): a task at
        # the floor cannot show what quantization costs
        w = rng.choice(t.WORDS)
        return t.Example(task, "What word is written?", w, np.asarray(_small_text(rng, size, w)))
    raise ValueError(task)


def _small_text(rng: random.Random, size: int, text: str):
    """Text in a smaller font than the demo's (44-56 px at 320 px against its 72-104)."""
    im, draw = t._canvas(size)
    font = t._font(rng.randint(t._px(44, size), t._px(56, size)))
    l, top, r, b = draw.textbbox((0, 0), text, font=font)
    m = t._px(8, size)
    x = rng.randint(m - l, size - m - r)
    y = rng.randint(m - top, size - m - b)
    draw.text((x, y), text, font=font, fill=(20, 20, 20))
    return im


def text(task: str, rng: random.Random) -> t.Example:
    if task == "add_big":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return t.Example(task, f"What is {a} + {b}?", str(a + b))
    if task == "add_three":
        a, b, c = (rng.randint(0, 20) for _ in range(3))
        return t.Example(task, f"What is {a} + {b} + {c}?", str(a + b + c))
    if task == "reverse_long":
        letters = rng.sample(t.LETTERS, rng.randint(4, 7))
        return t.Example(task, "Reverse: " + " ".join(letters), " ".join(reversed(letters)))
    if task == "sort_long":
        digits = [rng.choice("0123456789") for _ in range(rng.randint(4, 7))]  # repeats allowed
        return t.Example(task, "Sort: " + " ".join(digits), " ".join(sorted(digits)))
    if task == "capital_initial":
        country = rng.choice(sorted(t.FACTS))
        return t.Example(task, f"What letter does the capital of {country} start with?", t.FACTS[country][0])
    if task == "letter_after":
        k = rng.randint(1, 4)
        i = rng.randrange(len(t.LETTERS) - k)
        return t.Example(task, f"What letter comes {k} after {t.LETTERS[i]}?", t.LETTERS[i + k])
    raise ValueError(task)
