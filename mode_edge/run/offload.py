"""Expert offload: the routed-expert tensors of chosen MoE layers stay in host memory.

The same thing as llama.cpp's `--cpu-moe` / `--n-cpu-moe N`: tensor buffer-type overrides
(llama_model_params.tensor_buft_overrides) whose patterns send `blk.L.ffn_{gate,up,down}_exps`
to the CPU buffer type, everything else where --n-gpu-layers puts it. The patterns match by
regex search, so every expert group of a layer (`blk.L.ffn_up_exps.gK.weight`) follows its
layer. llama-cpp-python builds its model parameters itself and leaves that field unused, so
`placement()` hands it a parameter block with the overrides filled in for the one load, and
reads llama.cpp's own log of where each overridden tensor went.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
from dataclasses import dataclass, field

# llama.cpp's common/common.h LLM_FFN_EXPS_REGEX, per layer for --n-cpu-moe
EXPS = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"
_LOG = re.compile(r"tensor (?P<name>\S+) \(.*\) buffer type overridden to (?P<buft>\S+)")
_KEEP: list = []  # override tables stay alive with the models that were loaded with them


def patterns(cpu_moe: bool, n_cpu_moe: int | None) -> list[str]:
    if cpu_moe:
        return [EXPS]
    return [rf"blk\.{il}{EXPS}" for il in range(n_cpu_moe or 0)]


class _Override(ctypes.Structure):
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def _cpu_buffer_type() -> int:
    from mode_edge.quantize import lib_dir

    d = lib_dir()
    libs = sorted(d.glob("libggml-cpu.*")) + sorted(d.glob("ggml-cpu.*"))
    if not libs:
        raise RuntimeError(f"libggml-cpu not found in {d}")
    so = ctypes.CDLL(str(libs[0]))
    so.ggml_backend_cpu_buffer_type.restype = ctypes.c_void_p
    return so.ggml_backend_cpu_buffer_type()


@dataclass
class Placement:
    """Where llama.cpp put each overridden tensor (filled while the model loads)."""

    patterns: list[str]
    tensors: dict[str, str] = field(default_factory=dict)  # tensor name -> buffer type name

    def summary(self) -> str:
        if not self.patterns:
            return "no expert offload"
        layers = sorted({int(m.group(1)) for n in self.tensors if (m := re.match(r"blk\.(\d+)\.", n))})
        bufts = sorted(set(self.tensors.values()))
        return (
            f"expert offload: {len(self.tensors)} expert tensors of {len(layers)} MoE layers "
            f"({', '.join(map(str, layers))}) in host memory ({', '.join(bufts) or 'none'})"
        )


@contextlib.contextmanager
def placement(cpu_moe: bool = False, n_cpu_moe: int | None = None, verbose: bool = False):
    """Within this block, a llama_cpp.Llama loads with the expert overrides; yields a Placement."""
    import llama_cpp
    import llama_cpp._logger as lcp_logger
    import llama_cpp.llama_cpp as lib

    pats = patterns(cpu_moe, n_cpu_moe)
    result = Placement(pats)
    if not pats:
        yield result
        return
    buft = _cpu_buffer_type()
    table = (_Override * (len(pats) + 1))(*[_Override(p.encode(), buft) for p in pats], _Override(None, None))
    original = lib.llama_model_default_params

    def with_overrides():
        params = original()
        params.tensor_buft_overrides = ctypes.cast(table, ctypes.c_void_p).value
        return params

    @llama_cpp.llama_log_callback
    def capture(level, text, user_data):
        line = text.decode("utf-8", errors="replace")
        m = _LOG.search(line)
        if m:
            result.tensors[m["name"]] = m["buft"]
        lcp_logger.llama_log_callback(level, text, user_data)  # llama-cpp-python's own filter prints

    lib.llama_model_default_params = with_overrides
    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        yield result
    finally:
        lib.llama_model_default_params = original
        llama_cpp.llama_log_set(lcp_logger.llama_log_callback, ctypes.c_void_p(0))
        _KEEP.append(table)  # the model keeps a pointer to it in its parameters
