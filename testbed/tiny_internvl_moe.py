"""Build a tiny random HF-format InternVL3.5-MoE checkpoint (InternVLForConditionalGeneration:
an InternViT vision tower, pixel shuffle and an MLP projector in front of a qwen3_moe text
model) with the pinned transformers, offline.

The vision tower keeps InternVL3.5's real geometry where llama.cpp's mtmd depends on it
(448-pixel tiles, 14-pixel patches, downsample 0.5: 256 tokens per tile), with q/k/v biases and
layer scales, at a tiny width. Layouts: "legacy" is what transformers 5.24's save_pretrained
writes by default (language_model.model.*, vision_tower.*, one tensor per expert); "modules"
is save_original_format=False (model.language_model.*, fused gate_up_proj [E, 2I, H]).
"""

from __future__ import annotations

import json
from pathlib import Path

from testbed.tokenizer import save_tokenizer, train_tiny_tokenizer

LAYOUTS = ("legacy", "modules")
IMAGE_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>")

# InternVL's HF chat template: an image part renders <IMG_CONTEXT> (the processor expands it to
# <img> + 256 per tile + </img>); a text part that is a runtime's media marker passes through.
INTERNVL_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{- '<IMG_CONTEXT>\\n' -}}"
    "{%- elif part['type'] == 'text' -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)


def tiny_config_dict(
    vocab_size: int,
    special: dict[str, int],
    *,
    n_layers: int = 3,
    n_experts: int = 8,
    top_k: int = 2,
    hidden: int = 256,
    expert_ff: int = 256,
    init_std: float = 0.05,
) -> dict:
    return {
        "architectures": ["InternVLForConditionalGeneration"],
        "model_type": "internvl",
        "image_token_id": special["<IMG_CONTEXT>"],
        "image_seq_length": 256,
        "downsample_ratio": 0.5,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "qwen3_moe",
            "architectures": ["Qwen3MoeForCausalLM"],
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "intermediate_size": 512,
            "moe_intermediate_size": expert_ff,
            "num_hidden_layers": n_layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 64,
            "num_experts": n_experts,
            "num_experts_per_tok": top_k,
            "norm_topk_prob": True,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "hidden_act": "silu",
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            "initializer_range": init_std,
            "attention_bias": False,
            "tie_word_embeddings": False,
            "bos_token_id": None,
            "eos_token_id": special["<|im_end|>"],
            "pad_token_id": special["<|endoftext|>"],
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        },
        "vision_config": {
            "model_type": "internvl_vision",
            "architectures": ["InternVisionModel"],
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 128,
            "hidden_act": "gelu",
            "attention_bias": True,
            "use_qk_norm": False,
            "norm_type": "layer_norm",
            "layer_norm_eps": 1e-6,
            "image_size": [448, 448],
            "patch_size": [14, 14],
            "use_absolute_position_embeddings": True,
            "layer_scale_init_value": 0.1,
            "use_mean_pooling": True,
            "initializer_range": init_std,
        },
    }


def preprocessor_config() -> dict:
    return {
        "image_processor_type": "GotOcr2ImageProcessor",
        "do_resize": True,
        "size": {"height": 448, "width": 448},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "do_convert_rgb": True,
        "crop_to_patches": False,
        "min_patches": 1,
        "max_patches": 12,
    }


def _randomize(model, seed: int) -> None:
    """Layer scales start at 0.1 and LayerNorms at 1/0: random values make a misplaced one visible;
    the position table too (its CLS row is where llama.cpp's order differs from transformers')."""
    import torch

    gen = torch.Generator().manual_seed(seed + 11)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vision_tower" in name or "multi_modal_projector" in name:
                if name.endswith(("lambda_1", "lambda_2")) or p.ndim == 1 or "position_embeddings" in name:
                    p.add_(0.3 * torch.randn(p.shape, generator=gen))


def build_tiny_model(out_dir: Path, *, seed: int = 0, layout: str = "legacy", **config_overrides) -> Path:
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    out_dir = Path(out_dir)
    tok = train_tiny_tokenizer(extra_special=IMAGE_TOKENS)
    special = save_tokenizer(
        tok,
        out_dir,
        extra_special=IMAGE_TOKENS,
        chat_template=INTERNVL_CHAT_TEMPLATE,
        config_extra={
            "extra_special_tokens": {
                "start_image_token": "<img>",
                "end_image_token": "</img>",
                "context_image_token": "<IMG_CONTEXT>",
            }
        },
    )
    cfg = tiny_config_dict(tok.get_vocab_size(), special, **config_overrides)
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(InternVLConfig(**cfg)).eval()
    _randomize(model, seed)
    model.save_pretrained(out_dir, max_shard_size="8MB", save_original_format=layout == "legacy")
    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(), indent=2))
    return out_dir
