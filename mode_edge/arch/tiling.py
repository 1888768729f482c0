"""The tiles llama.cpp's mtmd cuts an image into (llava-uhd slicing, tools/mtmd/mtmd-image.cpp),
for the architectures whose projector slices (InternVL, Llama 4): calibration must see the
tiles the runtime will feed, not the ones transformers' processors cut."""

from __future__ import annotations

import numpy as np


def internvl_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """InternVL's (a, b) grids, min <= a*b <= max, in mtmd's order."""
    return [
        (a, b)
        for a in range(min_tiles, max_tiles + 1)
        for b in range(max(-(-min_tiles // a), min_tiles), min(max_tiles // a, max_tiles) + 1)
    ]


def llama4_grids(per_side: int = 3) -> list[tuple[int, int]]:
    """Llama 4's (x, y) grids up to per_side tiles a side, one tile excluded (mtmd's
    set_llava_uhd_res_candidates(model, 3))."""
    return [(x, y) for x in range(1, per_side + 1) for y in range(1, per_side + 1) if (x, y) != (1, 1)]


def mtmd_tiles(image, tile: int, grids: list[tuple[int, int]]) -> list:
    """An image that fits one tile is stretched to it; a larger one is resized into the grid
    (columns, rows) that keeps the most of its pixels, then the least padding, aspect kept and
    centred on black, cut row by row, and followed by the whole image stretched to one tile
    (the overview). Sizes are computed in float32, as mtmd does."""
    from PIL import Image

    w, h = image.size
    if w <= tile and h <= tile:
        return [image.resize((tile, tile), Image.BICUBIC)]
    f32 = np.float32
    best, best_eff, best_waste = None, 0, None
    for a, b in grids:
        cw, ch = a * tile, b * tile
        s = min(f32(cw) / f32(w), f32(ch) / f32(h))
        eff = min(int(f32(w) * s) * int(f32(h) * s), w * h)
        waste = cw * ch - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (cw, ch), eff, waste
    cw, ch = best
    s = min(f32(cw) / f32(w), f32(ch) / f32(h))
    nw, nh = min(int(np.ceil(f32(w) * s)), cw), min(int(np.ceil(f32(h) * s)), ch)
    refined = Image.new("RGB", (cw, ch), (0, 0, 0))
    refined.paste(image.resize((nw, nh), Image.BICUBIC), ((cw - nw) // 2, (ch - nh) // 2))
    tiles = [refined.crop((x, y, x + tile, y + tile)) for y in range(0, ch, tile) for x in range(0, cw, tile)]
    return [*tiles, image.resize((tile, tile), Image.BICUBIC)]
