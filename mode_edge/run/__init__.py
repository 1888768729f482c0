"""Running converted files in llama.cpp: chat, the HTTP server, mtmd images, expert offload."""

from mode_edge._lazy import lazy_api

API = {
    "Chat": "chat",
    "check_image": "chat",
    "check_runtime": "chat",
    "default_ctx": "chat",
    "Limits": "serve",
    "build_app": "serve",
    "MtmdSession": "mtmd",
    "quiet_mtmd_logs": "mtmd",
    "placement": "offload",
}
__all__ = sorted(API)
__getattr__, __dir__ = lazy_api(__name__, API)
