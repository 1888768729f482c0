"""Llama 4 (Llama4ForConditionalGeneration) -> llama.cpp `llama4` + mmproj `llama4`.

- MoE layers interleaved with dense ones: layer i is MoE when (i + 1) % interleave_moe_layer_step
  == 0 (llama.cpp's rule; a config whose moe_layers differ is refused). Dense FFNs are
  intermediate_size_mlp wide (GGUF feed_forward_length), experts and the shared expert
  intermediate_size (expert_feed_forward_length).
- Routing: top-k of the router logits; the sigmoid of the chosen logit scales the expert's
  *input* (llama.cpp: weight_before_ffn), the shared expert reads the unscaled input.
  Calibration records what the expert really reads (w * x).
- Attention: RoPE (adjacent pairs, llama.cpp's NORM type, no permutation) with weightless q/k
  RMS norms after it on 3 of every 4 layers, which are chunked (a query sees its chunk of 8192
  positions only); every 4th layer has no RoPE, full attention and a temperature on q. llama.cpp
  hard-codes the chunk, the pattern and the temperature constants, so other values are refused.
  The key-token filter scores each layer's real attention: on a chunked layer, a text query
  only gives weight to image tokens in its own chunk (Calibration.attention_chunk).
- llama3 rope scaling becomes the rope_freqs tensor (inverse-frequency divisors), computed from
  transformers' own llama3 rope function.
- Vision: unfold patch embedding kept 2-D ([hidden, 3 p p], clip reshapes it), class token last,
  learned positions, LayerNorm blocks (post_attention_layernorm is ln2: gguf-py's table maps it to
  another tensor), pixel shuffle + adapter MLP (mm.model.mlp.1/2), projector mm.model.fc.
- Images: mtmd feeds <|image_start|>, the tiles (llava-uhd slicing over grids up to 3x3, then the
  overview), <|image_end|>, with no <|image|> or tile separators (transformers' processor writes
  both and tiles differently), and orders each tile's tokens column-major (its pixel shuffle
  skips a permute). Calibration renders what mtmd feeds: mtmd's tiles, no separators, tokens
  reordered to llama.cpp's order.
"""

from __future__ import annotations

import copy
from functools import partial

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, GGUFWriter, VisionProjectorType, get_tensor_name_map

from mode_edge.arch.base import LayerParts
from mode_edge.arch.common import StandardNames, _name, add_clip_header
from mode_edge.arch.qwen3_vl_moe import Qwen3VLMoe
from mode_edge.arch.registry import register
from mode_edge.arch.tiling import llama4_grids, mtmd_tiles
from mode_edge.arch.vocab import add_bpe_vocab
from mode_edge.errors import UserError
from mode_edge.formats.checkpoint import Checkpoint
from mode_edge.formats.samples import Rendered
from mode_edge.formats.tensors import Role, TensorSpec

TEXT = "language_model.model."
VISION = "vision_model."
PROJECTOR = "multi_modal_projector."
CHUNK, NOPE_EVERY = 8192, 4  # what llama.cpp's llama4 hard-codes (src/models/llama4.cpp)

