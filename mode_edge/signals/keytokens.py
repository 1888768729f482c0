"""MODE's denoising: which image tokens the text after the image attends to.

s_j = mean over heads and text queries q of softmax_row(q)[j], for image tokens j; keep the
top floor(rho*|V|) (at least 1). Only the rows of the selected queries are computed
([heads, n_queries, T] scores), never the full [T, T] attention matrix.
"""

from __future__ import annotations

import math

import torch


def newline_ids(tokenizer) -> set[int]:
    """Tokens that end with a newline: where a role header written after a turn's opening
    token ends (query_positions)."""
    return {
        i for t, i in tokenizer.get_vocab().items() if tokenizer.convert_tokens_to_string([t]).endswith("\n")
    }


def query_positions(
    ids: torch.Tensor,
    image_mask: torch.Tensor,
    special: set[int],
    newline_ids: set[int],
    im_start_id: int | None,
) -> torch.Tensor:
    """Positions of text queries: after the first image token, not image, not special, and not
    the role header a chat template writes after the token that opens a turn (Calibration.turn_start_id),
    up to its newline."""
    T = ids.shape[0]
    keep = torch.zeros(T, dtype=torch.bool)
    img = torch.nonzero(image_mask).flatten()
    if img.numel() == 0:
        return torch.nonzero(keep).flatten()
    in_header = False
    for t in range(T):
        tok = int(ids[t])
        if im_start_id is not None and tok == im_start_id:
            in_header = True
            continue
        if in_header:
            if tok in newline_ids:
                in_header = False
            continue
        keep[t] = t > int(img[0]) and not bool(image_mask[t]) and tok not in special
    return torch.nonzero(keep).flatten()


def key_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    scaling: float,
    queries: torch.Tensor,
    image_mask: torch.Tensor,
    chunk: int | None = None,
) -> torch.Tensor:
    """Mean post-softmax attention each image token receives from `queries` (causal rows).
    chunk: chunked attention (Llama 4), a query sees only the keys of its own chunk of `chunk`
    positions; an image token in an earlier chunk receives 0 from it."""
    qs = q[:, queries, :].float()  # [H, nq, d]
    scores = torch.einsum("hqd,htd->hqt", qs, k.float()) * scaling
    T = k.shape[1]
    pos = torch.arange(T, device=k.device)[None, :]
    hidden = pos > queries[:, None]  # [nq, T] keys after the query
    if chunk is not None:
        hidden = hidden | (pos // chunk != queries[:, None] // chunk)
    scores = scores.masked_fill(hidden[None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return probs[:, :, image_mask].mean(dim=(0, 1))  # [n_image]


def select_key_tokens(scores: torch.Tensor, rho: float) -> torch.Tensor:
    """Indices (into the image tokens) of the top floor(rho*|V|) scores, at least one."""
    n = scores.numel()
    k = max(1, math.floor(rho * n))
    return torch.topk(scores, k).indices.sort().values
