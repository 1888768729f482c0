"""GLM-4.5V (Glm4vMoeForConditionalGeneration) -> llama.cpp `glm4moe` + mmproj `glm4v`.

What differs from Qwen3-VL-MoE (whose expert layouts and checkpoint prefixes it shares):

- leading dense layers (`first_k_dense_replace`): plain SwiGLU FFNs (GGUF ffn_{gate,up,down},
  Role.FFN), which llama.cpp finds through `leading_dense_block_count`; calibration measures
  them like shared experts and the allocator makes them ILP items (or --dense-type);
- a shared expert in every MoE layer (ffn_*_shexp, Role.SHARED);
- the router: sigmoid scores, a score-correction bias (GGUF exp_probs_b) that only picks the
  experts, grouped top-k (the best `topk_group` of `n_group` groups by their top-2 sum), weights
  from the unbiased sigmoid, renormalised, times `routed_scaling_factor`. llama.cpp's
  build_moe_ffn does the same (expert_group_count / _used_count, gating func SIGMOID, weights
  norm and scale); calibration records transformers' own router output;
- partial rotary (head_dim * partial_rotary_factor) with plain (not interleaved) M-RoPE
  sections t, h, w over its frequencies, rotate-half pairs, so q/k need no permutation;
- q/k/v biases, no q/k norm; the FFN pre-norm is GGUF post_attention_norm;
- pre-tokenizer glm4 (Llama 3's regex; llama.cpp's glm4 also matches whole words first);
- the vision tower: Conv3d patch kernel split into two 2-D kernels (+ bias), RMSNorms, a
  learned position grid, a 2x2 conv downsample (mm.patch_merger, kept 4-D) and a merger
  (proj, LayerNorm, GELU, SwiGLU), as clip's glm4v graph expects.

Layers past num_hidden_layers (the next-token-prediction layer GLM-4.5 checkpoints carry) are
skipped on purpose: transformers' Glm4vMoe ignores them on load and llama.cpp's glm4moe runs
without them (no nextn_predict_layers key is written). topk_group == n_group keeps every group,
which is no grouping: written as one group (llama.cpp asserts topk_group < n_group).
Images: calibration uses transformers' processor with llama.cpp's glm4v token limits (8..4096
merged tokens). It stretches to the 28-px grid where mtmd keeps the aspect ratio and pads the few
pixels left, and rounds half to even where mtmd rounds half away: sizes whose side / 28 is
exactly x.5 get different grids (the tests use sides that are multiples of 28).
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
from gguf import (
    MODEL_ARCH,
    MODEL_TENSOR,
    ExpertGatingFuncType,
    GGUFWriter,
    VisionProjectorType,
    get_tensor_name_map,
)

from mode_edge.arch.base import LayerParts
from mode_edge.arch.common import add_clip_header
from mode_edge.arch.qwen3_vl_moe import TEXT_PREFIX, VISION_PREFIX, Qwen3VLMoe, Qwen3VLMoeCalibration, _name
from mode_edge.arch.registry import register
from mode_edge.arch.vocab import LLAMA3_REGEX, add_bpe_vocab
from mode_edge.errors import UserError
from mode_edge.formats.checkpoint import Checkpoint
from mode_edge.formats.samples import Rendered
from mode_edge.formats.tensors import Role, TensorSpec

_TEXT_KEYS = (
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "moe_intermediate_size",
    "num_attention_heads",
    "n_routed_experts",
    "num_experts_per_tok",
)
_VISION_KEYS = ("depth", "hidden_size", "num_heads", "patch_size", "out_hidden_size", "intermediate_size")


@register("glm4v_moe", architectures=("Glm4vMoeForConditionalGeneration",))
class Glm4vMoe(Qwen3VLMoe):
    arch = "glm4moe"
    media_part = "<|begin_of_image|><|image|><|end_of_image|>"  # mtmd adds begin/end itself
    end_of_turn = "<|user|>"  # GLM ends a reply by opening the next user turn (an EOG in llama.cpp)

    def __init__(self, ckpt: Checkpoint):  # Qwen3VLMoe.__init__ is not called: every field differs
        self.ckpt = ckpt
        cfg = ckpt.config
        self.text = t = cfg.get("text_config") or {}
        self.vision = cfg.get("vision_config") or {}
        missing = [k for k in _TEXT_KEYS if k not in t]
        if missing:
            raise UserError(
                f"config.json text_config lacks {missing[0]}", "the config is incomplete; re-download it"
            )
        self.n_layer, self.n_embd = int(t["num_hidden_layers"]), int(t["hidden_size"])
        self.n_expert, self.n_ff_exp = int(t["n_routed_experts"]), int(t["moe_intermediate_size"])
        self.n_head = int(t["num_attention_heads"])
        self.head_dim = int(t.get("head_dim") or self.n_embd // self.n_head)
        self.n_dense = int(t.get("first_k_dense_replace", 1))
        self.n_shared = int(t.get("n_shared_experts", 1))
        self.n_group, self.topk_group = int(t.get("n_group", 1)), int(t.get("topk_group", 1))
        top_k = int(t["num_experts_per_tok"])
        if not 0 <= self.n_dense < self.n_layer:
            raise UserError(
                f"first_k_dense_replace {self.n_dense} leaves no MoE layer of {self.n_layer}",
                "mode-edge plans routed experts; a dense model is not its job",
            )
        if self.n_shared < 1:
            raise UserError("n_shared_experts is 0", "llama.cpp's glm4moe requires a shared expert")
        if self.n_group > 1 and self.topk_group == self.n_group:  # every group kept: no grouping
            self.n_group = self.topk_group = 1
        if self.n_group > 1 and (self.n_expert % self.n_group or not 0 < self.topk_group < self.n_group):
            raise UserError(
                f"grouped routing with {self.n_expert} experts, n_group {self.n_group}, topk_group {self.topk_group}",
                "llama.cpp needs experts divisible by n_group and 0 < topk_group < n_group",
            )
        if not 0 < top_k <= self.n_expert:
            raise UserError(
                f"num_experts_per_tok {top_k} with {self.n_expert} experts", "the config is inconsistent"
            )
        rope = t.get("rope_parameters") or t.get("rope_scaling") or {}
        if rope.get("rope_type", "default") != "default":
            raise UserError(
                f"rope type {rope.get('rope_type')!r} is not supported",
                "only GLM-4.5V's default rope converts",
            )
        self.rope = rope
        prf = float(rope.get("partial_rotary_factor", t.get("partial_rotary_factor", 0.5)))
        self.n_rot = int(self.head_dim * prf)
        # transformers falls back to [8, 12, 12] when the config has no sections: write what it uses
        self.sections = [int(x) for x in rope.get("mrope_section", [8, 12, 12])]
        if len(self.sections) != 3 or sum(self.sections) != self.n_rot // 2 or min(self.sections[:2]) <= 0:
            raise UserError(
                f"mrope_section {self.sections} does not split the {self.n_rot // 2} rotary frequencies",
                "the sections (t, h, w) must be positive and sum to head_dim * partial_rotary_factor / 2",
            )
        # layers past num_hidden_layers: GLM's next-token-prediction (nextn) layer, which
        # transformers ignores on load and llama.cpp's glm4moe runs without (no nextn keys written)
        extra = sorted(
            {il for n in ckpt.names() if (il := self._layer_of(n)) is not None and il >= self.n_layer}
        )
        self.skipped_prefixes = tuple(f"{TEXT_PREFIX}layers.{il}." for il in extra)
        self.layouts = [None if il < self.n_dense else self._detect_layout(il) for il in range(self.n_layer)]
        self._check_vision()
        self._text_map = get_tensor_name_map(MODEL_ARCH.GLM4_MOE, self.n_layer)

    def _check_vision(self) -> None:
        v = self.vision
        missing = [k for k in _VISION_KEYS if k not in v]
        if missing:
            raise UserError(
                f"config.json vision_config lacks {missing[0]}", "the config is incomplete; re-download it"
            )
        if int(v.get("spatial_merge_size", 2)) != 2 or int(v.get("temporal_patch_size", 2)) != 2:
            raise UserError(
                "vision spatial_merge_size and temporal_patch_size must be 2",
                "llama.cpp's glm4v projector hard-codes both",
            )
        if int(v["out_hidden_size"]) != self.n_embd:
            raise UserError(
                f"vision out_hidden_size {v['out_hidden_size']} is not the text hidden size {self.n_embd}",
                "the config is inconsistent",
            )
        if (int(v["hidden_size"]) // int(v["num_heads"])) % 4:
            raise UserError("the vision head dim is not a multiple of 4", "its 2-D rope needs one")
        if v.get("hidden_act", "silu") != "silu":
            raise UserError(
                f"vision activation {v.get('hidden_act')!r} is not supported", "GLM-4.5V's is silu"
            )

    # -- text model -----------------------------------------------------------------------

    def add_text_metadata(self, w: GGUFWriter) -> None:
        t = self.text
        w.add_name(self.model_name)
        w.add_context_length(int(t.get("max_position_embeddings", 4096)))
        w.add_embedding_length(self.n_embd)
        w.add_block_count(self.n_layer)
        w.add_feed_forward_length(int(t["intermediate_size"]))
        w.add_head_count(self.n_head)
        w.add_head_count_kv(int(t.get("num_key_value_heads", self.n_head)))
        w.add_key_length(self.head_dim)
        w.add_value_length(self.head_dim)
        w.add_rope_dimension_count(self.n_rot)
        w.add_rope_freq_base(float(self.rope.get("rope_theta", t.get("rope_theta", 10000.0))))
        w.add_rope_dimension_sections(self.sections + [0])
        w.add_layer_norm_rms_eps(float(t.get("rms_norm_eps", 1e-5)))
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(int(t["num_experts_per_tok"]))
        w.add_expert_group_count(self.n_group)
        w.add_expert_group_used_count(self.topk_group)
        w.add_expert_feed_forward_length(self.n_ff_exp)
        w.add_expert_shared_count(self.n_shared)
        w.add_leading_dense_block_count(self.n_dense)
        w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
        w.add_expert_weights_scale(float(t.get("routed_scaling_factor", 1.0)))
        w.add_expert_weights_norm(bool(t.get("norm_topk_prob", True)))
        add_bpe_vocab(
            w,
            self.ckpt.dir,
            self.ckpt.shape(TEXT_PREFIX + "embed_tokens.weight")[0],
            pre_names={LLAMA3_REGEX: "glm4"},
            special={"bos": "[gMASK]", "eot": "<|user|>", "eom": "<|observation|>"},
        )

    def _map_name(self, hf_name: str) -> str:
        short = super()._map_name(hf_name)
        if short.endswith(".e_score_correction_bias"):  # gguf-py's name for it
            short = short[: -len("_bias")] + ".bias"
        return short

    def calibration(self, attn_implementation: str = "sdpa", device: str = "cpu") -> Glm4vMoeCalibration:
        return Glm4vMoeCalibration(self, attn_implementation, device)

    # -- vision projector -----------------------------------------------------------------

    def add_mmproj_metadata(self, w: GGUFWriter) -> None:
        v = self.vision
        pre = self._preprocessor()
        patch = int(v["patch_size"])
        side = math.isqrt(int(self.ckpt.shape(VISION_PREFIX + "embeddings.position_embedding.weight")[0]))
        add_clip_header(
            w,
            self.model_name,
            VisionProjectorType.GLM4V,
            image_size=side * patch,  # the learned position grid, in pixels
            patch=patch,
            width=v["hidden_size"],
            ff=v["intermediate_size"],
            depth=v["depth"],
            heads=v["num_heads"],
            eps=v.get("rms_norm_eps", 1e-5),
            projection_dim=self.n_embd,
            mean=pre.get("image_mean", [0.48145466, 0.4578275, 0.40821073]),
            std=pre.get("image_std", [0.26862954, 0.26130258, 0.27577711]),
        )
        w.add_vision_use_silu(True)

    def mmproj_tensors(self) -> list[TensorSpec]:
        depth = int(self.vision["depth"])
        vmap = get_tensor_name_map(MODEL_ARCH.MMPROJ, depth)
        ck = self.ckpt
        merger = {
            "merger.proj": _name(MODEL_TENSOR.V_MMPROJ_FC, suffix=""),
            "merger.post_projection_norm": _name(MODEL_TENSOR.V_MM_POST_NORM, suffix=""),
            "merger.gate_proj": _name(MODEL_TENSOR.V_MM_GATE, suffix=""),
            "merger.up_proj": _name(MODEL_TENSOR.V_MM_UP, suffix=""),
            "merger.down_proj": _name(MODEL_TENSOR.V_MM_DOWN, suffix=""),
            "downsample": _name(MODEL_TENSOR.V_MM_PATCH_MERGER, suffix=""),
        }
        specs: list[TensorSpec] = []

        def add(gguf_name: str, hf_name: str, role: Role, transform=None) -> None:
            shape = tuple(ck.shape(hf_name))
            load = partial(ck.load, hf_name)
            if transform is not None:
                load = (lambda f, g: lambda: g(f()))(load, transform)
                shape = transform(np.empty(shape, dtype=np.float32)).shape
            if len(shape) == 1 and role not in (Role.NORM, Role.POSITION):
                role = Role.BIAS
            specs.append(TensorSpec(gguf_name, tuple(shape), load, role))

        for name in ck.names():
            if not name.startswith(VISION_PREFIX):
                continue
            rest = name[len(VISION_PREFIX) :]
            module, suffix = rest.rsplit(".", 1)
            patch = _name(MODEL_TENSOR.V_ENC_EMBD_PATCH)
            if rest == "patch_embed.proj.weight":
                # Conv3d [C_out, C_in, T=2, p, p] -> one 2-D kernel per temporal slice
                add(patch, name, Role.PATCH, lambda a: a[:, :, 0])
                add(patch + ".1", name, Role.PATCH, lambda a: a[:, :, 1])
            elif rest == "patch_embed.proj.bias":
                add(_name(MODEL_TENSOR.V_ENC_EMBD_PATCH, suffix="bias"), name, Role.BIAS)
            elif module in merger:
                norm = module == "merger.post_projection_norm"
                add(f"{merger[module]}.{suffix}", name, Role.NORM if norm else Role.PROJECTOR)
            else:
                gguf_name = vmap.get_name("visual." + rest, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise UserError(
                        f"unexpected tensor {name} in the checkpoint",
                        "this converter does not know where it goes",
                    )
                if "position_embd" in gguf_name:
                    role = Role.POSITION
                elif ".ln" in gguf_name or "norm" in gguf_name or "post_ln" in gguf_name:
                    role = Role.NORM
                else:
                    role = Role.VISION
                add(gguf_name, name, role)
        return sorted(
            specs,
            key=lambda s: (
                not s.name.startswith(("v.patch", "v.position")),
                s.name.startswith("mm."),
                s.name,
            ),
        )


# -- calibration ---------------------------------------------------------------------------


class Glm4vMoeCalibration(Qwen3VLMoeCalibration):
    """Qwen3-VL-MoE's layer-by-layer runner with GLM's classes, dense leading layers, shared
    experts and sigmoid router. Key tokens: every layer has softmax attention over the whole
    causal prefix (no sliding window), so the filter's scores are those of Qwen."""

    MODULE = "glm4v_moe"
    CONFIG = "Glm4vMoeConfig"
    CLASSES = {
        "model": "Glm4vMoeModel",
        "rotary": "Glm4vMoeTextRotaryEmbedding",
        "vision": "Glm4vMoeVisionModel",
        "layer": "Glm4vMoeTextDecoderLayer",
        "norm": "Glm4vMoeTextRMSNorm",
    }
    EXPERTS_ATTR = "n_routed_experts"

    def render(self, sample, image) -> Rendered:
        """The chat template, with <|image|> expanded to one token per merged patch (what
        Glm4vProcessor does; mtmd feeds the same count between begin/end of image)."""
        content = ([{"type": "image"}] if image is not None else []) + [
            {"type": "text", "text": sample.prompt}
        ]
        messages = ([{"role": "system", "content": sample.system}] if sample.system else []) + [
            {"role": "user", "content": content}
        ]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        pixel_values = grid = None
        if image is not None:
            unit = 28 * 28 * 2  # one merged token's pixels, times transformers' t = 2
            size = {"shortest_edge": 8 * unit, "longest_edge": 4096 * unit}  # mtmd's glm4v limits
            out = self.image_processor(images=[image], size=size, return_tensors="np")
            pixel_values, grid = out["pixel_values"], out["image_grid_thw"]
            text = text.replace("<|image|>", "<|image|>" * (int(np.prod(grid[0])) // self.merge**2), 1)
        ids = np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
        return Rendered(ids, pixel_values, grid)

    def turn_start_id(self) -> int | None:
        return self.tokenizer.get_vocab().get("<|user|>")

    def special_ids(self) -> set[int]:
        vocab = self.tokenizer.get_added_vocab()
        return {int(i) for i in self.tokenizer.all_special_ids} | {int(v) for v in vocab.values()}

    def is_moe(self, il: int) -> bool:
        return il >= self.conv.n_dense

    def load_layer(self, il: int):
        if self.is_moe(il):
            return super().load_layer(il)
        import torch

        with torch.device("meta"):
            layer = self.cls["layer"](self.config.text_config, il)
        layer = layer.to_empty(device=self.device)
        layer.load_state_dict(self._state(f"{TEXT_PREFIX}layers.{il}."), strict=True)
        return layer.eval().requires_grad_(False)

    def routing(self, router_output):
        """(ids, weights as the block scales outputs, the unbiased sigmoid scores of those
        experts): transformers' router already applies the bias, groups, norm and scale."""
        import torch

        logits, weights, indices = router_output
        return indices, weights, torch.sigmoid(logits.float()).gather(-1, indices)

    def parts(self, layer) -> LayerParts:
        if not hasattr(layer.mlp, "experts"):
            return LayerParts(layer.self_attn, layer.mlp, None, None)
        return LayerParts(
            layer.self_attn, layer.mlp, layer.mlp.gate, layer.mlp.experts, layer.mlp.shared_experts
        )

    def attention_qk(self, attn, x, position_embeddings):
        """Post-RoPE queries and keys (q/k biases included, no q/k norm; partial rotary)."""
        m = self.m
        shape = (*x.shape[:-1], -1, attn.head_dim)
        q = attn.q_proj(x).view(shape).transpose(1, 2)
        k = attn.k_proj(x).view(shape).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = m.apply_rotary_pos_emb(q, k, cos, sin)
        k = m.repeat_kv(k, attn.num_key_value_groups)
        return q[0], k[0], attn.scaling
