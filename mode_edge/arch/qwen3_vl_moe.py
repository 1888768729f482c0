"""Qwen3-VL-MoE (Qwen3VLMoeForConditionalGeneration) -> llama.cpp `qwen3vlmoe` + `qwen3vl_merger`.

Expert weights are found on disk in three layouts, told apart by shapes (H = hidden,
I = moe_intermediate_size, E = experts):

- "transformers": gate_up_proj [E, 2I, H], down_proj [E, H, I]  (transformers 5 save_pretrained)
- "published":    gate_up_proj [E, H, 2I], down_proj [E, I, H]  (Qwen's released files)
- "per_expert":   experts.{e}.{gate,up}_proj.weight [I, H], down_proj.weight [H, I]

The two fused layouts can only look alike if 2I == H and I == H at once, which cannot be.
GGUF wants gate/up as [E, I, H] and down as [E, H, I] in numpy order; gate is the first
half of gate_up.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, GGUFWriter, VisionProjectorType, get_tensor_name_map

from mode_edge.arch.base import Architecture, LayerParts
from mode_edge.arch.common import StandardNames, _name, add_clip_header, text_role
from mode_edge.arch.registry import register
from mode_edge.arch.vocab import add_bpe_vocab
from mode_edge.errors import UserError
from mode_edge.formats.checkpoint import Checkpoint
from mode_edge.formats.tensors import Role, TensorSpec

TEXT_PREFIX = "model.language_model."
VISION_PREFIX = "model.visual."

_GELU_ACTS = {"gelu", "gelu_pytorch_tanh", "gelu_new", "gelu_fast"}


@register("qwen3_vl_moe", architectures=("Qwen3VLMoeForConditionalGeneration",))
class Qwen3VLMoe(Architecture):
    arch = "qwen3vlmoe"
    media_part = "<|vision_start|><|image_pad|><|vision_end|>"  # mtmd adds vision_start/end itself
    end_of_turn = "<|im_end|>"
    #: tensors under these prefixes belong to the mmproj file
    vision_prefixes: tuple[str, ...] = (VISION_PREFIX,)
    #: tensors under these prefixes are in neither file, on purpose (see the architecture's docstring)
    skipped_prefixes: tuple[str, ...] = ()
    #: where the decoder's layers sit in the checkpoint (text_prefix + "layers.N.")
    text_prefix: str = TEXT_PREFIX

    def __init__(self, ckpt: Checkpoint):
        super().__init__(ckpt)
        cfg = ckpt.config
        self.text = cfg.get("text_config") or {}
        self.vision = cfg.get("vision_config") or {}
        t = self.text
        try:
            self.n_layer = int(t["num_hidden_layers"])
            self.n_embd = int(t["hidden_size"])
            # transformers 5 saves num_experts under its attribute-map name
            self.n_expert = int(t["num_experts"] if "num_experts" in t else t["num_local_experts"])
            self.n_ff_exp = int(t["moe_intermediate_size"])
            self.n_head = int(t["num_attention_heads"])
        except KeyError as e:
            raise UserError(
                f"config.json text_config lacks {e.args[0]}", "the config is incomplete; re-download it"
            ) from None
        self.head_dim = int(t.get("head_dim") or self.n_embd // self.n_head)
        if t.get("mlp_only_layers") or int(t.get("decoder_sparse_step", 1)) != 1:
            raise UserError(
                "this Qwen3-VL-MoE has dense (non-MoE) decoder layers",
                "llama.cpp's qwen3vlmoe expects every layer to be MoE; such a model is not supported",
            )
        rope = t.get("rope_parameters") or t.get("rope_scaling") or {}
        if rope.get("rope_type", "default") != "default":
            raise UserError(
                f"rope type {rope.get('rope_type')!r} is not supported",
                "only the default (interleaved M-RoPE) Qwen3-VL rope converts",
            )
        self.rope = rope
        self.layouts = [self._detect_layout(i) for i in range(self.n_layer)]
        self._check_vision()
        self._text_map = get_tensor_name_map(MODEL_ARCH.QWEN3VLMOE, self.n_layer)

    # -- layout detection -----------------------------------------------------------------

    def _experts_prefix(self, il: int) -> str:
        """Where layer il's routed experts sit in the checkpoint."""
        return f"{TEXT_PREFIX}layers.{il}.mlp.experts."

    def _detect_layout(self, il: int) -> str:
        p = self._experts_prefix(il)
        E, H, I = self.n_expert, self.n_embd, self.n_ff_exp
        ck = self.ckpt
        if ck.has(p + "gate_up_proj"):
            if not ck.has(p + "down_proj"):
                raise UserError(
                    f"layer {il} has gate_up_proj but no down_proj", "the checkpoint is incomplete"
                )
            gu, dn = ck.shape(p + "gate_up_proj"), ck.shape(p + "down_proj")
            if gu == (E, 2 * I, H) and dn == (E, H, I):
                return "transformers"
            if gu == (E, H, 2 * I) and dn == (E, I, H):
                return "published"
            raise UserError(
                f"layer {il} expert shapes gate_up {gu} / down {dn} fit neither known layout "
                f"for E={E}, hidden={H}, moe_intermediate={I}",
                "the weights do not match config.json",
            )
        if ck.has(p + "0.gate_proj.weight"):
            for e in range(E):
                for proj, shape in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))):
                    name = f"{p}{e}.{proj}.weight"
                    if not ck.has(name):
                        raise UserError(f"expert weight {name} is missing", "the checkpoint is incomplete")
                    if ck.shape(name) != shape:
                        raise UserError(
                            f"{name} has shape {ck.shape(name)}, expected {shape}",
                            "the weights do not match config.json",
                        )
            return "per_expert"
        raise UserError(
            f"no expert weights found for layer {il} (looked for {p}gate_up_proj and {p}0.gate_proj.weight)",
            "is this a Qwen3-VL-MoE checkpoint?",
        )

    def _check_vision(self) -> None:
        v = self.vision
        for key in (
            "depth",
            "hidden_size",
            "num_heads",
            "patch_size",
            "out_hidden_size",
            "num_position_embeddings",
        ):
            if key not in v:
                raise UserError(
                    f"config.json vision_config lacks {key}", "the config is incomplete; re-download it"
                )
        side = math.isqrt(int(v["num_position_embeddings"]))
        if side * side != int(v["num_position_embeddings"]):
            raise UserError(
                "vision num_position_embeddings is not a square grid", "unsupported vision config"
            )
        if int(v.get("temporal_patch_size", 2)) != 2:
            raise UserError(
                "vision temporal_patch_size must be 2", "llama.cpp's qwen3vl merger supports only 2"
            )
        act = v.get("hidden_act", "gelu_pytorch_tanh")
        if act not in _GELU_ACTS:
            raise UserError(f"vision activation {act!r} is not supported", f"supported: {sorted(_GELU_ACTS)}")

    # -- text model -----------------------------------------------------------------------

    def add_text_metadata(self, w: GGUFWriter) -> None:
        t = self.text
        w.add_name(self.model_name)
        w.add_context_length(int(t.get("max_position_embeddings", 4096)))
        w.add_embedding_length(self.n_embd)
        w.add_block_count(self.n_layer)
        w.add_feed_forward_length(int(t.get("intermediate_size", self.n_ff_exp)))
        w.add_head_count(self.n_head)
        w.add_head_count_kv(int(t.get("num_key_value_heads", self.n_head)))
        w.add_key_length(self.head_dim)
        w.add_value_length(self.head_dim)
        w.add_rope_dimension_count(self.head_dim)
        w.add_rope_freq_base(float(self.rope.get("rope_theta", t.get("rope_theta", 10000.0))))
        sections = list(self.rope.get("mrope_section", [self.head_dim // 2, 0, 0]))
        w.add_rope_dimension_sections((sections + [0, 0, 0, 0])[:4])
        w.add_layer_norm_rms_eps(float(t.get("rms_norm_eps", 1e-6)))
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(int(t["num_experts_per_tok"]))
        w.add_expert_feed_forward_length(self.n_ff_exp)
        w.add_num_deepstack_layers(len(self.vision.get("deepstack_visual_indexes", [])))
        add_bpe_vocab(w, self.ckpt.dir, self.ckpt.shape(TEXT_PREFIX + "embed_tokens.weight")[0])

    def _map_name(self, hf_name: str) -> str:
        """The checkpoint name as gguf-py's tensor map knows it (model.layers.N....)."""
        return "model." + hf_name[len(TEXT_PREFIX) :] if hf_name.startswith(TEXT_PREFIX) else hf_name

    def _text_spec(self, hf_name: str) -> TensorSpec:
        gguf_name = self._text_map.get_name(self._map_name(hf_name), try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UserError(
                f"unexpected tensor {hf_name} in the checkpoint", "this converter does not know where it goes"
            )
        shape = self.ckpt.shape(hf_name)
        return TensorSpec(gguf_name, shape, partial(self.ckpt.load, hf_name), text_role(gguf_name, shape))

    def _expert_specs(self, il: int) -> list[TensorSpec]:
        p = self._experts_prefix(il)
        E, H, I = self.n_expert, self.n_embd, self.n_ff_exp
        layout = self.layouts[il]
        ck = self.ckpt
        every = slice(None)

        def one_half(half: int, e: int) -> np.ndarray:
            rows = slice(half * I, (half + 1) * I)
            if layout == "transformers":
                return ck.load(p + "gate_up_proj", (e, rows, every))
            return ck.load(p + "gate_up_proj", (e, every, rows)).T

        def one_down(e: int) -> np.ndarray:
            arr = ck.load(p + "down_proj", (e, every, every))
            return arr if layout == "transformers" else arr.T

        def one_separate(proj: str, e: int) -> np.ndarray:
            return ck.load(f"{p}{e}.{proj}.weight")

        if layout == "per_expert":
            one = {k: partial(one_separate, f"{k}_proj") for k in ("gate", "up", "down")}
        else:
            one = {"gate": partial(one_half, 0), "up": partial(one_half, 1), "down": one_down}

        def whole(k: str) -> np.ndarray:
            return np.stack([one[k](e) for e in range(E)])

        gate, up, down = (partial(whole, k) for k in ("gate", "up", "down"))
        return [
            TensorSpec(_name(MODEL_TENSOR.FFN_GATE_EXP, il), (E, I, H), gate, Role.EXPERT, E, one["gate"]),
            TensorSpec(_name(MODEL_TENSOR.FFN_UP_EXP, il), (E, I, H), up, Role.EXPERT, E, one["up"]),
            TensorSpec(_name(MODEL_TENSOR.FFN_DOWN_EXP, il), (E, H, I), down, Role.EXPERT, E, one["down"]),
        ]

    def _layer_of(self, name: str) -> int | None:
        """The decoder layer a checkpoint tensor belongs to, if any."""
        head = self.text_prefix + "layers."
        return int(name[len(head) :].split(".")[0]) if name.startswith(head) else None

    def _extra_text_specs(self) -> list[TensorSpec]:
        """Text tensors computed rather than read (Llama 4's rope_freqs)."""
        return []

    def text_tensors(self) -> list[TensorSpec]:
        specs: list[TensorSpec] = []
        expert_layers: set[int] = set()
        for name in self.ckpt.names():
            if name.startswith(self.vision_prefixes + self.skipped_prefixes):
                continue
            il = self._layer_of(name)
            if il is not None and name.startswith(self._experts_prefix(il)):
                expert_layers.add(il)
                continue
            specs.append(self._text_spec(name))
        for il in sorted(expert_layers):
            specs.extend(self._expert_specs(il))
        specs.extend(self._extra_text_specs())
        order = {"token_embd": 0, "rope_freqs": 0, "blk": 1, "output_norm": 2, "output": 3}

        def key(s: TensorSpec):
            parts = s.name.split(".")
            return (order.get(parts[0], 1), int(parts[1]) if parts[0] == "blk" else -1, s.name)

        return sorted(specs, key=key)

    def kv_cache_bytes(self, n_ctx: int) -> int:
        n_kv = int(self.text.get("num_key_value_heads", self.n_head))
        return self.n_layer * n_ctx * 2 * n_kv * self.head_dim * 2  # K and V, F16

    def calibration(self, attn_implementation: str = "sdpa", device: str = "cpu") -> Qwen3VLMoeCalibration:
        return Qwen3VLMoeCalibration(self, attn_implementation, device)

    # -- vision projector -----------------------------------------------------------------

    def _preprocessor(self) -> dict:
        """The image processor's settings: preprocessor_config.json, or the image_processor part
        of processor_config.json (what transformers 5's processor save_pretrained writes)."""
        pre = self.ckpt.read_json("preprocessor_config.json")
        if pre is None:
            pre = (self.ckpt.read_json("processor_config.json") or {}).get("image_processor") or {}
        return pre

    def add_mmproj_metadata(self, w: GGUFWriter) -> None:
        v = self.vision
        pre = self._preprocessor()
        patch = int(v["patch_size"])
        side = math.isqrt(int(v["num_position_embeddings"]))
        deepstack = [int(i) for i in v.get("deepstack_visual_indexes", [])]
        add_clip_header(
            w,
            self.model_name,
            VisionProjectorType.QWEN3VL,
            image_size=side * patch,  # the learned position grid, in pixels
            patch=patch,
            width=v["hidden_size"],
            ff=v["intermediate_size"],
            depth=v["depth"],
            heads=v["num_heads"],
            eps=1e-6,  # the vision blocks' LayerNorm eps
            projection_dim=v["out_hidden_size"],
            mean=pre.get("image_mean", [0.5, 0.5, 0.5]),
            std=pre.get("image_std", [0.5, 0.5, 0.5]),
        )
        w.add_vision_spatial_merge_size(int(v.get("spatial_merge_size", 2)))
        w.add_vision_use_gelu(True)
        w.add_vision_is_deepstack_layers([i in deepstack for i in range(int(v["depth"]))])

    def mmproj_tensors(self) -> list[TensorSpec]:
        v = self.vision
        depth = int(v["depth"])
        deepstack = [int(i) for i in v.get("deepstack_visual_indexes", [])]
        vmap = get_tensor_name_map(MODEL_ARCH.MMPROJ, depth)
        ck = self.ckpt
        specs: list[TensorSpec] = []

        def add(gguf_name: str, hf_name: str, role: Role, transform=None) -> None:
            shape = ck.shape(hf_name)
            load = partial(ck.load, hf_name)
            if transform is not None:
                load = (lambda f, g: lambda: g(f()))(load, transform)
                shape = transform(np.empty(shape, dtype=np.float32)).shape
            if len(shape) == 1:
                role = Role.NORM if role in (Role.NORM,) else Role.BIAS
            specs.append(TensorSpec(gguf_name, tuple(shape), load, role))

        for name in ck.names():
            if not name.startswith(VISION_PREFIX):
                continue
            rest = name[len(VISION_PREFIX) :]
            suffix = rest.rsplit(".", 1)[1]
            if rest == "patch_embed.proj.weight":
                # Conv3d [C_out, C_in, T=2, p, p] -> one 2-D kernel per temporal slice
                add(_name(MODEL_TENSOR.V_ENC_EMBD_PATCH), name, Role.PATCH, lambda a: a[:, :, 0])
                add(_name(MODEL_TENSOR.V_ENC_EMBD_PATCH) + ".1", name, Role.PATCH, lambda a: a[:, :, 1])
            elif rest.startswith("merger."):
                part = rest.split(".")[1]
                target = {
                    "norm": _name(MODEL_TENSOR.V_POST_NORM, suffix=suffix),
                    "linear_fc1": _name(MODEL_TENSOR.V_MMPROJ, 0, suffix),
                    "linear_fc2": _name(MODEL_TENSOR.V_MMPROJ, 2, suffix),
                }.get(part)
                if target is None:
                    raise UserError(f"unexpected tensor {name} in the checkpoint", "unknown merger part")
                add(target, name, Role.NORM if part == "norm" else Role.PROJECTOR)
            elif rest.startswith("deepstack_merger_list."):
                _, k, part, _ = rest.split(".")
                if int(k) >= len(deepstack):
                    raise UserError(
                        f"{name} has no entry in deepstack_visual_indexes", "config and weights disagree"
                    )
                layer = deepstack[int(k)]  # llama.cpp indexes deepstack by vision layer
                kind = {
                    "norm": MODEL_TENSOR.V_DS_NORM,
                    "linear_fc1": MODEL_TENSOR.V_DS_FC1,
                    "linear_fc2": MODEL_TENSOR.V_DS_FC2,
                }[part]
                add(_name(kind, layer, suffix), name, Role.NORM if part == "norm" else Role.PROJECTOR)
            else:
                gguf_name = vmap.get_name("visual." + rest, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise UserError(
                        f"unexpected tensor {name} in the checkpoint",
                        "this converter does not know where it goes",
                    )
                role = (
                    Role.POSITION
                    if "position_embd" in gguf_name
                    else (Role.NORM if ".ln" in gguf_name else Role.VISION)
                )
                add(gguf_name, name, role)
        return sorted(
            specs,
            key=lambda s: (
                not s.name.startswith("v.patch") and not s.name.startswith("v.position"),
                s.name.startswith("mm."),
                s.name,
            ),
        )


# -- calibration: where the HF module tree keeps what MODE measures ------------------------


def render_chat(tokenizer, image_processor, merge: int, prompt: str, image=None, system: str | None = None):
    """One user turn (system / image / prompt) through the model's chat template and image
    processor, ending with the generation prompt; <|image_pad|> is expanded to one token per
    merged patch (what Qwen3VLProcessor does, without needing torchvision)."""
    from mode_edge.formats.samples import Rendered

    content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": prompt}]
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": content}
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    pixel_values = grid = None
    if image is not None:
        out = image_processor(images=[image], return_tensors="np")
        pixel_values, grid = out["pixel_values"], out["image_grid_thw"]
        n = int(np.prod(grid[0])) // merge**2
        text = text.replace("<|image_pad|>", "<|image_pad|>" * n, 1)
    ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    return Rendered(ids, pixel_values, grid)


class Qwen3VLMoeCalibration(StandardNames):
    """Runs Qwen3-VL-MoE layer by layer from safetensors, through transformers' own modules.

    embed() runs the token embedding and the whole vision tower once per sample (they are
    small); load_layer(il) builds one decoder layer on the meta device and fills it from the
    checkpoint, so only one layer's weights are ever resident.
    """

    #: transformers' module and classes (Qwen3.5-MoE's calibration reuses this one with its own)
    MODULE = "qwen3_vl_moe"
    CONFIG = "Qwen3VLMoeConfig"
    CLASSES = {
        "model": "Qwen3VLMoeModel",
        "rotary": "Qwen3VLMoeTextRotaryEmbedding",
        "vision": "Qwen3VLMoeVisionModel",
        "layer": "Qwen3VLMoeTextDecoderLayer",
        "norm": "Qwen3VLMoeTextRMSNorm",
    }
    EXPERTS_ATTR = "num_experts"  # the text config's routed-expert count
    NORM_WEIGHT, LM_HEAD, EMBED_WEIGHT = (
        TEXT_PREFIX + "norm.weight",
        "lm_head.weight",
        TEXT_PREFIX + "embed_tokens.weight",
    )

    def __init__(self, conv: Qwen3VLMoe, attn_implementation: str = "sdpa", device: str = "cpu"):
        import importlib

        import torch
        import transformers
        from transformers import AutoImageProcessor, AutoTokenizer

        m = importlib.import_module(f"transformers.models.{self.MODULE}.modeling_{self.MODULE}")
        self.conv, self.ckpt, self.m = conv, conv.ckpt, m
        self.cls = {k: getattr(m, v) for k, v in self.CLASSES.items()}
        self.device = torch.device(device)
        self.config = getattr(transformers, self.CONFIG).from_pretrained(self.ckpt.dir)
        self.config._attn_implementation = attn_implementation
        self.config.text_config._attn_implementation = attn_implementation
        self.config.vision_config._attn_implementation = attn_implementation
        tc = self.config.text_config
        self.n_layers, self.n_experts, self.top_k = (
            tc.num_hidden_layers,
            getattr(tc, self.EXPERTS_ATTR),
            tc.num_experts_per_tok,
        )
        self.hidden, self.expert_ff = tc.hidden_size, tc.moe_intermediate_size
        self.image_token_id = self.config.image_token_id
        self.tokenizer = AutoTokenizer.from_pretrained(self.ckpt.dir)
        self.image_processor = AutoImageProcessor.from_pretrained(self.ckpt.dir)
        self.merge = self.config.vision_config.spatial_merge_size
        with torch.device("meta"):
            self._meta = self.cls["model"](self.config)  # for get_rope_index (config only)
        self.rotary = self.cls["rotary"](tc).to(self.device)
        self._embed = None
        self._visual = None

    # rendering
    def render(self, sample, image) -> object:
        return render_chat(
            self.tokenizer, self.image_processor, self.merge, sample.prompt, image, sample.system
        )

    def turn_start_id(self) -> int | None:
        vocab = self.tokenizer.get_vocab()
        return vocab.get("<|im_start|>")

    def special_ids(self) -> set[int]:
        return {int(i) for i in self.tokenizer.all_special_ids} | {
            int(v)
            for k, v in self.tokenizer.get_added_vocab().items()
            if k.startswith("<|") and k.endswith("|>")
        }

    # weights
    def _ensure_embed(self) -> None:
        import torch

        if self._embed is not None:
            return
        w = torch.from_numpy(self.ckpt.load(TEXT_PREFIX + "embed_tokens.weight"))
        self._embed = torch.nn.Embedding.from_pretrained(w, freeze=True)
        visual = self.cls["vision"]._from_config(self.config.vision_config)
        visual.load_state_dict(self._state(VISION_PREFIX), strict=True)
        self._visual = visual.eval().requires_grad_(False).to(self.device)

    def embed(self, r) -> dict:
        """Initial hidden state and what every layer needs for one rendered sample."""
        import torch
        from transformers.masking_utils import create_causal_mask

        self._ensure_embed()
        ids = torch.from_numpy(r.input_ids)[None]
        dev = self.device
        with torch.no_grad():
            h = self._embed(ids).to(dev)
            image_mask = ids == self.image_token_id
            deepstack = []
            if r.pixel_values is not None:
                grid = torch.from_numpy(r.image_grid_thw)
                out = self._visual(
                    torch.from_numpy(r.pixel_values).to(dev), grid_thw=grid.to(dev), return_dict=True
                )
                image_mask = image_mask.to(dev)
                h = h.masked_scatter(image_mask[..., None].expand_as(h), out.pooler_output.to(h.dtype))
                deepstack = list(getattr(out, "deepstack_features", None) or [])
                pos, _ = self._meta.get_rope_index(
                    ids, mm_token_type_ids=image_mask.int(), image_grid_thw=grid
                )
                text_pos = None
            else:
                pos = torch.arange(ids.shape[1]).view(1, 1, -1).expand(4, 1, -1)
                text_pos, pos = pos[0].to(dev), pos[1:]
            cos_sin = self.rotary(h, pos.to(dev))
            mask = create_causal_mask(
                config=self.config.text_config,
                inputs_embeds=h,
                attention_mask=None,
                cache=None,
                position_ids=text_pos,
            )
        return {
            "hidden": h[0].cpu(),
            "position_embeddings": cos_sin,
            "attention_mask": mask,
            "image_mask": image_mask[0].to(dev),
            "deepstack": deepstack,
        }

    def load_layer(self, il: int):
        """Decoder layer il with its weights; experts are copied in one at a time so the peak is
        the layer itself plus one expert, whatever the on-disk layout."""
        import torch

        with torch.device("meta"):
            layer = self.cls["layer"](self.config.text_config, il)
        layer = layer.to_empty(device=self.device)
        state = self._state(f"{TEXT_PREFIX}layers.{il}.", skip=".mlp.experts.")
        missing, unexpected = layer.load_state_dict(state, strict=False)
        if unexpected or set(missing) != {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}:
            raise RuntimeError(f"layer {il}: unexpected {unexpected}, missing {missing}")
        specs = {s.name.split(".")[2]: s for s in self.conv._expert_specs(il)}
        experts, I = layer.mlp.experts, self.expert_ff
        with torch.no_grad():  # transformers keeps gate_up as [E, 2I, H] (gate first), down as [E, H, I]
            for e in range(self.n_experts):
                experts.gate_up_proj[e, :I].copy_(torch.from_numpy(specs["ffn_gate_exps"].load_expert(e)))
                experts.gate_up_proj[e, I:].copy_(torch.from_numpy(specs["ffn_up_exps"].load_expert(e)))
                experts.down_proj[e].copy_(torch.from_numpy(specs["ffn_down_exps"].load_expert(e)))
        return layer.eval().requires_grad_(False)

    def run_layer(self, layer, il: int, s: dict, grad: bool = False):
        """One sample through one layer, plus the deepstack injection that follows it (on the
        calibration device; the result too). grad: keep the graph (gradients w.r.t. the input)."""
        import torch

        with torch.enable_grad() if grad else torch.no_grad():
            h = layer(
                s["hidden"].to(self.device)[None],
                attention_mask=s["attention_mask"],
                position_embeddings=s["position_embeddings"],
            )
            if il < len(s["deepstack"]):
                h = h.clone()
                h[0, s["image_mask"]] += s["deepstack"][il].to(h.dtype)
        return h[0]

    def _norm_class(self):
        return self.cls["norm"]

    def routing(self, router_output):
        """(expert ids [T, k], weights [T, k] as the block scales the outputs, the router's
        probabilities of those experts before top-k renormalisation [T, k])."""
        import torch

        logits, weights, indices = router_output
        probs = torch.softmax(logits.float(), dim=-1).gather(-1, indices)
        return indices, weights, probs

    # the parts calibration records
    def parts(self, layer) -> LayerParts:
        return LayerParts(layer.self_attn, layer.mlp, layer.mlp.gate, layer.mlp.experts)

    def attention_qk(self, attn, x, position_embeddings):
        """Post-norm, post-RoPE queries [heads, T, d] and keys [heads, T, d] (GQA repeated)."""
        m = self.m
        shape = (*x.shape[:-1], -1, attn.head_dim)
        q = attn.q_norm(attn.q_proj(x).view(shape)).transpose(1, 2)
        k = attn.k_norm(attn.k_proj(x).view(shape)).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = m.apply_rotary_pos_emb(q, k, cos, sin)
        k = m.repeat_kv(k, attn.num_key_value_groups)
        return q[0], k[0], attn.scaling

    def expert_weights(self, experts, e: int):
        """Expert e's (gate [I, H], up [I, H], down [H, I]) and activation."""
        gate, up = experts.gate_up_proj[e].chunk(2, dim=0)
        return gate, up, experts.down_proj[e], experts.act_fn
