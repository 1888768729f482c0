"""The contract every architecture file implements (docs/adding-an-architecture.md).

An architecture has two faces:

- `Architecture` (export): validates config.json in __init__ (so a bad model fails before any
  file is opened), and describes the text GGUF and the vision projector (mmproj) GGUF as
  metadata callbacks plus lazy tensor lists (formats.tensors.TensorSpec).
- `Calibration` (measurement): runs the HF model layer by layer through transformers' own
  modules and says where the router, experts, attention and vision tower are, how the top-k
  is decided and which tokens are image tokens.

Stages (calibrate, allocate, gguf) only talk to these two classes; module names of an HF
model never appear outside mode_edge/arch/.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, NamedTuple

from gguf import GGUFWriter

from mode_edge.formats.checkpoint import Checkpoint
from mode_edge.formats.tensors import TensorSpec

if TYPE_CHECKING:
    import numpy as np
    import torch

    from mode_edge.formats.samples import Rendered, Sample


class Architecture(ABC):
    """Knows one architecture's GGUF names, hyper-parameters and weight layouts."""

    #: config.json `model_type` values this architecture handles (set by @register)
    model_types: tuple[str, ...] = ()
    #: config.json `architectures` class names (set by @register)
    hf_architectures: tuple[str, ...] = ()
    #: llama.cpp architecture name of the text model (general.architecture)
    arch: str = ""
    #: how the chat template places an image in the text (mtmd's media marker replaces it at run time)
    media_part: str = ""
    #: the token that ends an assistant turn
    end_of_turn: str = ""

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt

    @property
    def model_name(self) -> str:
        return self.ckpt.name

    # -- export ---------------------------------------------------------------------------

    @abstractmethod
    def add_text_metadata(self, w: GGUFWriter) -> None:
        """Every hyper-parameter the llama.cpp loader reads for `arch`, plus tokenizer and template."""

    @abstractmethod
    def text_tensors(self) -> list[TensorSpec]:
        """The text model's tensors in file order; routed experts as Role.EXPERT with load_expert."""

    @abstractmethod
    def add_mmproj_metadata(self, w: GGUFWriter) -> None:
        """The clip/mtmd keys of the vision projector file."""

    @abstractmethod
    def mmproj_tensors(self) -> list[TensorSpec]:
        """The vision tower and projector tensors."""

    @abstractmethod
    def kv_cache_bytes(self, n_ctx: int) -> int:
        """Bytes llama.cpp's default (F16) KV cache takes for n_ctx tokens (budget reserve)."""

    # -- calibration ----------------------------------------------------------------------

    @abstractmethod
    def calibration(self, attn_implementation: str = "sdpa", device: str = "cpu") -> Calibration:
        """The object that runs this architecture layer by layer for calibration."""


class LayerParts(NamedTuple):
    """The modules of one decoder layer that calibration hooks. In a dense (non-MoE) layer,
    `moe` is its FFN (what gate/up read is its first input) and router/experts are None."""

    attention: Any  # called with hidden_states= and position_embeddings= keywords
    moe: Any  # the MoE block; its first input is the routed tokens' hidden state
    router: Any  # its output goes to Calibration.routing
    experts: Any  # passed back to Calibration.expert_weights
    shared_experts: Any = None  # always-active experts, if the architecture has them


