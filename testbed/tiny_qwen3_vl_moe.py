"""Build a tiny random Qwen3-VL-MoE checkpoint with the pinned transformers, offline.

Used by the tests (converter correctness against transformers) and by the README's main
job until the trained demo model exists. Widths are multiples of 256 so K-quants apply,
deepstack is on, and the checkpoint can be rewritten in each expert layout found in the
wild: as transformers 5 saves it, as Qwen published it, and one tensor per expert.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from testbed.tokenizer import save_tokenizer, train_tiny_tokenizer

LAYOUTS = ("transformers", "published", "per_expert")

PATCH = 16
MERGE = 2


def tiny_config_dict(
    vocab_size: int,
    special: dict[str, int],
    *,
    n_layers: int = 3,
    n_experts: int = 8,
    top_k: int = 2,
    hidden: int = 256,
    expert_ff: int = 512,
    init_std: float = 0.05,
) -> dict:
    head_dim = 64
    return {
        "architectures": ["Qwen3VLMoeForConditionalGeneration"],
        "model_type": "qwen3_vl_moe",
        "image_token_id": special["<|image_pad|>"],
        "video_token_id": special["<|video_pad|>"],
        "vision_start_token_id": special["<|vision_start|>"],
        "vision_end_token_id": special["<|vision_end|>"],
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "qwen3_vl_moe_text",
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "intermediate_size": 512,
            "moe_intermediate_size": expert_ff,
            "num_hidden_layers": n_layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": head_dim,
            "num_experts": n_experts,
            "num_experts_per_tok": top_k,
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
            # interleaved M-RoPE; sections sum to head_dim/2
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": [12, 10, 10],
                "mrope_interleaved": True,
            },
        },
        "vision_config": {
            "model_type": "qwen3_vl_moe_vision",
            "depth": 3,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "in_channels": 3,
            "patch_size": PATCH,
            "spatial_merge_size": MERGE,
            "temporal_patch_size": 2,
            "out_hidden_size": hidden,
            "num_position_embeddings": 64,  # an 8x8 learned grid, interpolated per image
            "deepstack_visual_indexes": [0, 2],
            "hidden_act": "gelu_pytorch_tanh",
            "initializer_range": init_std,
        },
    }


def preprocessor_config() -> dict:
    # Same limits llama.cpp applies to Qwen-VL images (8..4096 merged tokens).
    unit = PATCH * MERGE
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_convert_rgb": True,
        "patch_size": PATCH,
        "temporal_patch_size": 2,
        "merge_size": MERGE,
        "size": {"shortest_edge": 8 * unit * unit, "longest_edge": 4096 * unit * unit},
    }


#: Qwen3-VL-30B-A3B's MoE geometry: what the speed benchmarks measure at (few layers of it)
REAL_MOE_GEOMETRY = {"hidden": 2048, "n_experts": 128, "top_k": 8, "expert_ff": 768}


def build_real_geometry_model(out_dir: Path, n_layers: int) -> Path:
    """n_layers random MoE layers at REAL_MOE_GEOMETRY, in the published expert layout."""
    return build_tiny_model(
        out_dir, n_layers=n_layers, max_shard_size="2GB", layout="published", **REAL_MOE_GEOMETRY
    )


def build_tiny_model(
    out_dir: Path,
    *,
    seed: int = 0,
    layout: str = "transformers",
    max_shard_size: str = "8MB",
    **config_overrides,
) -> Path:
    """Create a random tiny Qwen3-VL-MoE checkpoint directory at out_dir and return it."""
    import torch
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    out_dir = Path(out_dir)
    tok = train_tiny_tokenizer()
    special = save_tokenizer(tok, out_dir)
    cfg_dict = tiny_config_dict(tok.get_vocab_size(), special, **config_overrides)
    torch.manual_seed(seed)
    config = Qwen3VLMoeConfig(**cfg_dict)
    model = Qwen3VLMoeForConditionalGeneration(config).eval()
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(), indent=2))
    if layout != "transformers":
        relayout_experts(out_dir, layout)
    return out_dir


def _expert_kind(name: str) -> str | None:
    if name.endswith("mlp.experts.gate_up_proj"):
        return "gate_up"
    if name.endswith("mlp.experts.down_proj"):
        return "down"
    return None


def relayout_experts(model_dir: Path, layout: str) -> None:
    """Rewrite the expert tensors of a transformers-saved checkpoint in place.

    transformers 5 keeps gate_up_proj as [E, 2*I, H] and down_proj as [E, H, I] (the
    layout save_pretrained writes); Qwen's published files hold [E, H, 2*I] / [E, I, H];
    older checkpoints hold experts.{e}.{gate,up,down}_proj.weight ([I, H], [I, H], [H, I]).
    """
    from safetensors.numpy import load_file, save_file

    model_dir = Path(model_dir)
    index_path = model_dir / "model.safetensors.index.json"
    shards = (
        sorted({v for v in json.loads(index_path.read_text())["weight_map"].values()})
        if index_path.exists()
        else ["model.safetensors"]
    )
    weight_map: dict[str, str] = {}
    for shard in shards:
        tensors = load_file(str(model_dir / shard))
        out: dict[str, np.ndarray] = {}
        for name, arr in tensors.items():
            kind = _expert_kind(name)
            if kind is None:
                out[name] = arr
            elif layout == "published":
                out[name] = np.ascontiguousarray(arr.transpose(0, 2, 1))
            else:  # per_expert
                prefix = name.rsplit(".", 1)[0]
                for e in range(arr.shape[0]):
                    if kind == "gate_up":
                        gate, up = np.split(arr[e], 2, axis=0)
                        out[f"{prefix}.{e}.gate_proj.weight"] = np.ascontiguousarray(gate)
                        out[f"{prefix}.{e}.up_proj.weight"] = np.ascontiguousarray(up)
                    else:
                        out[f"{prefix}.{e}.down_proj.weight"] = np.ascontiguousarray(arr[e])
        save_file(out, str(model_dir / shard), metadata={"format": "pt"})
        weight_map.update({k: shard for k in out})
    if index_path.exists():
        index = json.loads(index_path.read_text())
        index["weight_map"] = dict(sorted(weight_map.items()))
        index_path.write_text(json.dumps(index, indent=2))
