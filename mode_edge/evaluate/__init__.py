"""`mode-edge eval`: the synthetic test split through the llama.cpp runtime (text GGUF + mmproj).

Exact-match accuracy per task family under greedy decoding, and the mean KL divergence of
next-token distributions against a reference GGUF on the answer positions (teacher-forced).
"""

from mode_edge.evaluate.runner import EvalResult, evaluate, load_examples, resolve_model

__all__ = ["EvalResult", "evaluate", "load_examples", "resolve_model"]