class Calibration(ABC):
    """Runs one architecture layer by layer from safetensors (only one layer resident)."""

    n_layers: int
    n_experts: int
    top_k: int
    hidden: int
    expert_ff: int
    tokenizer: Any
    image_token_id: int
    #: the routing weight scales the expert's input instead of its output (Llama 4)
    weights_scale_input: bool = False

    # -- rendering ------------------------------------------------------------------------

    @abstractmethod
    def render(self, sample: Sample, image) -> Rendered:
        """One sample through the model's chat template and image processor, as the runtime feeds it."""

    @abstractmethod
    def special_ids(self) -> set[int]:
        """Token ids that are markup (never a text query of MODE's key-token filter)."""

    def turn_start_id(self) -> int | None:
        """The token that opens a chat turn (queries stop at the next one), if the template has one."""
        return None

    def image_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """True where a token holds an image embedding (as the processor marks them); ids: a
        torch tensor or numpy array, the result is of the same kind."""
        return ids == self.image_token_id

    # -- running --------------------------------------------------------------------------

    @abstractmethod
    def embed(self, r: Rendered) -> dict:
        """Initial hidden state ("hidden": [T, H]) and what every layer needs for one sample."""

    @abstractmethod
    def load_layer(self, il: int):
        """Decoder layer il with its weights, on the calibration device."""

    @abstractmethod
    def run_layer(self, layer, il: int, s: dict, grad: bool = False) -> torch.Tensor:
        """One sample through one layer: [T, H]. grad: keep the graph."""

    @abstractmethod
    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits [T, V] from final hidden states [T, H]."""

    @abstractmethod
    def routing(self, router_output) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The router's real decision: (expert ids [T, k], weights [T, k] as the block scales the
        outputs, the router's probabilities of those experts before any renormalisation [T, k])."""

    # -- where things are -----------------------------------------------------------------

    @abstractmethod
    def parts(self, layer) -> LayerParts: ...

    def attention_inputs(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, Any]:
        """(hidden states, position embeddings) from the attention module's call."""
        return kwargs["hidden_states"], kwargs["position_embeddings"]

    @abstractmethod
    def attention_qk(
        self, attn, x: torch.Tensor, position_embeddings
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Post-norm, post-RoPE queries [heads, T, d], keys [heads, T, d] (GQA repeated), scale."""

    def softmax_attention(self, il: int) -> bool:
        """Whether layer il computes softmax attention, which the key-token filter scores. A layer
        that does not (linear attention) takes the key tokens of the nearest softmax layer before
        it; layers before the first softmax layer take that layer's (calibrate/runner.py)."""
        return True

    def attention_chunk(self, il: int) -> int | None:
        """Chunked attention (Llama 4's RoPE layers): a query sees only the keys of its own chunk
        of this many positions; the key-token filter scores what the layer computes. None: the
        whole causal prefix."""
        return None

    def o_in_order(self, il: int) -> np.ndarray | None:
        """The column order the GGUF stores the attention output matrix in, where it is not the
        module's (its input statistics are permuted to match); None: the module's."""
        return None

    @abstractmethod
    def attention_output(self, attn):
        """The module whose input is the attention's mixed values (o_proj)."""

    @abstractmethod
    def attention_names(self, il: int) -> list[tuple[str, str]]:
        """(GGUF name, input kind: attn_in or o_in) of the layer's attention matrices."""

    @abstractmethod
    def attention_matrices(self, attn, il: int) -> list[tuple[str, torch.Tensor, str]]:
        """(GGUF name, weight [out, in], input kind) of the layer's attention matrices."""

    @abstractmethod
    def expert_weights(self, experts, e: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
        """Expert e's (gate [I, H], up [I, H], down [H, I]) and activation."""

    @abstractmethod
    def gguf_expert_names(self, il: int) -> tuple[str, str, str]:
        """GGUF names of layer il's gate, up and down expert tensors."""

    def is_moe(self, il: int) -> bool:
        """Whether decoder layer il has routed experts; a dense layer's FFN is one ILP item per
        matrix (dense_weights, dense_names) like a shared expert."""
        return True

    def dense_weights(self, mlp) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        """A dense layer's FFN (LayerParts.moe there): (gate [I, H], up [I, H], down [H, I]) and
        activation."""
        raise NotImplementedError(f"{type(self).__name__} has no dense layers")

    def dense_names(self, il: int) -> tuple[str, str, str]:
        """GGUF names of dense layer il's gate, up and down tensors."""
        raise NotImplementedError(f"{type(self).__name__} has no dense layers")

    def shared_expert_weights(self, shared) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        """The shared expert's (gate [Is, H], up [Is, H], down [H, Is]) and activation (for an
        architecture whose LayerParts.shared_experts is not None)."""
        raise NotImplementedError(f"{type(self).__name__} has no shared experts")

    def shared_expert_names(self, il: int) -> tuple[str, str, str]:
        """GGUF names of layer il's shared gate, up and down tensors."""
        raise NotImplementedError(f"{type(self).__name__} has no shared experts")
