"""Qwen3.5-MoE (Qwen3_5MoeForConditionalGeneration) -> llama.cpp `qwen35moe` + `qwen3vl_merger`.

The vision tower is Qwen3-VL's without deepstack, and the experts sit where Qwen3-VL-MoE keeps
them, so both reuse qwen3_vl_moe.py. What differs is the text model:

- hybrid attention: `layer_types` marks each layer "linear_attention" (Gated DeltaNet, GGUF
  attn_qkv / attn_gate / ssm_*) or "full_attention" (gated softmax attention: q_proj holds
  query and gate interleaved per head, which llama.cpp reads as stored);
- the linear layers' value heads are regrouped from HF's grouped order (v head k*R + r serves
  key head k) to the tiled order ggml broadcasts in (r*Hk + k): rows of qkv's V part, z, a, b,
  A_log, dt_bias and the conv kernel's V channels, columns of out_proj;
- RMSNorms store w and compute x*(1+w); GGUF stores 1+w (not the gated norm, which uses w);
- ssm_a = -exp(A_log); partial rotary (rope.dimension_count = head_dim * partial_rotary_factor);
- a shared expert with a sigmoid gate in every layer (ffn_*_shexp, ffn_gate_inp_shexp);
- multi-token-prediction weights (`mtp.*`) are skipped on purpose: llama.cpp's qwen35moe runs
  without them (block_count is the decoder's layers, no nextn keys).

Expert layouts on disk: fused gate_up_proj [E, 2I, H] / down_proj [E, H, I] (Qwen's published
files; "transformers" in qwen3_vl_moe's names) and one tensor per expert (what transformers
5.24's save_pretrained writes).
"""

from __future__ import annotations

from functools import partial

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, GGUFWriter, get_tensor_name_map

from mode_edge.arch.base import LayerParts
from mode_edge.arch.common import _name, text_role
from mode_edge.arch.qwen3_vl_moe import TEXT_PREFIX, Qwen3VLMoe, Qwen3VLMoeCalibration
from mode_edge.arch.registry import register
from mode_edge.arch.vocab import add_bpe_vocab
from mode_edge.errors import UserError
from mode_edge.formats.checkpoint import Checkpoint
from mode_edge.formats.tensors import Role, TensorSpec

LINEAR, FULL = "linear_attention", "full_attention"


def v_head_order(n_k_heads: int, n_v_heads: int, width: int) -> np.ndarray:
    """Index array taking HF's grouped V-head order to ggml's tiled one, `width` entries per head:
    new head r*Hk + k holds old head k*R + r."""
    r = n_v_heads // n_k_heads
    heads = np.arange(n_v_heads).reshape(n_k_heads, r).T.reshape(-1)  # new position -> old head
    return (heads[:, None] * width + np.arange(width)[None, :]).reshape(-1)