#: GPT-4o's split regex (Llama 4's tokenizer.json); llama.cpp: pre-tokenizer llama4
GPT4O_REGEX = (
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
    r"""|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
    r"""|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

_TEXT_KEYS = (
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "intermediate_size_mlp",
    "num_attention_heads",
    "num_local_experts",
    "num_experts_per_tok",
)
_VISION_KEYS = (
    "hidden_size",
    "num_attention_heads",
    "num_hidden_layers",
    "intermediate_size",
    "image_size",
    "patch_size",
    "vision_output_dim",
)


def _refuse(what: str) -> UserError:
    return UserError(
        what, "llama.cpp's llama4 hard-codes this (src/models/llama4.cpp); such a model is not supported"
    )


@register("llama4", architectures=("Llama4ForConditionalGeneration",))
class Llama4(Qwen3VLMoe):
    arch = "llama4"
    media_part = "<|image|>"  # the template's image; mtmd writes <|image_start|> … <|image_end|>
    end_of_turn = "<|eot|>"
    vision_prefixes = (VISION, PROJECTOR)
    text_prefix = TEXT

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
        self.n_expert, self.n_ff_exp = int(t["num_local_experts"]), int(t["intermediate_size"])
        self.n_head = int(t["num_attention_heads"])
        self.head_dim = int(t.get("head_dim") or self.n_embd // self.n_head)
        self.step = int(t.get("interleave_moe_layer_step", 1))
        if self.step < 1:
            raise UserError(
                f"interleave_moe_layer_step {self.step}", "it must be at least 1; re-download config.json"
            )
        self.moe = [il for il in range(self.n_layer) if (il + 1) % self.step == 0]
        if t.get("moe_layers") is not None and list(t["moe_layers"]) != self.moe:
            raise _refuse(f"moe_layers {t['moe_layers']} are not every {self.step}th layer")
        if not self.moe:
            raise UserError("this Llama 4 has no MoE layer", "mode-edge plans routed experts")
        nope = [int((il + 1) % NOPE_EVERY != 0) for il in range(self.n_layer)]
        if int(t.get("no_rope_layer_interval", NOPE_EVERY)) != NOPE_EVERY or (
            t.get("no_rope_layers") and list(t["no_rope_layers"]) != nope
        ):
            raise _refuse("layers without RoPE other than every 4th")
        if t.get("attention_chunk_size", CHUNK) != CHUNK:
            raise _refuse(f"attention_chunk_size {t.get('attention_chunk_size')} (llama.cpp uses {CHUNK})")
        if not t.get("attn_temperature_tuning", True) or (
            t.get("floor_scale", 8192),
            t.get("attn_scale", 0.1),
        ) != (
            8192,
            0.1,
        ):
            raise _refuse("attention temperature tuning other than floor 8192, scale 0.1")
        if bool(t.get("use_qk_norm", True)) != (self.n_expert != 128):
            raise _refuse(f"use_qk_norm {t.get('use_qk_norm')} with {self.n_expert} experts")
        if t.get("attention_bias") or t.get("hidden_act", "silu") != "silu":
            raise _refuse("attention biases or an activation other than silu")
        rope = dict(t.get("rope_parameters") or t.get("rope_scaling") or {})
        if rope.get("rope_type", "default") not in ("default", "llama3"):
            raise UserError(
                f"rope type {rope.get('rope_type')!r} is not supported", "default and llama3 convert"
            )
        self.rope = rope
        # transformers 4-style configs keep rope_theta beside rope_scaling
        self.theta = float(rope.get("rope_theta", t.get("rope_theta", 500000.0)))
        self.layouts = {il: self._detect_layout(il) for il in self.moe}
        if set(self.layouts.values()) != {"published"}:
            raise UserError(
                "the expert tensors are not [E, H, 2I] / [E, I, H]", "is this a Llama 4 checkpoint?"
            )
        self._check_vision()
        self._text_map = get_tensor_name_map(MODEL_ARCH.LLAMA4, self.n_layer)

    def _experts_prefix(self, il: int) -> str:
        return f"{TEXT}layers.{il}.feed_forward.experts."

    def _check_vision(self) -> None:
        v = self.vision
        missing = [k for k in _VISION_KEYS if k not in v]
        if missing:
            raise UserError(
                f"config.json vision_config lacks {missing[0]}", "the config is incomplete; re-download it"
            )
        tile, patch = v["image_size"], v["patch_size"]
        if (
            not (isinstance(tile, int) and isinstance(patch, int))
            or patch < 1
            or tile % patch
            or (tile // patch) % 2
        ):
            raise UserError(
                f"vision tiles of {tile} px in patches of {patch}",
                "llama.cpp needs square tiles of an even patch grid",
            )
        if float(v.get("pixel_shuffle_ratio", 0.5)) != 0.5:
            raise _refuse(f"pixel_shuffle_ratio {v.get('pixel_shuffle_ratio')}")
        theta = float((v.get("rope_parameters") or {}).get("rope_theta", v.get("rope_theta", 10000.0)))
        if theta != 10000.0 or v.get("hidden_act", "gelu") != "gelu":
            raise _refuse("a vision rope theta other than 10000 or an activation other than gelu")
        self.tile, self.patch = tile, patch

    # -- text model -----------------------------------------------------------------------

    def add_text_metadata(self, w: GGUFWriter) -> None:
        t = self.text
        w.add_name(self.model_name)
        w.add_context_length(int(t.get("max_position_embeddings", 8192)))
        w.add_embedding_length(self.n_embd)
        w.add_block_count(self.n_layer)
        w.add_feed_forward_length(int(t["intermediate_size_mlp"]))
        w.add_head_count(self.n_head)
        w.add_head_count_kv(int(t.get("num_key_value_heads", self.n_head)))
        w.add_key_length(self.head_dim)
        w.add_value_length(self.head_dim)
        w.add_rope_dimension_count(self.head_dim)
        w.add_rope_freq_base(self.theta)
        w.add_layer_norm_rms_eps(float(t.get("rms_norm_eps", 1e-5)))
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(int(t["num_experts_per_tok"]))
        w.add_expert_feed_forward_length(self.n_ff_exp)
        w.add_interleave_moe_layer_step(self.step)
        n_vocab = self.ckpt.shape(TEXT + "embed_tokens.weight")[0]
        w.add_vocab_size(n_vocab)
        add_bpe_vocab(w, self.ckpt.dir, n_vocab, pre_names={GPT4O_REGEX: "llama4"})

    def _map_name(self, hf_name: str) -> str:
        return hf_name[len("language_model.") :]

    def _rope_freqs(self) -> np.ndarray:
        """llama3 scaling as llama.cpp applies it: per-frequency divisors of theta^(-2i/d), the
        ratio of the default inverse frequencies to transformers' llama3 ones."""
        import torch
        from transformers import Llama4TextConfig
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        text = copy.deepcopy(self.text)  # the config class rewrites its rope dicts in place
        cfg = Llama4TextConfig(**{k: v for k, v in text.items() if k != "model_type"})
        scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
        plain = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim))
        return (plain / scaled.double()).float().numpy()

    def _extra_text_specs(self) -> list[TensorSpec]:
        if self.rope.get("rope_type") != "llama3":
            return []
        return [
            TensorSpec(_name(MODEL_TENSOR.ROPE_FREQS), (self.head_dim // 2,), self._rope_freqs, Role.POSITION)
        ]

    def kv_cache_bytes(self, n_ctx: int) -> int:
        """Every layer caches n_ctx tokens: llama-cpp-python keeps llama.cpp's default swa_full
        (the chunked layers' cache is full size, "using full-size SWA cache" in its log), and
        mode-edge's runtime does not change it."""
        n_kv = int(self.text.get("num_key_value_heads", self.n_head))
        return self.n_layer * n_ctx * 2 * n_kv * self.head_dim * 2

    def calibration(self, attn_implementation: str = "sdpa", device: str = "cpu") -> Llama4Calibration:
        return Llama4Calibration(self, attn_implementation, device)

    # -- vision projector -----------------------------------------------------------------

    def add_mmproj_metadata(self, w: GGUFWriter) -> None:
        v = self.vision
        pre = self._preprocessor()
        add_clip_header(
            w,
            self.model_name,
            VisionProjectorType.LLAMA4,
            image_size=self.tile,
            patch=self.patch,
            width=v["hidden_size"],
            ff=v["intermediate_size"],
            depth=v["num_hidden_layers"],
            heads=v["num_attention_heads"],
            eps=v.get("norm_eps", 1e-5),
            projection_dim=self.n_embd,
            mean=pre.get("image_mean", [0.5, 0.5, 0.5]),
            std=pre.get("image_std", [0.5, 0.5, 0.5]),
        )
        w.add_vision_projector_scale_factor(2)  # 1 / pixel_shuffle_ratio
        w.add_vision_use_gelu(True)

    def mmproj_tensors(self) -> list[TensorSpec]:
        depth = int(self.vision["num_hidden_layers"])
        vmap = get_tensor_name_map(MODEL_ARCH.MMPROJ, depth)
        ck = self.ckpt
        fixed = {
            "vision_model.class_embedding": (_name(MODEL_TENSOR.V_ENC_EMBD_CLS, suffix=""), Role.POSITION),
            "vision_model.positional_embedding_vlm": (_name(MODEL_TENSOR.V_ENC_EMBD_POS), Role.POSITION),
            "vision_model.vision_adapter.mlp.fc1.weight": (
                _name(MODEL_TENSOR.V_MMPROJ_MLP, 1),
                Role.PROJECTOR,
            ),
            "vision_model.vision_adapter.mlp.fc2.weight": (
                _name(MODEL_TENSOR.V_MMPROJ_MLP, 2),
                Role.PROJECTOR,
            ),
            "multi_modal_projector.linear_1.weight": (_name(MODEL_TENSOR.V_MMPROJ_FC), Role.PROJECTOR),
            "vision_model.patch_embedding.linear.weight": (_name(MODEL_TENSOR.V_ENC_EMBD_PATCH), Role.PATCH),
        }
        specs = []
        for name in ck.names():
            if not name.startswith((VISION, PROJECTOR)):
                continue
            if name in fixed:
                gguf_name, role = fixed[name]
            elif ".post_attention_layernorm." in name:  # gguf-py maps it to attn_post_norm, clip reads ln2
                il, suffix = int(name.split(".")[3]), name.rsplit(".", 1)[1]
                gguf_name, role = _name(MODEL_TENSOR.V_ENC_POST_ATTN_NORM, il, suffix), Role.NORM
            else:
                gguf_name = vmap.get_name(name, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise UserError(
                        f"unexpected tensor {name} in the checkpoint",
                        "this converter does not know where it goes",
                    )
                role = Role.NORM if ".ln" in gguf_name or "_ln" in gguf_name else Role.VISION
            shape = tuple(ck.shape(name))
            if len(shape) == 1 and role not in (Role.NORM, Role.POSITION):
                role = Role.BIAS
            specs.append(TensorSpec(gguf_name, shape, partial(ck.load, name), role))
        return sorted(
            specs,
            key=lambda s: (
                not s.name.startswith(("v.patch", "v.position", "v.class")),
                s.name.startswith("mm."),
                s.name,
            ),
        )


def llamacpp_token_order(side: int) -> np.ndarray:
    """transformers' token index for each of llama.cpp's, in one tile of side x side tokens:
    llama.cpp's pixel shuffle leaves them column-major (tools/mtmd/models/llama4.cpp)."""
    return np.arange(side * side).reshape(side, side).T.reshape(-1)


class Llama4Calibration(StandardNames):
    """Runs Llama 4 layer by layer from safetensors through transformers' own modules."""

    NORM_WEIGHT, EMBED_WEIGHT = TEXT + "norm.weight", TEXT + "embed_tokens.weight"
    LM_HEAD = "language_model.lm_head.weight"

    weights_scale_input = True

    def __init__(self, conv: Llama4, attn_implementation: str = "sdpa", device: str = "cpu"):
        import torch
        import transformers
        from transformers import AutoTokenizer
        from transformers.models.llama4 import modeling_llama4 as m

        self.conv, self.ckpt, self.m = conv, conv.ckpt, m
        self.device = torch.device(device)
        self.config = transformers.Llama4Config.from_pretrained(self.ckpt.dir)
        for c in (self.config, self.config.text_config, self.config.vision_config):
            c._attn_implementation = attn_implementation
        tc = self.config.text_config
        self.n_layers, self.n_experts, self.top_k = (
            tc.num_hidden_layers,
            tc.num_local_experts,
            tc.num_experts_per_tok,
        )
        self.hidden, self.expert_ff = tc.hidden_size, tc.intermediate_size
        self.image_token_id = self.config.image_token_index
        self.tokenizer = AutoTokenizer.from_pretrained(self.ckpt.dir)
        pre = conv._preprocessor()
        self.mean = np.asarray(pre.get("image_mean", [0.5] * 3), dtype=np.float32)[:, None, None]
        self.std = np.asarray(pre.get("image_std", [0.5] * 3), dtype=np.float32)[:, None, None]
        side = conv.tile // conv.patch // 2  # tokens per tile side after the 2x2 pixel shuffle
        self.tokens_per_tile = side * side
        self.order = torch.from_numpy(llamacpp_token_order(side))
        self.rotary = m.Llama4TextRotaryEmbedding(tc).to(self.device)
        self._embed = self._visual = None

    # rendering
    def render(self, sample, image) -> Rendered:
        """<|image|> becomes <|image_start|> + one <|patch|> per token of mtmd's tiles and
        overview + <|image_end|>; pixels normalised in float32 (transformers' processor works
        in bfloat16 and tiles differently)."""
        content = ([{"type": "image"}] if image is not None else []) + [
            {"type": "text", "text": sample.prompt}
        ]
        messages = ([{"role": "system", "content": sample.system}] if sample.system else []) + [
            {"role": "user", "content": content}
        ]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        pixel_values = None
        if image is not None:
            tiles = mtmd_tiles(image.convert("RGB"), self.conv.tile, llama4_grids())
            pixel_values = np.stack(
                [
                    (np.asarray(t, dtype=np.float32).transpose(2, 0, 1) / 255.0 - self.mean) / self.std
                    for t in tiles
                ]
            )
            n = len(tiles) * self.tokens_per_tile
            text = text.replace("<|image|>", "<|image_start|>" + "<|patch|>" * n + "<|image_end|>", 1)
        ids = np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
        return Rendered(ids, pixel_values, None)

    def special_ids(self) -> set[int]:
        return {int(i) for i in self.tokenizer.all_special_ids} | {
            int(v) for v in self.tokenizer.get_added_vocab().values()
        }

    def turn_start_id(self) -> int | None:
        return self.tokenizer.get_vocab().get("<|header_start|>")

    # weights
    def _ensure_embed(self) -> None:
        import torch

        if self._embed is not None:
            return
        w = torch.from_numpy(self.ckpt.load(TEXT + "embed_tokens.weight"))
        self._embed = torch.nn.Embedding.from_pretrained(w, freeze=True)
        visual = self.m.Llama4VisionModel._from_config(self.config.vision_config)
        missing, unexpected = visual.load_state_dict(self._state(VISION), strict=False)
        if unexpected or set(missing) - {"rotary_embedding.freqs_ci"}:  # a buffer, not saved
            raise RuntimeError(f"vision tower: unexpected {unexpected}, missing {missing}")
        proj = self.m.Llama4MultiModalProjector(self.config)
        proj.load_state_dict(self._state(PROJECTOR), strict=True)
        self._visual = visual.eval().requires_grad_(False).to(self.device)
        self._proj = proj.eval().requires_grad_(False).to(self.device)

    def image_features(self, pixel_values) -> object:
        """[tiles * tokens, H] image embeddings in llama.cpp's order (column-major per tile)."""
        import torch

        self._ensure_embed()
        with torch.no_grad():
            x = torch.as_tensor(pixel_values, dtype=torch.float32, device=self.device)
            feats = self._visual(x).last_hidden_state  # [tiles, tokens, proj_dim]
            feats = self._proj(feats)[:, self.order.to(self.device)]
        return feats.reshape(-1, feats.shape[-1])

    def embed(self, r) -> dict:
        import torch
        from transformers.masking_utils import create_causal_mask, create_chunked_causal_mask

        self._ensure_embed()
        ids = torch.from_numpy(r.input_ids)[None]
        dev = self.device
        with torch.no_grad():
            h = self._embed(ids).to(dev)
            image_mask = (ids == self.image_token_id).to(dev)
            if r.pixel_values is not None:
                feats = self.image_features(r.pixel_values)
                h = h.masked_scatter(image_mask[..., None].expand_as(h), feats.to(h.dtype))
            pos = torch.arange(ids.shape[1], device=dev)[None]
            kw = dict(
                config=self.config.text_config,
                inputs_embeds=h,
                attention_mask=None,
                cache=None,
                position_ids=pos,
            )
            masks = {
                "full_attention": create_causal_mask(**kw),
                "chunked_attention": create_chunked_causal_mask(**kw),
            }
            freqs = self.rotary(h, pos)
        return {
            "hidden": h[0].cpu(),
            "position_embeddings": freqs,
            "masks": masks,
            "image_mask": image_mask[0],
        }

    def is_moe(self, il: int) -> bool:
        return il in self.config.text_config.moe_layers

    def attention_chunk(self, il: int) -> int | None:
        tc = self.config.text_config
        return tc.attention_chunk_size if tc.layer_types[il] == "chunked_attention" else None

    def load_layer(self, il: int):
        import torch

        with torch.device("meta"):
            layer = self.m.Llama4TextDecoderLayer(self.config.text_config, il)
        layer = layer.to_empty(device=self.device)
        layer.load_state_dict(self._state(f"{TEXT}layers.{il}."), strict=True)  # experts fused as on disk
        return layer.eval().requires_grad_(False)

    def run_layer(self, layer, il: int, s: dict, grad: bool = False):
        import torch

        mask = s["masks"][self.config.text_config.layer_types[il]]
        with torch.enable_grad() if grad else torch.no_grad():
            h = layer(
                s["hidden"].to(self.device)[None],
                attention_mask=mask,
                position_embeddings=s["position_embeddings"],
            )
        return h[0]

    def _norm_class(self):
        return self.m.Llama4TextRMSNorm

    def routing(self, router_output):
        """Top-k of the logits; the sigmoid of each chosen logit is what scales the expert's input
        (and the router's probability of it: there is no renormalisation)."""
        import torch

        _scores, logits = router_output
        idx = torch.topk(logits, self.top_k, dim=-1).indices
        w = torch.sigmoid(logits.float()).gather(-1, idx)
        return idx, w, w

    def parts(self, layer) -> LayerParts:
        ff = layer.feed_forward
        if not layer.is_moe_layer:
            return LayerParts(layer.self_attn, ff, None, None)
        return LayerParts(layer.self_attn, ff, ff.router, ff.experts, ff.shared_expert)

    def attention_qk(self, attn, x, position_embeddings):
        """q and k as the layer computes them: RoPE and the weightless q/k norm on RoPE layers,
        the temperature on q of the NoPE ones; [heads, T, d], GQA repeated."""
        import torch

        m = self.m
        shape = (*x.shape[:-1], -1, attn.head_dim)
        q, k = attn.q_proj(x).view(shape), attn.k_proj(x).view(shape)
        if attn.use_rope:
            q, k = m.apply_rotary_emb(q, k, position_embeddings.to(q.device))
        if hasattr(attn, "qk_norm"):
            q, k = attn.qk_norm(q), attn.qk_norm(k)
        if attn.attn_temperature_tuning and not attn.use_rope:
            pos = torch.arange(x.shape[1], device=x.device).float()
            q = (
                q
                * (torch.log1p(torch.floor((pos + 1.0) / attn.floor_scale)) * attn.attn_scale + 1.0)[
                    None, :, None, None
                ]
            )
        q, k = q.transpose(1, 2), m.repeat_kv(k.transpose(1, 2), attn.num_key_value_groups)
        return q[0], k[0], attn.scaling

    def expert_weights(self, experts, e: int):
        """gate_up_proj [E, H, 2I] and down_proj [E, I, H] (x @ W layout): as [out, in]."""
        I = self.expert_ff
        gu = experts.gate_up_proj[e]
        return gu[:, :I].T, gu[:, I:].T, experts.down_proj[e].T, experts.act_fn
