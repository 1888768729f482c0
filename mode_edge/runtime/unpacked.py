"""Load weights into plain CPU memory instead of ggml's repacked layouts (use_extra_bufts off).

llama-cpp-python's Llama has no argument for it, so this wraps the default model parameters it
starts from. Tests and benchmarks use it to cover both the plain-memory kernels of ggml-cpu.c
(tiled, vec_dot) and, without it, the repacked ones; call it before creating a Llama.
"""

from __future__ import annotations


def load_weights_unpacked() -> None:
    import llama_cpp.llama_cpp as low

    default = low.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params
