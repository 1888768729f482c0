"""Build a tiny random GLM-4.5V (Glm4vMoeForConditionalGeneration) checkpoint, offline.

What GLM-4.5V has and Qwen does not, all exercised: a leading dense layer
(first_k_dense_replace), a shared expert, a sigmoid router whose score-correction bias picks
the experts (random here: it starts at zero), grouped top-k (2 groups, the best 1 kept), a
routed scaling factor != 1, partial rotary with (non-interleaved) M-RoPE sections, q/k/v biases,
and GLM's vision tower (patch 14, RMSNorm blocks, a 2x2 conv downsample, a SwiGLU merger).
Widths are multiples of 256 so K-quants apply to every expert matrix.

Layouts: "per_expert" is what transformers 5.24's save_pretrained writes (and GLM publishes);
"fused" is transformers' in-memory layout (gate_up_proj [E, 2I, H], down_proj [E, H, I]), what
save_pretrained(save_original_format=False) writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from testbed.tokenizer import LLAMA3_PRETOKENIZE_REGEX, save_tokenizer, train_tiny_tokenizer

LAYOUTS = ("per_expert", "fused")
PATCH, MERGE = 14, 2

GLM_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|image|>",
    "<|video|>",
]

# GLM-4.5V's template shape: [gMASK]<sop>, <|role|>\n turns, the image as
# <|begin_of_image|><|image|><|end_of_image|> (the processor expands <|image|>)
GLM_CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{- '<|begin_of_image|><|image|><|end_of_image|>' -}}"
    "{%- elif part['type'] == 'text' -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|assistant|>\\n' -}}"
    "{%- endif -%}"
)

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def tiny_config_dict(
    vocab_size: int,
    special: dict[str, int],
    *,
    n_layers: int = 3,
    first_dense: int = 1,
    n_experts: int = 8,
    top_k: int = 2,
    n_group: int = 2,
    topk_group: int = 1,
    hidden: int = 256,
    expert_ff: int = 256,
    dense_ff: int = 512,
    init_std: float = 0.05,
) -> dict:
    return {
        "architectures": ["Glm4vMoeForConditionalGeneration"],
        "model_type": "glm4v_moe",
        "image_token_id": special["<|image|>"],
        "video_token_id": special["<|video|>"],
        "image_start_token_id": special["<|begin_of_image|>"],
        "image_end_token_id": special["<|end_of_image|>"],
        "video_start_token_id": special["<|begin_of_video|>"],
        "video_end_token_id": special["<|end_of_video|>"],
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "glm4v_moe_text",
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "intermediate_size": dense_ff,
            "moe_intermediate_size": expert_ff,
            "num_hidden_layers": n_layers,
            "first_k_dense_replace": first_dense,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 64,
            "attention_bias": True,
            "n_routed_experts": n_experts,
            "num_experts_per_tok": top_k,
            "n_shared_experts": 1,
            "n_group": n_group,
            "topk_group": topk_group,
            "routed_scaling_factor": 1.5,
            "norm_topk_prob": True,
            "hidden_act": "silu",
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "initializer_range": init_std,
            "tie_word_embeddings": False,
            "eos_token_id": [special["<|endoftext|>"], special["<|user|>"], special["<|observation|>"]],
            "pad_token_id": special["<|endoftext|>"],
            # partial rotary: 32 of 64 dims; M-RoPE sections (t, h, w) over its 16 frequencies
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "mrope_section": [4, 6, 6],
            },
        },
        "vision_config": {
            "model_type": "glm4v_moe_vision",
            "depth": 2,
            "hidden_size": 64,
            "num_heads": 2,
            "intermediate_size": 128,  # the merger's SwiGLU width
            "out_hidden_size": hidden,  # also the blocks' MLP width and the downsample's channels
            "patch_size": PATCH,
            "image_size": 112,  # an 8x8 learned position grid, interpolated per image
            "spatial_merge_size": MERGE,
            "temporal_patch_size": 2,
            "in_channels": 3,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-5,
            "attention_bias": False,
            "initializer_range": init_std,
        },
    }


def preprocessor_config() -> dict:
    """GLM-4.5V's image processor settings, with llama.cpp's limits (8..4096 merged tokens;
    transformers compares t*h*w with them, t = 2, hence the doubled sizes)."""
    unit = PATCH * MERGE
    return {
        "image_processor_type": "Glm4vImageProcessor",
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "do_convert_rgb": True,
        "patch_size": PATCH,
        "temporal_patch_size": 2,
        "merge_size": MERGE,
        "size": {"shortest_edge": 2 * 8 * unit * unit, "longest_edge": 2 * 4096 * unit * unit},
    }


def _randomize(model, seed: int) -> None:
    """The score-correction bias starts at zero and the norms at one: random values make a
    missing bias or a wrong norm visible."""
    import torch

    gen = torch.Generator().manual_seed(seed + 11)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.3 * torch.randn(b.shape, generator=gen))
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1 and name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def build_tiny_model(out_dir: Path, *, seed: int = 0, layout: str = "per_expert", **config_overrides) -> Path:
    """Create a random tiny GLM-4.5V checkpoint directory at out_dir and return it."""
    import torch
    from transformers import Glm4vMoeConfig, Glm4vMoeForConditionalGeneration

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    out_dir = Path(out_dir)
    tok = train_tiny_tokenizer(
        regex=LLAMA3_PRETOKENIZE_REGEX, specials=GLM_SPECIAL_TOKENS, ignore_merges=True
    )
    special = save_tokenizer(
        tok,
        out_dir,
        tokenizer_class="PreTrainedTokenizerFast",
        chat_template=GLM_CHAT_TEMPLATE,
        specials=GLM_SPECIAL_TOKENS,
        config_extra={"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
    )
    cfg = tiny_config_dict(tok.get_vocab_size(), special, **config_overrides)
    torch.manual_seed(seed)
    model = Glm4vMoeForConditionalGeneration(Glm4vMoeConfig(**cfg)).eval()
    _randomize(model, seed)
    model.save_pretrained(out_dir, max_shard_size="8MB", save_original_format=layout == "per_expert")
    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(), indent=2))
    return out_dir


def sample_image(width: int = 112, height: int = 84, seed: int = 0) -> np.ndarray:
    """An RGB picture whose sides are multiples of 28 (no resize on either side): 4x3 = 12
    merged tokens."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    img[: height // 2, : width // 2] = (230, 40, 40)  # a block, so it is not pure noise
    return img
