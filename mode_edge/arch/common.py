"""What several architecture files share: llama.cpp's tensor names, the role of a text tensor
from its GGUF name, the clip header of an mmproj file, and the calibration members every
architecture with llama.cpp's standard attention / FFN names has."""

from __future__ import annotations

from gguf import MODEL_TENSOR, TENSOR_NAMES, GGUFWriter

from mode_edge.arch.base import Calibration
from mode_edge.formats.tensors import Role


def _name(tensor: MODEL_TENSOR, bid: int | None = None, suffix: str = "weight") -> str:
    base = TENSOR_NAMES[tensor].format(bid=bid) if bid is not None else TENSOR_NAMES[tensor]
    return f"{base}.{suffix}" if suffix else base


def text_role(gguf_name: str, shape) -> Role:
    """A text tensor's role from its GGUF name: 1-D tensors NORM, the router ROUTER, embedding,
    output, shared experts, attention; any other matrix a dense layer's FFN."""
    if len(shape) == 1:
        return Role.NORM
    if ".ffn_gate_inp" in gguf_name:  # the router (and Qwen3.5's shared-expert gate)
        return Role.ROUTER
    if gguf_name.startswith("token_embd"):
        return Role.EMBED
    if gguf_name.startswith("output"):
        return Role.OUTPUT
    if "_shexp." in gguf_name:
        return Role.SHARED
    if ".attn_" in gguf_name or ".ssm_" in gguf_name:  # softmax or linear (Gated DeltaNet) mixing
        return Role.ATTN
    return Role.FFN


def add_clip_header(
    w: GGUFWriter,
    name: str,
    projector,
    *,
    image_size: int,
    patch: int,
    width: int,
    ff: int,
    depth: int,
    heads: int,
    eps: float,
    projection_dim: int,
    mean,
    std,
    both_projector_keys: bool = True,
) -> None:
    """The clip keys every mmproj file has. both_projector_keys: also clip.vision.projector_type
    (what llama.cpp's own converter writes for the newer projectors)."""
    w.add_name(f"mmproj-{name}")
    w.add_clip_has_vision_encoder(True)
    w.add_clip_projector_type(projector)
    if both_projector_keys:
        w.add_clip_vision_projector_type(projector)
    w.add_vision_image_size(int(image_size))
    w.add_vision_patch_size(int(patch))
    w.add_vision_embedding_length(int(width))
    w.add_vision_feed_forward_length(int(ff))
    w.add_vision_block_count(int(depth))
    w.add_vision_head_count(int(heads))
    w.add_vision_attention_layernorm_eps(float(eps))
    w.add_vision_projection_dim(int(projection_dim))
    w.add_vision_image_mean([float(x) for x in mean])
    w.add_vision_image_std([float(x) for x in std])


class StandardNames(Calibration):
    """Calibration members for llama.cpp's standard names: q/k/v/o attention, ffn_*_exps
    experts, ffn_{gate,up,down} dense FFNs and ffn_*_shexp shared experts with gate_proj /
    up_proj / down_proj modules; checkpoint tensors by prefix."""

    _ATTN = (
        (MODEL_TENSOR.ATTN_Q, "q_proj", "attn_in"),
        (MODEL_TENSOR.ATTN_K, "k_proj", "attn_in"),
        (MODEL_TENSOR.ATTN_V, "v_proj", "attn_in"),
        (MODEL_TENSOR.ATTN_OUT, "o_proj", "o_in"),
    )

    def _state(self, prefix: str, skip: str | None = None) -> dict:
        """Checkpoint tensors under `prefix` (minus names containing `skip`), keyed as the module names them."""
        import torch

        return {
            n[len(prefix) :]: torch.from_numpy(self.ckpt.load(n))
            for n in self.ckpt.names()
            if n.startswith(prefix) and (skip is None or skip not in n)
        }

    #: the checkpoint's final norm, lm_head and (for tied heads) token embedding (set by each file)
    NORM_WEIGHT: str
    LM_HEAD: str
    EMBED_WEIGHT: str

    def _norm_class(self):
        """transformers' RMSNorm class of the decoder (the checkpoint's w, computed its way)."""
        raise NotImplementedError

    def head(self, h):
        """Logits [T, V] from final hidden states [T, H] (final norm and lm_head, or the tied
        embedding)."""
        import torch

        if getattr(self, "_head", None) is None:
            tc = self.config.text_config
            norm = self._norm_class()(tc.hidden_size, eps=tc.rms_norm_eps)
            norm.load_state_dict({"weight": torch.from_numpy(self.ckpt.load(self.NORM_WEIGHT))})
            name = self.LM_HEAD if self.LM_HEAD in self.ckpt.names() else self.EMBED_WEIGHT
            w = torch.from_numpy(self.ckpt.load(name))
            self._head = (norm.to(self.device).requires_grad_(False), w.to(self.device))
        norm, w = self._head
        return norm(h.to(self.device)) @ w.T.to(h.dtype)

    def attention_output(self, attn):
        """The module whose input is the attention's mixed values (o_proj)."""
        return attn.o_proj

    def attention_names(self, il: int) -> list[tuple[str, str]]:
        """(GGUF name, input kind: attn_in or o_in) of the layer's attention matrices."""
        return [(_name(t, il), kind) for t, _, kind in self._ATTN]

    def attention_matrices(self, attn, il: int):
        """(GGUF name, weight [out, in], input kind) of the layer's attention matrices."""
        return [(_name(t, il), getattr(attn, mod).weight, kind) for t, mod, kind in self._ATTN]

    def gguf_expert_names(self, il: int) -> tuple[str, str, str]:
        return tuple(
            _name(t, il)
            for t in (MODEL_TENSOR.FFN_GATE_EXP, MODEL_TENSOR.FFN_UP_EXP, MODEL_TENSOR.FFN_DOWN_EXP)
        )

    def dense_names(self, il: int) -> tuple[str, str, str]:
        return tuple(
            _name(t, il) for t in (MODEL_TENSOR.FFN_GATE, MODEL_TENSOR.FFN_UP, MODEL_TENSOR.FFN_DOWN)
        )

    def shared_expert_names(self, il: int) -> tuple[str, str, str]:
        return tuple(
            _name(t, il)
            for t in (MODEL_TENSOR.FFN_GATE_SHEXP, MODEL_TENSOR.FFN_UP_SHEXP, MODEL_TENSOR.FFN_DOWN_SHEXP)
        )

    def dense_weights(self, mlp):
        return self.mlp_weights(mlp)

    def shared_expert_weights(self, shared):
        return self.mlp_weights(shared)

    @staticmethod
    def mlp_weights(mlp):
        """(gate [I, H], up [I, H], down [H, I], activation) of a gate/up/down_proj SwiGLU module
        (transformers calls the activation act_fn or activation_fn)."""
        act = getattr(mlp, "act_fn", None) or mlp.activation_fn
        return mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight, act
