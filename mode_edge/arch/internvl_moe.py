"""InternVL3.5-MoE in transformers' format (InternVLForConditionalGeneration with a qwen3_moe text
model) -> llama.cpp `qwen3moe` + mmproj `internvl`.

The text model is Qwen3-MoE: Qwen3-VL-MoE's decoder without M-RoPE or deepstack, so its tensor
names, expert layouts and layer-by-layer runner come from qwen3_vl_moe.py. What is InternVL's:

- save formats: transformers 5.24 writes language_model.model.* / vision_tower.* /
  multi_modal_projector.* and one tensor per expert by default, model.* names and fused experts
  with save_original_format=False; the checkpoint is read under the module names either way;
- the vision tower (InternViT: CLS token, absolute positions, layer scales), pixel shuffle
  (downsample 0.5: 256 tokens per 448-pixel tile) and the LayerNorm + MLP projector;
- the position table: transformers puts CLS first (row 0 is CLS's), llama.cpp's internvl graph
  appends CLS after the patches and adds the rows in that order, so the table is written with
  row 0 moved to the end (llama.cpp's own converter writes it unchanged, which gives every patch
  its neighbour's position; tests/arch/test_internvl_moe.py measures both);
- images: <img> + 256 <IMG_CONTEXT> per tile + </img>, tiled as llama.cpp's mtmd tiles them at
  run time (mtmd_tiles), not as transformers' processor does (which tiles even small images,
  chooses the grid by aspect ratio, stretches instead of padding and adds the thumbnail only
  for more than one tile): calibration must see the tokens the runtime will see.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, TENSOR_NAMES, GGUFWriter, VisionProjectorType, get_tensor_name_map

from mode_edge.arch.common import add_clip_header
from mode_edge.arch.qwen3_vl_moe import TEXT_PREFIX, Qwen3VLMoe, Qwen3VLMoeCalibration
from mode_edge.arch.registry import register
from mode_edge.arch.tiling import internvl_grids, mtmd_tiles
from mode_edge.arch.vocab import add_bpe_vocab
from mode_edge.errors import UserError
from mode_edge.formats.checkpoint import Checkpoint
from mode_edge.formats.tensors import Role, TensorSpec

VISION = "model.vision_tower."
PROJECTOR = "model.multi_modal_projector."
#: transformers' default save format -> the module tree's names
LEGACY_PREFIXES = {
    "language_model.model.": TEXT_PREFIX,
    "language_model.lm_head.": "lm_head.",
    "vision_tower.": VISION,
    "multi_modal_projector.": PROJECTOR,
}
IMAGE_CONTEXT, IMAGE_START, IMAGE_END = "<IMG_CONTEXT>", "<img>", "</img>"


def _side(v, key: str) -> int:
    x = v.get(key)
    x = x if isinstance(x, list) else [x, x]
    if len(x) != 2 or x[0] != x[1] or x[0] is None:
        raise UserError(
            f"vision_config {key} {v.get(key)!r} is not square", "llama.cpp's internvl needs square tiles"
        )
    return int(x[0])


@register("internvl", architectures=("InternVLForConditionalGeneration",))
class InternVLMoe(Qwen3VLMoe):
    arch = "qwen3moe"
    media_part = IMAGE_CONTEXT  # mtmd writes <img> … </img> around the tile embeddings itself
    end_of_turn = "<|im_end|>"
    vision_prefixes = (VISION, PROJECTOR)

    def __init__(self, ckpt: Checkpoint):
        ckpt.rename_prefixes(LEGACY_PREFIXES)
        cfg = ckpt.config
        t = cfg.get("text_config") or {}
        if t.get("model_type") != "qwen3_moe":
            raise UserError(
                f"this InternVL's text model is {t.get('model_type')!r}",
                "mode-edge converts InternVL with a qwen3_moe text model (InternVL3.5-MoE)",
            )
        if not t.get("norm_topk_prob", False):
            raise UserError(
                "this model's router does not renormalise its top-k weights (norm_topk_prob false)",
                "llama.cpp's qwen3moe always renormalises; such a model would run differently",
            )
        for key, want in (("vision_feature_layer", -1), ("vision_feature_select_strategy", "default")):
            if cfg.get(key, want) != want:
                raise UserError(
                    f"config.json {key} is {cfg.get(key)!r}", f"llama.cpp's internvl supports {want!r} only"
                )
        self.downsample = float(cfg.get("downsample_ratio", 0.5))
        if abs(1 / self.downsample - round(1 / self.downsample)) > 1e-6:
            raise UserError(
                f"downsample_ratio {self.downsample} is not 1/n", "llama.cpp's internvl needs 1/n"
            )
        super().__init__(ckpt)
        self._text_map = get_tensor_name_map(MODEL_ARCH.QWEN3MOE, self.n_layer)
        self.image_token_id = self._image_token_id()

    def _image_token_id(self) -> int:
        from mode_edge.files import read_json

        tj = read_json(self.ckpt.dir / "tokenizer.json", "re-download tokenizer.json")
        ids = {a["content"]: a["id"] for a in tj.get("added_tokens", [])}
        for tok in (IMAGE_CONTEXT, IMAGE_START, IMAGE_END):
            if tok not in ids:
                raise UserError(
                    f"the tokenizer has no {tok} token", "this is not an InternVL tokenizer; re-download it"
                )
        cid = self.ckpt.config.get("image_token_id")
        if cid is not None and int(cid) != ids[IMAGE_CONTEXT]:
            raise UserError(
                f"config.json image_token_id {cid} is not the tokenizer's {IMAGE_CONTEXT} ({ids[IMAGE_CONTEXT]})",
                "config and tokenizer disagree; re-download both",
            )
        return ids[IMAGE_CONTEXT]

    def _check_vision(self) -> None:
        v = self.vision
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            if key not in v:
                raise UserError(
                    f"config.json vision_config lacks {key}", "the config is incomplete; re-download it"
                )
        self.tile, self.patch = _side(v, "image_size"), _side(v, "patch_size")
        if (
            v.get("hidden_act", "gelu") != "gelu"
            or self.ckpt.config.get("projector_hidden_act", "gelu") != "gelu"
        ):
            raise UserError("the vision activation is not gelu", "llama.cpp's internvl projector uses gelu")
        size = self._preprocessor().get("size") or {}
        if size and (size.get("height"), size.get("width")) != (self.tile, self.tile):
            raise UserError(
                f"the image processor resizes tiles to {size}, the vision tower takes {self.tile}x{self.tile}",
                "llama.cpp feeds the tower its own tile size; fix preprocessor_config.json's size",
            )
        rms = v.get("norm_type", "layer_norm") == "rms_norm"
        big = int(v["hidden_size"]) == 3200 and int(v["num_hidden_layers"]) == 45
        if (
            rms != big
            or not v.get("use_mean_pooling", True)
            or not v.get("use_absolute_position_embeddings", True)
        ):
            raise UserError(
                "this InternViT's norm type, pooling or position embedding is not one llama.cpp's internvl runs",
                "supported: LayerNorm ViTs (300M) and the RMSNorm 6B ViT, mean pooling, absolute positions",
            )

    # -- text model (qwen3moe) ------------------------------------------------------------

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
        w.add_rope_freq_base(float(self.rope.get("rope_theta", t.get("rope_theta", 1000000.0))))
        w.add_layer_norm_rms_eps(float(t.get("rms_norm_eps", 1e-6)))
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(int(t["num_experts_per_tok"]))
        w.add_expert_feed_forward_length(self.n_ff_exp)
        add_bpe_vocab(w, self.ckpt.dir, self.ckpt.shape(TEXT_PREFIX + "embed_tokens.weight")[0])

    def calibration(self, attn_implementation: str = "sdpa", device: str = "cpu") -> InternVLMoeCalibration:
        return InternVLMoeCalibration(self, attn_implementation, device)

    # -- vision projector (internvl) ------------------------------------------------------

    def add_mmproj_metadata(self, w: GGUFWriter) -> None:
        v = self.vision
        pre = self._preprocessor()
        add_clip_header(
            w,
            self.model_name,
            VisionProjectorType.INTERNVL,
            image_size=self.tile,
            patch=self.patch,
            width=v["hidden_size"],
            ff=v["intermediate_size"],
            depth=v["num_hidden_layers"],
            heads=v["num_attention_heads"],
            eps=v.get("layer_norm_eps", 1e-6),
            projection_dim=self.n_embd,
            mean=pre.get("image_mean", [0.485, 0.456, 0.406]),
            std=pre.get("image_std", [0.229, 0.224, 0.225]),
            both_projector_keys=False,
        )
        w.add_vision_use_gelu(True)
        w.add_vision_projector_scale_factor(round(1 / self.downsample))
        w.add_vision_preproc_min_tiles(int(pre.get("min_patches", 1)))
        w.add_vision_preproc_max_tiles(int(pre.get("max_patches", 12)))

    def mmproj_tensors(self) -> list[TensorSpec]:
        ck = self.ckpt
        vmap = get_tensor_name_map(MODEL_ARCH.MMPROJ, int(self.vision["num_hidden_layers"]))
        mlp = {"layer_norm": 0, "linear_1": 1, "linear_2": 3}  # mm.model.mlp.{0,1,3}: LN, fc, (gelu), fc
        specs = []
        for name in ck.names():
            if not name.startswith(self.vision_prefixes):
                continue
            load, shape, transform = partial(ck.load, name), tuple(ck.shape(name)), None
            if name.startswith(PROJECTOR):
                part, suffix = name[len(PROJECTOR) :].split(".")
                gguf_name = TENSOR_NAMES[MODEL_TENSOR.V_MMPROJ_MLP].format(bid=mlp[part]) + "." + suffix
                role = Role.NORM if part == "layer_norm" else Role.PROJECTOR
            else:
                gguf_name = vmap.get_name(name, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise UserError(
                        f"unexpected tensor {name} in the checkpoint",
                        "this converter does not know where it goes",
                    )
                if name.endswith(("lambda_1", "lambda_2")):
                    gguf_name += ".weight"
                if name.endswith("position_embeddings"):
                    gguf_name += ".weight"
                    transform = _cls_row_last
                    role = Role.POSITION
                elif name.endswith("cls_token"):
                    role = Role.POSITION  # added to a token as is: kept F32 like the positions
                elif "patch_embd" in gguf_name:
                    role = Role.PATCH
                elif ".ln" in gguf_name:
                    role = Role.NORM
                else:
                    role = Role.VISION
            if transform is not None:
                load = (lambda f, g: lambda: g(f()))(load, transform)
            if len(shape) == 1 and role not in (Role.NORM,):
                role = Role.BIAS
            specs.append(TensorSpec(gguf_name, shape, load, role))
        return sorted(specs, key=lambda s: (s.name.startswith("mm."), s.name))


def _cls_row_last(a: np.ndarray) -> np.ndarray:
    """[1, 1 + n_patches, C]: CLS's row (first in transformers) last, where llama.cpp's graph puts CLS."""
    return np.ascontiguousarray(np.concatenate([a[:, 1:], a[:, :1]], axis=1))


class InternVLMoeCalibration(Qwen3VLMoeCalibration):
    """Qwen3-VL-MoE's layer-by-layer runner with Qwen3-MoE's decoder classes, 1-D RoPE positions,
    and InternVL's vision tower and projector in embed()."""

    MODULE = "qwen3_moe"
    CLASSES = {
        "rotary": "Qwen3MoeRotaryEmbedding",
        "layer": "Qwen3MoeDecoderLayer",
        "norm": "Qwen3MoeRMSNorm",
    }

    def __init__(self, conv: InternVLMoe, attn_implementation: str = "sdpa", device: str = "cpu"):
        import torch
        from transformers import AutoImageProcessor, AutoTokenizer, InternVLConfig
        from transformers.models.qwen3_moe import modeling_qwen3_moe as m

        self.conv, self.ckpt, self.m = conv, conv.ckpt, m
        self.cls = {k: getattr(m, v) for k, v in self.CLASSES.items()}
        self.device = torch.device(device)
        self.config = InternVLConfig.from_pretrained(self.ckpt.dir)
        for c in (self.config, self.config.text_config, self.config.vision_config):
            c._attn_implementation = attn_implementation
        tc = self.config.text_config
        self.n_layers, self.n_experts, self.top_k = (
            tc.num_hidden_layers,
            tc.num_experts,
            tc.num_experts_per_tok,
        )
        self.hidden, self.expert_ff = tc.hidden_size, tc.moe_intermediate_size
        self.image_token_id = conv.image_token_id
        self.tokenizer = AutoTokenizer.from_pretrained(self.ckpt.dir)
        self.image_processor = AutoImageProcessor.from_pretrained(self.ckpt.dir)
        self.tokens_per_tile = (conv.tile // conv.patch) ** 2 // round(1 / conv.downsample) ** 2
        self.rotary = self.cls["rotary"](tc).to(self.device)
        self._embed = None
        self._visual = None

    def render(self, sample, image):
        """The chat template's <IMG_CONTEXT> becomes <img> + 256 per tile + </img>; the tiles are
        mtmd's (mtmd_tiles), each normalised by the model's image processor (448 in, no resize)."""
        from mode_edge.formats.samples import Rendered

        content = ([{"type": "image"}] if image is not None else []) + [
            {"type": "text", "text": sample.prompt}
        ]
        messages = ([{"role": "system", "content": sample.system}] if sample.system else []) + [
            {"role": "user", "content": content}
        ]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        pixel_values = None
        if image is not None:
            pre = self.conv._preprocessor()
            lo, hi = int(pre.get("min_patches", 1)), int(pre.get("max_patches", 12))
            tiles = mtmd_tiles(image.convert("RGB"), self.conv.tile, internvl_grids(lo, hi))
            pixel_values = np.concatenate(
                [
                    self.image_processor(images=[t], crop_to_patches=False, return_tensors="np")[
                        "pixel_values"
                    ]
                    for t in tiles
                ]
            )
            n = pixel_values.shape[0] * self.tokens_per_tile
            text = text.replace(IMAGE_CONTEXT, IMAGE_START + IMAGE_CONTEXT * n + IMAGE_END, 1)
        ids = np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
        return Rendered(ids, pixel_values, None)

    def _ensure_embed(self) -> None:
        import torch
        from transformers.models.internvl import modeling_internvl as iv

        if self._embed is not None:
            return
        w = torch.from_numpy(self.ckpt.load(TEXT_PREFIX + "embed_tokens.weight"))
        self._embed = torch.nn.Embedding.from_pretrained(w, freeze=True)
        with torch.device("meta"):
            model = iv.InternVLModel(self.config)  # get_image_features: tower, pixel shuffle, projector
        model.language_model = torch.nn.Identity()
        model.vision_tower = iv.InternVLVisionModel._from_config(self.config.vision_config)
        model.vision_tower.load_state_dict(self._state(VISION), strict=True)
        model.multi_modal_projector = iv.InternVLMultiModalProjector(self.config)
        model.multi_modal_projector.load_state_dict(self._state(PROJECTOR), strict=True)
        self._visual = model.eval().requires_grad_(False).to(self.device)

    def embed(self, r) -> dict:
        import torch
        from transformers.masking_utils import create_causal_mask

        self._ensure_embed()
        ids = torch.from_numpy(r.input_ids)[None]
        dev = self.device
        with torch.no_grad():
            h = self._embed(ids).to(dev)
            image_mask = (ids == self.image_token_id).to(dev)
            if r.pixel_values is not None:
                pv = torch.from_numpy(r.pixel_values).to(dev)
                feats = self._visual.get_image_features(pv).pooler_output.reshape(-1, self.hidden)
                h = h.masked_scatter(image_mask[..., None].expand_as(h), feats.to(h.dtype))
            pos = torch.arange(ids.shape[1], device=dev)[None]
            cos_sin = self.rotary(h, pos)
            mask = create_causal_mask(
                config=self.config.text_config,
                inputs_embeds=h,
                attention_mask=None,
                cache=None,
                position_ids=pos,
            )
        return {
            "hidden": h[0].cpu(),
            "position_embeddings": cos_sin,
            "attention_mask": mask,
            "image_mask": image_mask[0],
            "deepstack": [],
        }
