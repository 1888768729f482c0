"""Facts about llama.cpp's storage types that every stage shares.

Sizes come from gguf-py's GGML_QUANT_SIZES. The candidate ladder is docs/design.md's; a tensor
whose rows do not fill a type's block falls back the way llama-quantize falls back
(llama-quant.cpp, tensor_type_fallback), so our files and llama.cpp's agree on types.
"""

from __future__ import annotations

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from mode_edge.errors import UserError

T = GGMLQuantizationType

# docs/design.md's candidate ladder, lowest bits first.
LADDER: tuple[GGMLQuantizationType, ...] = (
    T.IQ2_XXS,
    T.IQ2_XS,
    T.IQ2_S,
    T.Q2_K,
    T.IQ3_XXS,
    T.Q3_K,
    T.IQ4_XS,
    T.Q4_K,
    T.Q5_K,
    T.Q6_K,
    T.Q8_0,
)

# Types a user may name besides the ladder (32-block fallbacks and float types).
EXTRA_TYPES: tuple[GGMLQuantizationType, ...] = (
    T.Q4_0,
    T.Q4_1,
    T.Q5_0,
    T.Q5_1,
    T.IQ4_NL,
    T.IQ3_S,
    T.F16,
    T.BF16,
    T.F32,
)

# Where llama-quantize sends a 256-block type whose rows are not a multiple of 256.
_FALLBACK = {
    T.IQ1_S: T.IQ4_NL,
    T.IQ1_M: T.IQ4_NL,
    T.IQ2_XXS: T.IQ4_NL,
    T.IQ2_XS: T.IQ4_NL,
    T.IQ2_S: T.IQ4_NL,
    T.IQ3_XXS: T.IQ4_NL,
    T.IQ3_S: T.IQ4_NL,
    T.IQ4_XS: T.IQ4_NL,
    T.Q2_K: T.Q4_0,
    T.Q3_K: T.Q4_0,
    T.Q4_K: T.Q5_0,
    T.Q5_K: T.Q5_1,
    T.Q6_K: T.Q8_0,
}


def block_size(t: GGMLQuantizationType) -> int:
    return GGML_QUANT_SIZES[t][0]


def bits_per_weight(t: GGMLQuantizationType) -> float:
    block, size = GGML_QUANT_SIZES[t]
    return 8.0 * size / block


def row_bytes(t: GGMLQuantizationType, n_per_row: int) -> int:
    block, size = GGML_QUANT_SIZES[t]
    if n_per_row % block:
        raise ValueError(f"{t.name} needs rows that are a multiple of {block}, got {n_per_row}")
    return n_per_row // block * size


def fits(t: GGMLQuantizationType, n_per_row: int) -> bool:
    return n_per_row % block_size(t) == 0


def fallback(t: GGMLQuantizationType, n_per_row: int) -> GGMLQuantizationType:
    """The type llama.cpp stores when `t` does not fit rows of length n_per_row."""
    if fits(t, n_per_row):
        return t
    t2 = _FALLBACK.get(t, t)
    return t2 if fits(t2, n_per_row) else T.F16


def parse_type(name: str) -> GGMLQuantizationType:
    if not isinstance(name, str):
        raise UserError(f"type {name!r} is not a type name", "write types as names such as Q4_K")
    key = name.strip().upper()
    try:
        t = T[key]
    except KeyError:
        valid = ", ".join(x.name for x in LADDER + EXTRA_TYPES)
        raise UserError(f"unknown type {name!r}", f"choose one of {valid}") from None
    return t


def is_quantized(t: GGMLQuantizationType) -> bool:
    """Block types (Q*, IQ*); float and integer types store one value per element."""
    return block_size(t) > 1
