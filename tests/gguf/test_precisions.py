"""--precision f16/bf16/q8_0: the types llama.cpp would choose, its own bytes, and sane logits."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader


@pytest.fixture(scope="module")
def precision_files(tiny_models, tmp_path_factory):
    from mode_edge.gguf.export import export_model

    out = tmp_path_factory.mktemp("precisions")
    return {
        p: export_model(tiny_models["transformers"], out, p).text_path for p in ("f32", "f16", "bf16", "q8_0")
    }


def _types(path):
    return {t.name: t.tensor_type for t in GGUFReader(path).tensors}


@pytest.mark.parametrize(
    "precision,matrix_type", [("f32", T.F32), ("f16", T.F16), ("bf16", T.BF16), ("q8_0", T.Q8_0)]
)
def test_storage_types(precision_files, precision, matrix_type):
    for name, ttype in _types(precision_files[precision]).items():
        if name.endswith("norm.weight") or ".ffn_gate_inp." in name:
            assert ttype == T.F32, name
        else:
            assert ttype == matrix_type, name


def test_q8_0_bytes_equal_llama_cpp_quantizer(converted, precision_files, tmp_path):
    """Our Q8_0 (gguf-py's encoder) vs llama.cpp quantizing our F32 file itself."""
    import llama_cpp

    ref_path = tmp_path / "ref-q8_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.pure = True
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(
        str(converted["transformers"][0]).encode(), str(ref_path).encode(), params
    )
    assert rc == 0
    ours = {t.name: t for t in GGUFReader(precision_files["q8_0"]).tensors}
    ref = {t.name: t for t in GGUFReader(ref_path).tensors}
    assert ours.keys() == ref.keys()
    compared = 0
    for name, r in ref.items():
        o = ours[name]
        if r.tensor_type == T.Q8_0 and o.tensor_type == T.Q8_0:
            assert np.array_equal(np.asarray(o.data).view(np.uint8), np.asarray(r.data).view(np.uint8)), name
            compared += 1
    assert compared >= 3 * 3 + 4  # every expert tensor and the attention matrices at least


# Per-token max error, median over tokens: in a random tiny MoE a near-tie in the router can
# flip one token's expert choice under bf16 noise (seen: 1 of 19 tokens), which moves that
# token's logits a lot; the median measures the storage error itself.
@pytest.mark.runtime
@pytest.mark.parametrize("precision,rel_tol", [("f16", 0.005), ("bf16", 0.02), ("q8_0", 0.02)])
def test_reduced_precision_logits_close_to_f32(converted, precision_files, precision, rel_tol):
    import llama_cpp

    ids = list(range(5, 60, 3))

    def logits(path):
        llm = llama_cpp.Llama(str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=2)
        try:
            llm.eval(ids)
            return np.asarray(llm.scores[: len(ids)])
        finally:
            llm.close()

    ref = logits(converted["transformers"][0])
    got = logits(precision_files[precision])
    per_token = np.abs(ref - got).max(axis=1)
    assert np.median(per_token) <= rel_tol * float(ref.max() - ref.min())
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.9


def test_inspect_json_agrees_with_gguf_reader(precision_files):
    import json

    path = precision_files["q8_0"]
    proc = subprocess.run(
        [sys.executable, "-m", "mode_edge.cli", "inspect", str(path), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(proc.stdout)
    reader = GGUFReader(path)
    assert info["architecture"] == "qwen3vlmoe"
    assert info["tensor_count"] == len(reader.tensors)
    assert info["file_bytes"] == path.stat().st_size
    for tname, v in info["types"].items():
        assert v["tensors"] == sum(1 for t in reader.tensors if t.tensor_type.name == tname)
