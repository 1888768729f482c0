"""ggml's own quantizer through ctypes on llama-cpp-python's libggml."""

from mode_edge._lazy import lazy_api

API = {
    "lib_dir": "ggml_lib",
    "quantize_rows": "ggml_lib",
    "requires_imatrix": "ggml_lib",
    "default_threads": "encode",
    "encode_experts": "encode",
    "encode_rows_parallel": "encode",
}
__all__ = sorted(API)
__getattr__, __dir__ = lazy_api(__name__, API)
