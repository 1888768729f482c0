"""Uniform storage precisions (`convert --precision`) as plans, and GGUF file-type labels."""

from __future__ import annotations

from collections import Counter

from gguf import GGMLQuantizationType, LlamaFileType

from mode_edge.formats.plan import QuantPlan
from mode_edge.gguf.writer import OutTensor

T = GGMLQuantizationType

PRECISIONS: dict[str, GGMLQuantizationType] = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0}

# general.file_type for a file whose bytes are mostly of one type (llama.cpp only displays it)
_FILE_TYPE = {
    T.F32: LlamaFileType.ALL_F32,
    T.F16: LlamaFileType.MOSTLY_F16,
    T.BF16: LlamaFileType.MOSTLY_BF16,
    T.Q8_0: LlamaFileType.MOSTLY_Q8_0,
    T.Q4_0: LlamaFileType.MOSTLY_Q4_0,
    T.Q4_1: LlamaFileType.MOSTLY_Q4_1,
    T.Q5_0: LlamaFileType.MOSTLY_Q5_0,
    T.Q5_1: LlamaFileType.MOSTLY_Q5_1,
    T.Q2_K: LlamaFileType.MOSTLY_Q2_K,
    T.Q3_K: LlamaFileType.MOSTLY_Q3_K_M,
    T.Q4_K: LlamaFileType.MOSTLY_Q4_K_M,
    T.Q5_K: LlamaFileType.MOSTLY_Q5_K_M,
    T.Q6_K: LlamaFileType.MOSTLY_Q6_K,
    T.IQ2_XXS: LlamaFileType.MOSTLY_IQ2_XXS,
    T.IQ2_XS: LlamaFileType.MOSTLY_IQ2_XS,
    T.IQ2_S: LlamaFileType.MOSTLY_IQ2_S,
    T.IQ3_XXS: LlamaFileType.MOSTLY_IQ3_XXS,
    T.IQ3_S: LlamaFileType.MOSTLY_IQ3_S,
    T.IQ4_NL: LlamaFileType.MOSTLY_IQ4_NL,
    T.IQ4_XS: LlamaFileType.MOSTLY_IQ4_XS,
}


def precision_plan(precision: str) -> QuantPlan:
    return QuantPlan(method=f"precision:{precision}", default=PRECISIONS[precision])


def file_type(tensors: list[OutTensor]) -> LlamaFileType:
    by_bytes: Counter[GGMLQuantizationType] = Counter()
    for t in tensors:
        if t.ggml_type in _FILE_TYPE and len(t.shape) > 1:
            by_bytes[t.ggml_type] += t.nbytes
    if not by_bytes:
        return LlamaFileType.ALL_F32
    return _FILE_TYPE[by_bytes.most_common(1)[0][0]]
