"""VEQ's gamma: how much more the answer depends on a text token than on an image token.

VEQ (arXiv 2602.01037) weights text tokens by gamma = ||grad_text|| / ||grad_vis||, the ratio of
the gradient norms of the two modalities' tokens, and reports 22.4 for Qwen3-VL; its code is
not released. Our measurement, on a few calibration samples that have an image:

    L     = -log p(y | prompt), y the model's own greedy next token at the end of the prompt
            (the first answer token; calibration data carries no answers)
    g_t   = dL / dh0_t, h0 the decoder's input (token embeddings with the vision tower's
            features in the image positions)
    gamma = mean over text tokens of ||g_t|| / mean over image tokens of ||g_t||

pooled over the samples. The decoder runs layer by layer as in calibration (one layer
resident): a forward pass keeps each layer's input, then the backward pass reloads the layers
in reverse and recomputes each one with gradients from its saved input.
"""

from __future__ import annotations

import numpy as np
import torch


def measure_gamma(cal, rendered: list, n_samples: int) -> dict | None:
    """{"gamma", "samples", "text_grad", "image_grad"} or None when no sample has an image."""
    picks = [r for r in rendered if bool(cal.image_mask(r.input_ids).any())][: max(0, n_samples)]
    if not picks:
        return None
    states = [cal.embed(r) for r in picks]
    inputs = [[s.pop("hidden")] for s in states]  # inputs[k][il]: what enters layer il
    for il in range(cal.n_layers):
        layer = cal.load_layer(il)
        for k, s in enumerate(states):
            s["hidden"] = inputs[k][il]
            inputs[k].append(cal.run_layer(layer, il, s).cpu())
            del s["hidden"]
        del layer
    grads = []
    for k in range(len(states)):
        h = inputs[k][-1].detach().requires_grad_(True)
        with torch.enable_grad():
            logits = cal.head(h[-1:]).float()
            target = logits.argmax(-1).detach()
            loss = torch.nn.functional.cross_entropy(logits, target)
            grads.append(torch.autograd.grad(loss, h)[0])
    for il in reversed(range(cal.n_layers)):
        layer = cal.load_layer(il)
        for k, s in enumerate(states):
            x = inputs[k][il].detach().requires_grad_(True)
            s["hidden"] = x
            with torch.enable_grad():
                out = cal.run_layer(layer, il, s, grad=True)
                grads[k] = torch.autograd.grad(out, x, grad_outputs=grads[k].to(out.dtype))[0].cpu()
            del s["hidden"]
        del layer
    text, image = [], []
    for r, g in zip(picks, grads):
        norms = g.double().norm(dim=-1).numpy()
        is_image = cal.image_mask(r.input_ids)
        text.append(norms[~is_image])
        image.append(norms[is_image])
    t, v = float(np.concatenate(text).mean()), float(np.concatenate(image).mean())
    if not (np.isfinite(t) and np.isfinite(v)) or v <= 0:
        return None
    return {"gamma": t / v, "samples": len(picks), "text_grad": t, "image_grad": v}
