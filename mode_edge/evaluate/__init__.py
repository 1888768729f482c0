"""`mode-edge eval`: a task split through the llama.cpp runtime (text GGUF + mmproj).

Exact-match accuracy per task family under greedy decoding, and the mean KL divergence of
next-token distributions against a reference GGUF on the answer positions (teacher-forced).
The synthetic tasks of the demo model (tasks.py) are the built-in splits.
"""

from mode_edge._lazy import lazy_api

API = {
    "EvalResult": "runner",
    "evaluate": "runner",
    "load_examples": "runner",
    "resolve_model": "runner",
}
__all__ = sorted(API)
__getattr__, __dir__ = lazy_api(__name__, API)
