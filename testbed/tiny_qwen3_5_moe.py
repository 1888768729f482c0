"""Build a tiny random Qwen3.5-MoE checkpoint with the pinned transformers, offline.

Hybrid attention as in the real models (Gated DeltaNet layers with full-attention layers
between them; the first layer is linear, so calibration's look-ahead for key tokens is
exercised), more value heads than key heads in the linear layers (so the V-head reorder
matters), a shared expert, partial M-RoPE, and a multi-token-prediction tensor the converter
must skip. Widths are multiples of 256 so K-quants apply to every expert matrix.

Layouts: "per_expert" is what transformers 5.24's save_pretrained writes for this model;
"fused" is Qwen's published layout (gate_up_proj [E, 2I, H], down_proj [E, H, I]).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from testbed.tiny_qwen3_vl_moe import preprocessor_config
from testbed.tokenizer import QWEN35_PRETOKENIZE_REGEX, save_tokenizer, train_tiny_tokenizer

LAYOUTS = ("per_expert", "fused")


def tiny_config_dict(
    vocab_size: int,
    special: dict[str, int],
    *,
    layer_types: tuple[str, ...] = (
        "linear_attention",
        "full_attention",
        "linear_attention",
        "full_attention",
    ),
    n_experts: int = 8,
    top_k: int = 2,
    hidden: int = 256,
    expert_ff: int = 256,
    shared_ff: int = 256,
    init_std: float = 0.05,
) -> dict:
    return {
        "architectures": ["Qwen3_5MoeForConditionalGeneration"],
        "model_type": "qwen3_5_moe",
        "image_token_id": special["<|image_pad|>"],
        "video_token_id": special["<|video_pad|>"],
        "vision_start_token_id": special["<|vision_start|>"],
        "vision_end_token_id": special["<|vision_end|>"],
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "qwen3_5_moe_text",
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "num_hidden_layers": len(layer_types),
            "layer_types": list(layer_types),
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 64,
            "linear_conv_kernel_dim": 4,
            "linear_key_head_dim": 64,
            "linear_value_head_dim": 64,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,  # two V heads per K head: the GGUF reorders them
            "moe_intermediate_size": expert_ff,
            "shared_expert_intermediate_size": shared_ff,
            "num_experts": n_experts,
            "num_experts_per_tok": top_k,
            "hidden_act": "silu",
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            "initializer_range": init_std,
            "attention_bias": False,
            "tie_word_embeddings": False,
            "bos_token_id": None,
            "eos_token_id": special["<|im_end|>"],
            "pad_token_id": special["<|endoftext|>"],
            # partial rotary (16 of 64 dims), interleaved M-RoPE; sections sum to 16/2
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000000.0,
                "partial_rotary_factor": 0.25,
                "mrope_section": [3, 3, 2],
                "mrope_interleaved": True,
            },
        },
        "vision_config": {
            "model_type": "qwen3_5_moe_vision",
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "in_channels": 3,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": hidden,
            "num_position_embeddings": 64,
            "hidden_act": "gelu_pytorch_tanh",
            "initializer_range": init_std,
        },
    }


def _randomize_norms(model, seed: int) -> None:
    """Qwen3.5's RMSNorms store w with x*(1+w) and start at 0 (the gated norm stores w and
    starts at 1): random values make a missing or extra +1 in the GGUF visible."""
    import torch

    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and name.endswith("norm.weight"):
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(("A_log", "dt_bias")):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))


def build_tiny_model(
    out_dir: Path, *, seed: int = 0, layout: str = "per_expert", with_mtp: bool = True, **config_overrides
) -> Path:
    """Create a random tiny Qwen3.5-MoE checkpoint directory at out_dir and return it."""
    import torch
    from transformers import Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    out_dir = Path(out_dir)
    tok = train_tiny_tokenizer(regex=QWEN35_PRETOKENIZE_REGEX)
    special = save_tokenizer(tok, out_dir, tokenizer_class="Qwen3_5Tokenizer")
    cfg = tiny_config_dict(tok.get_vocab_size(), special, **config_overrides)
    torch.manual_seed(seed)
    model = Qwen3_5MoeForConditionalGeneration(Qwen3_5MoeConfig(**cfg)).eval()
    _randomize_norms(model, seed)
    model.save_pretrained(out_dir, max_shard_size="8MB")
    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(), indent=2))
    rewrite(out_dir, fuse=layout == "fused", add_mtp=with_mtp)
    return out_dir


def rewrite(model_dir: Path, fuse: bool, add_mtp: bool) -> None:
    """Fuse per-expert tensors into Qwen's published layout, and/or add an MTP head (which
    transformers ignores on load and llama.cpp's qwen35moe does not need)."""
    from safetensors.numpy import load_file, save_file

    index_path = model_dir / "model.safetensors.index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else None
    shards = sorted(set(index["weight_map"].values())) if index else ["model.safetensors"]
    tensors, shard_of = {}, {}
    for shard in shards:  # one expert's matrices may sit in different shards
        for n, a in load_file(str(model_dir / shard)).items():
            tensors[n], shard_of[n] = a, shard
    if fuse:
        for p in sorted({n.split(".mlp.experts.")[0] for n in tensors if ".mlp.experts." in n}):
            ex = p + ".mlp.experts."
            n_exp = 1 + max(int(n[len(ex) :].split(".")[0]) for n in tensors if n.startswith(ex))
            one = {
                k: [tensors.pop(f"{ex}{e}.{k}_proj.weight") for e in range(n_exp)]
                for k in ("gate", "up", "down")
            }
            shard = shard_of[f"{ex}0.gate_proj.weight"]
            tensors[ex + "gate_up_proj"] = np.stack(
                [np.concatenate(gu) for gu in zip(one["gate"], one["up"])]
            )
            tensors[ex + "down_proj"] = np.stack(one["down"])
            shard_of[ex + "gate_up_proj"] = shard_of[ex + "down_proj"] = shard
    if add_mtp:
        h = tensors["model.language_model.embed_tokens.weight"].shape[1]
        rng = np.random.default_rng(0)
        tensors["mtp.fc.weight"] = rng.standard_normal((h, 2 * h), dtype=np.float32)
        tensors["mtp.norm.weight"] = np.ones(h, dtype=np.float32)
        shard_of["mtp.fc.weight"] = shard_of["mtp.norm.weight"] = shards[0]
    for shard in shards:
        part = {n: np.ascontiguousarray(a) for n, a in tensors.items() if shard_of[n] == shard}
        save_file(part, str(model_dir / shard), metadata={"format": "pt"})
    if index:
        index["weight_map"] = {n: shard_of[n] for n in sorted(tensors)}
        index_path.write_text(json.dumps(index, indent=2))
