"""Load weights into plain CPU memory instead of ggml's repacked layouts (use_extra_bufts off).

llama-cpp-python's Llama has no argument for it, so this wraps the default model parameters it
starts from. Tests and benchmarks use it to reach the kernels of ggml-cpu.c that the expert-group
patch changes (repacked weights run repack.cpp's instead); call it before creating a Llama.
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
