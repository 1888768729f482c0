"""mode-edge's patched llama.cpp: building it from the patch series, and what it supports."""

from mode_edge._lazy import lazy_api

API = {
    "CPU_SKIP": "build",
    "GROUPS": "build",
    "build_runtime": "build",
    "capabilities": "build",
    "patch_series": "build",
}
__all__ = sorted(API)
__getattr__, __dir__ = lazy_api(__name__, API)
