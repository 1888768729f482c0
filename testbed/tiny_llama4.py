"""Build a tiny random Llama 4 (Llama4ForConditionalGeneration) checkpoint, offline.

What Llama 4 has and the others do not, all exercised: MoE layers interleaved with dense ones
(interleave_moe_layer_step 2: layers 1 and 3), top-1 sigmoid routing whose score scales the
expert's *input*, a shared expert, chunked attention on the RoPE layers and a NoPE layer (every
4th, full attention, temperature tuning), weightless q/k RMS norms after RoPE, and its vision
tower (unfold patch embedding, class token at the end, 2-D rope, pixel shuffle, adapter MLP).

llama.cpp hard-codes Llama 4's chunk size (8192), NoPE pattern (every 4th layer) and
temperature constants, so the tiny model keeps transformers' defaults for those; tests of the
key-token filter under chunking set a small chunk on the transformers side only.

A 56 px tile is 4x4 patches, pixel-shuffled 2x2 into 4 image tokens, so the order of tokens
within a tile (which llama.cpp's shuffle transposes) is visible.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from testbed.tokenizer import save_tokenizer, train_tiny_tokenizer

# GPT-4o's split regex, which Llama 4's tokenizer.json holds (llama.cpp: pre-tokenizer llama4)
GPT4O_PRETOKENIZE_REGEX = (
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
    r"""|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
    r"""|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

LLAMA4_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|header_start|>",
    "<|header_end|>",
    "<|eot|>",
    "<|eom|>",
    "<|finetune_right_pad|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|image_start|>",
    "<|image_end|>",
    "<|image|>",
    "<|patch|>",
    "<|tile_x_separator|>",
    "<|tile_y_separator|>",
]

# Llama 4's template shape: <|header_start|>role<|header_end|>\n\n ... <|eot|>; an image part is
# <|image|>, as in Llama 4's own template (mtmd's marker replaces it at run time and writes
# <|image_start|> … <|image_end|>; transformers' processor expands it into tiles itself)
LLAMA4_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|header_start|>' + message['role'] + '<|header_end|>\\n\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{- '<|image|>' -}}"
    "{%- elif part['type'] == 'text' -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|eot|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|header_start|>assistant<|header_end|>\\n\\n' -}}"
    "{%- endif -%}"
)

TILE, PATCH = 56, 14


def tiny_config_dict(
    vocab_size: int,
    special: dict[str, int],
    *,
    n_layers: int = 4,
    moe_step: int = 2,
    n_experts: int = 8,
    top_k: int = 1,
    hidden: int = 256,
    expert_ff: int = 256,
    dense_ff: int = 512,
    init_std: float = 0.05,
) -> dict:
    return {
        "architectures": ["Llama4ForConditionalGeneration"],
        "model_type": "llama4",
        "boi_token_index": special["<|image_start|>"],
        "eoi_token_index": special["<|image_end|>"],
        "image_token_index": special["<|patch|>"],
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "llama4_text",
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "intermediate_size": expert_ff,  # experts and the shared expert
            "intermediate_size_mlp": dense_ff,  # the dense layers
            "num_hidden_layers": n_layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 64,
            "num_local_experts": n_experts,
            "num_experts_per_tok": top_k,
            "interleave_moe_layer_step": moe_step,
            "use_qk_norm": True,
            "no_rope_layer_interval": 4,
            "attention_chunk_size": 8192,
            "attn_temperature_tuning": True,
            "floor_scale": 8192,
            "attn_scale": 0.1,
            "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
            "hidden_act": "silu",
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "initializer_range": init_std,
            "tie_word_embeddings": False,
            "bos_token_id": special["<|begin_of_text|>"],
            "eos_token_id": [special["<|end_of_text|>"], special["<|eot|>"], special["<|eom|>"]],
            "pad_token_id": special["<|finetune_right_pad|>"],
        },
        "vision_config": {
            "model_type": "llama4_vision_model",
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 3,  # llama.cpp's converter maps the adapter's fc2 only with >= 3
            "intermediate_size": 256,  # 4 x hidden: what the pixel shuffle feeds the adapter
            "image_size": TILE,
            "patch_size": PATCH,
            "pixel_shuffle_ratio": 0.5,
            "projector_input_dim": 128,
            "projector_output_dim": 128,
            "vision_output_dim": 128,
            "norm_eps": 1e-5,
            "hidden_act": "gelu",
            "initializer_range": init_std,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        },
    }


def preprocessor_config() -> dict:
    return {
        "image_processor_type": "Llama4ImageProcessorFast",
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_convert_rgb": True,
        "size": {"height": TILE, "width": TILE},
        "max_patches": 16,
        "resize_to_max_canvas": False,
    }


def _randomize(model, seed: int) -> None:
    """Norms start at one: random values make a wrong norm mapping visible."""
    import torch

    gen = torch.Generator().manual_seed(seed + 13)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or "layernorm" in name) and name.endswith("weight"):
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1 and name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def build_tiny_model(out_dir: Path, *, seed: int = 0, **config_overrides) -> Path:
    """Create a random tiny Llama 4 checkpoint directory at out_dir and return it."""
    import torch
    from transformers import Llama4Config, Llama4ForConditionalGeneration

    out_dir = Path(out_dir)
    tok = train_tiny_tokenizer(
        regex=GPT4O_PRETOKENIZE_REGEX, specials=LLAMA4_SPECIAL_TOKENS, ignore_merges=True
    )
    special = save_tokenizer(
        tok,
        out_dir,
        tokenizer_class="PreTrainedTokenizerFast",
        chat_template=LLAMA4_CHAT_TEMPLATE,
        specials=LLAMA4_SPECIAL_TOKENS,
        config_extra={
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot|>",
            "pad_token": "<|finetune_right_pad|>",
            "add_bos_token": False,  # the template writes it
        },
    )
    cfg = tiny_config_dict(tok.get_vocab_size(), special, **config_overrides)
    torch.manual_seed(seed)
    model = Llama4ForConditionalGeneration(Llama4Config(**cfg)).eval()
    _randomize(model, seed)
    model.save_pretrained(out_dir, max_shard_size="8MB")
    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(), indent=2))
    return out_dir


def sample_image(width: int = TILE, height: int = TILE, seed: int = 0) -> np.ndarray:
    """An RGB picture of exactly one tile (no resize on either side)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    img[: height // 2, : width // 2] = (230, 40, 40)
    return img