@register("qwen3_5_moe", architectures=("Qwen3_5MoeForConditionalGeneration",))
class Qwen35Moe(Qwen3VLMoe):
    arch = "qwen35moe"
    skipped_prefixes = ("mtp.",)  # multi-token prediction: llama.cpp's qwen35moe runs without it

    def __init__(self, ckpt: Checkpoint):
        t = ckpt.config.get("text_config") or {}
        try:
            n_layer = int(t["num_hidden_layers"])
            self.n_k_heads = int(t["linear_num_key_heads"])
            self.n_v_heads = int(t["linear_num_value_heads"])
            self.k_dim = int(t["linear_key_head_dim"])
            self.v_dim = int(t["linear_value_head_dim"])
            self.conv_kernel = int(t["linear_conv_kernel_dim"])
            self.n_ff_shexp = int(t["shared_expert_intermediate_size"])
        except KeyError as e:
            raise UserError(
                f"config.json text_config lacks {e.args[0]}", "the config is incomplete; re-download it"
            ) from None
        types = t.get("layer_types")
        if types is None:  # published configs may give only the interval (transformers' rule)
            interval = int(t.get("full_attention_interval", 4))
            types = [FULL if (i + 1) % interval == 0 else LINEAR for i in range(n_layer)]
        if len(types) != n_layer or set(types) - {LINEAR, FULL}:
            raise UserError(
                f"config.json layer_types must list {n_layer} entries of {LINEAR!r} / {FULL!r}",
                "the config is inconsistent; re-download it",
            )
        if FULL not in types:
            raise UserError(
                "this Qwen3.5-MoE has no full-attention layer",
                "mode-edge needs one for its key-token filter (and no published model lacks one)",
            )
        if self.k_dim != self.v_dim or self.n_v_heads % self.n_k_heads:
            raise UserError(
                f"linear attention with key head dim {self.k_dim}, value head dim {self.v_dim}, "
                f"{self.n_k_heads} key / {self.n_v_heads} value heads",
                "llama.cpp's qwen35moe needs equal head dims and value heads a multiple of key heads",
            )
        self.layer_types = list(types)
        super().__init__(ckpt)
        rope = self.rope
        self.partial_rotary = float(rope.get("partial_rotary_factor", t.get("partial_rotary_factor", 0.25)))
        self._text_map = get_tensor_name_map(MODEL_ARCH.QWEN35MOE, self.n_layer)

    def _check_vision(self) -> None:
        if self.vision.get("deepstack_visual_indexes"):
            raise UserError(
                "this Qwen3.5-MoE vision config has deepstack layers",
                "llama.cpp's qwen35moe reads no deepstack features; such a model is not supported",
            )
        super()._check_vision()

    # -- text model -----------------------------------------------------------------------

    def add_text_metadata(self, w: GGUFWriter) -> None:
        t = self.text
        a = self.arch
        w.add_name(self.model_name)
        w.add_context_length(int(t.get("max_position_embeddings", 4096)))
        w.add_embedding_length(self.n_embd)
        w.add_block_count(self.n_layer)  # the decoder only: the MTP block is not written
        w.add_head_count(self.n_head)
        w.add_head_count_kv(int(t.get("num_key_value_heads", self.n_head)))
        w.add_key_length(self.head_dim)
        w.add_value_length(self.head_dim)
        w.add_rope_dimension_count(int(self.head_dim * self.partial_rotary))
        w.add_rope_freq_base(float(self.rope.get("rope_theta", t.get("rope_theta", 10000000.0))))
        sections = list(self.rope.get("mrope_section", [11, 11, 10]))
        w.add_rope_dimension_sections((sections + [0, 0, 0, 0])[:4])
        w.add_layer_norm_rms_eps(float(t.get("rms_norm_eps", 1e-6)))
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(int(t["num_experts_per_tok"]))
        w.add_expert_feed_forward_length(self.n_ff_exp)
        w.add_expert_shared_feed_forward_length(self.n_ff_shexp)
        w.add_ssm_conv_kernel(self.conv_kernel)
        w.add_ssm_inner_size(self.v_dim * self.n_v_heads)
        w.add_ssm_state_size(self.k_dim)
        w.add_ssm_time_step_rank(self.n_v_heads)
        w.add_ssm_group_count(self.n_k_heads)
        # the loader's rule: a bool per layer, true where the layer is recurrent (linear)
        w.add_array(f"{a}.attention.recurrent_layers", [lt == LINEAR for lt in self.layer_types])
        add_bpe_vocab(w, self.ckpt.dir, int(self.ckpt.shape(TEXT_PREFIX + "embed_tokens.weight")[0]))

    def _text_spec(self, hf_name: str) -> TensorSpec:
        rest = hf_name[len(TEXT_PREFIX) :] if hf_name.startswith(TEXT_PREFIX) else hf_name
        short = "model." + rest if hf_name.startswith(TEXT_PREFIX) else hf_name
        if rest.endswith("linear_attn.dt_bias"):
            short = short[: -len("dt_bias")] + "dt_proj.bias"
        suffixes = () if rest.endswith("A_log") else (".weight", ".bias")
        gguf_name = self._text_map.get_name(short, try_suffixes=suffixes)
        if gguf_name is None:
            raise UserError(
                f"unexpected tensor {hf_name} in the checkpoint", "this converter does not know where it goes"
            )
        shape = tuple(self.ckpt.shape(hf_name))
        load = partial(self.ckpt.load, hf_name)
        transform = self._transform(rest, shape)
        if transform is not None:
            load = (lambda f, g: lambda: g(f()))(load, transform)
            if rest.endswith("conv1d.weight"):  # the only transform that changes a shape
                shape = (shape[0], shape[2])
        ssm = ".ssm_" in gguf_name and gguf_name.endswith(("ssm_a", "ssm_dt.bias", "ssm_conv1d.weight"))
        role = Role.SSM if ssm else text_role(gguf_name, shape)
        return TensorSpec(gguf_name, tuple(shape), load, role)

    def _transform(self, rest: str, shape: tuple[int, ...]):
        """The array rewrite llama.cpp's qwen35moe needs for this tensor, or None."""
        Hk, Hv, dk, dv = self.n_k_heads, self.n_v_heads, self.k_dim, self.v_dim
        reorder = Hk != Hv and ".linear_attn." in rest
        qk = 2 * Hk * dk  # the q and k rows of the fused projection; V follows
        perm_d = v_head_order(Hk, Hv, dv) if reorder else None
        perm_1 = v_head_order(Hk, Hv, 1) if reorder else None
        if rest.endswith("norm.weight") and not rest.endswith("linear_attn.norm.weight"):
            return lambda a: a + 1.0  # x * (1 + w)
        if rest.endswith("linear_attn.A_log"):
            return lambda a: -np.exp(a[perm_1] if reorder else a)
        if not reorder:
            return (lambda a: a[:, 0, :]) if rest.endswith("conv1d.weight") else None
        if rest.endswith(("in_proj_qkv.weight", "conv1d.weight")):
            rows = np.concatenate([np.arange(qk), qk + perm_d])

            def qkv(a: np.ndarray) -> np.ndarray:
                a = a[:, 0, :] if a.ndim == 3 else a
                return np.ascontiguousarray(a[rows])

            return qkv
        if rest.endswith("in_proj_z.weight"):
            return lambda a: np.ascontiguousarray(a[perm_d])
        if rest.endswith(("in_proj_a.weight", "in_proj_b.weight", "linear_attn.dt_bias")):
            return lambda a: np.ascontiguousarray(a[perm_1])
        if rest.endswith("out_proj.weight"):
            return lambda a: np.ascontiguousarray(a[:, perm_d])
        return None

    def kv_cache_bytes(self, n_ctx: int) -> int:
        """Full-attention layers hold a KV cache per token; linear layers a fixed state (conv
        window and the delta rule's [dk, dv] matrix per value head, F32)."""
        n_kv = int(self.text.get("num_key_value_heads", self.n_head))
        n_full = self.layer_types.count(FULL)
        n_lin = self.n_layer - n_full
        conv = (self.conv_kernel - 1) * (2 * self.n_k_heads * self.k_dim + self.n_v_heads * self.v_dim)
        state = self.n_v_heads * self.k_dim * self.v_dim
        return n_full * n_ctx * 2 * n_kv * self.head_dim * 2 + n_lin * (conv + state) * 4

    def calibration(self, attn_implementation: str = "sdpa", device: str = "cpu") -> Qwen35MoeCalibration:
        return Qwen35MoeCalibration(self, attn_implementation, device)


