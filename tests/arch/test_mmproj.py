"""The vision projector GGUF, run by llama.cpp's mtmd, against transformers' vision tower.

Tolerance: the mmproj stores its matrices in F16 (as every Qwen-VL mmproj does), and
ggml's CPU F16 matmul also rounds the activations to F16 (unit roundoff 2^-11 ~ 4.9e-4).
The reference below uses the same F16-rounded weights, so what remains is activation
rounding through 3 blocks and the merger: we allow 2e-3 of the embeddings' value range
(about 4 F16 roundings; measured ~3e-4) and require cosine similarity > 0.99999.
"""

from __future__ import annotations

import base64
import copy
import io

import numpy as np
import pytest
import torch
from PIL import Image


def _f16_vision_reference(model):
    """A copy of the model whose vision weights are rounded as the mmproj stores them."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in ref.model.visual.named_parameters():
            if p.ndim > 1 and "pos_embed" not in name:  # matrices and conv kernels are F16
                p.copy_(p.half().float())
    return ref


@pytest.fixture(scope="module")
def reference(hf_models):
    return _f16_vision_reference(hf_models("transformers"))


@pytest.fixture(scope="module")
def image_inputs(tiny_models, test_image):
    from transformers import AutoImageProcessor

    proc = AutoImageProcessor.from_pretrained(tiny_models["transformers"])
    return proc(images=[Image.fromarray(test_image)], return_tensors="pt")


@pytest.fixture(scope="module")
def session(converted):
    from mode_edge.run.mtmd import MtmdSession

    text, mmproj = converted["transformers"]
    with MtmdSession(text, mmproj, f32_kv=True) as s:
        yield s


@pytest.mark.runtime
def test_image_embeddings_match_transformers(reference, image_inputs, session, test_image):
    with torch.no_grad():
        out = reference.model.visual(image_inputs["pixel_values"], grid_thw=image_inputs["image_grid_thw"])
    # llama.cpp returns [merged tokens, text width * (1 + deepstack layers)]: main path first
    ref = torch.cat([out.pooler_output, *out.deepstack_features], dim=-1).numpy()
    got = session.image_embeddings(test_image)
    assert got.shape == ref.shape == (12, 256 * 3)
    assert np.abs(got - ref).max() <= 2e-3 * float(ref.max() - ref.min())
    cos = float((got * ref).sum() / np.linalg.norm(got) / np.linalg.norm(ref))
    assert cos > 0.99999


@pytest.mark.runtime
def test_image_prompt_logits_match_transformers(reference, image_inputs, session, tiny_models, test_image):
    """Text model + projector together: M-RoPE positions of image tokens and deepstack
    injection into the first decoder layers must agree with transformers."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["transformers"])
    n_img = int(image_inputs["image_grid_thw"].prod()) // 4
    question = "What shape is this?<|im_end|>\n<|im_start|>assistant\n"
    hf_text = "<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * n_img + "<|vision_end|>" + question
    ids = tok(hf_text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = (
            reference(
                input_ids=ids,
                mm_token_type_ids=(ids == reference.config.image_token_id).int(),
                pixel_values=image_inputs["pixel_values"],
                image_grid_thw=image_inputs["image_grid_thw"],
            )
            .logits[0, -1]
            .numpy()
        )
    # mtmd wraps the image in <|vision_start|> … <|vision_end|> itself
    got = session.last_logits("<|im_start|>user\n" + session.marker + question, [test_image])
    assert np.abs(got - ref).max() <= 2e-3 * float(ref.max() - ref.min())
    assert got.argmax() == ref.argmax()


@pytest.mark.runtime
def test_chat_handler_answers_with_image(converted, test_image):
    import llama_cpp
    from llama_cpp.llama_chat_format import MTMDChatHandler

    text, mmproj = converted["transformers"]
    buf = io.BytesIO()
    Image.fromarray(test_image).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    llm = llama_cpp.Llama(
        str(text),
        n_ctx=512,
        verbose=False,
        n_threads=2,
        chat_handler=MTMDChatHandler(clip_model_path=str(mmproj), verbose=False),
    )
    try:
        reply = llm.create_chat_completion(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": "What shape is in the picture?"},
                    ],
                }
            ],
            max_tokens=8,
            temperature=0.0,
            seed=0,
        )
    finally:
        llm.close()
    usage = reply["usage"]
    # the prompt holds the 12 image embeddings plus the templated text
    assert usage["prompt_tokens"] > 12 + 10
    assert usage["completion_tokens"] >= 1
    assert isinstance(reply["choices"][0]["message"]["content"], str)