class Qwen35MoeCalibration(Qwen3VLMoeCalibration):
    """Qwen3-VL-MoE's layer-by-layer runner with Qwen3.5's classes, hybrid layers and shared
    experts. Key tokens: a linear (Gated DeltaNet) layer has no softmax attention matrix, so it
    uses the selection of the nearest full-attention layer before it, and the layers before the
    first full-attention layer use that layer's (calibrate/runner.py looks ahead for them)."""

    MODULE = "qwen3_5_moe"
    CONFIG = "Qwen3_5MoeConfig"
    CLASSES = {
        "model": "Qwen3_5MoeModel",
        "rotary": "Qwen3_5MoeTextRotaryEmbedding",
        "vision": "Qwen3_5MoeVisionModel",
        "layer": "Qwen3_5MoeDecoderLayer",
        "norm": "Qwen3_5MoeRMSNorm",  # x * (1 + w), as the checkpoint stores w
    }

    def softmax_attention(self, il: int) -> bool:
        return self.conv.layer_types[il] == FULL

    def run_layer(self, layer, il: int, s: dict, grad: bool = False):
        import torch

        mask = s["attention_mask"] if self.softmax_attention(il) else None  # linear: no padding, no mask
        with torch.enable_grad() if grad else torch.no_grad():
            h = layer(
                s["hidden"].to(self.device)[None],
                attention_mask=mask,
                position_embeddings=s["position_embeddings"],
            )
        return h[0]

    def parts(self, layer) -> LayerParts:
        attn = layer.self_attn if layer.block_type == FULL else layer.linear_attn
        return LayerParts(attn, layer.mlp, layer.mlp.gate, layer.mlp.experts, layer.mlp.shared_expert)

    def attention_inputs(self, args: tuple, kwargs: dict):
        return kwargs["hidden_states"], kwargs.get("position_embeddings")  # linear layers get none

    def attention_qk(self, attn, x, position_embeddings):
        """q_proj holds [query; gate] per head: the query is each head's first half."""
        m = self.m
        q, _gate = attn.q_proj(x).view(*x.shape[:-1], -1, 2 * attn.head_dim).chunk(2, dim=-1)
        q = attn.q_norm(q).transpose(1, 2)
        k = attn.k_norm(attn.k_proj(x).view(*x.shape[:-1], -1, attn.head_dim)).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = m.apply_rotary_pos_emb(q, k, cos, sin)
        k = m.repeat_kv(k, attn.num_key_value_groups)
        return q[0], k[0], attn.scaling

    def attention_output(self, attn):
        return attn.o_proj if hasattr(attn, "o_proj") else attn.out_proj

    _LINEAR = (
        (MODEL_TENSOR.ATTN_QKV, "in_proj_qkv", "attn_in"),
        (MODEL_TENSOR.ATTN_GATE, "in_proj_z", "attn_in"),
        (MODEL_TENSOR.SSM_BETA, "in_proj_b", "attn_in"),
        (MODEL_TENSOR.SSM_ALPHA, "in_proj_a", "attn_in"),
        (MODEL_TENSOR.SSM_OUT, "out_proj", "o_in"),
    )

    def _attn_table(self, il: int):
        return self._ATTN if self.softmax_attention(il) else self._LINEAR

    def attention_names(self, il: int) -> list[tuple[str, str]]:
        return [(_name(t, il), kind) for t, _, kind in self._attn_table(il)]

    def o_in_order(self, il: int) -> np.ndarray | None:
        """ssm_out's columns are stored in ggml's V-head order: its input statistics must be too."""
        c = self.conv
        if self.softmax_attention(il) or c.n_k_heads == c.n_v_heads:
            return None
        return v_head_order(c.n_k_heads, c.n_v_heads, c.v_dim)

    def attention_matrices(self, attn, il: int):
        """The weights as the GGUF stores them (V-head order for the linear layers' rows and
        ssm_out's columns; only ssm_out's column order changes what input statistics mean)."""
        out = []
        for t, mod, kind in self._attn_table(il):
            w = getattr(attn, mod).weight
            order = self.o_in_order(il) if kind == "o_in" else None
            out.append((_name(t, il), w if order is None else w[:, order], kind))
        return out
