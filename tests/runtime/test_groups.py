"""Files with expert groups in mode-edge's runtime (vendor/patches/), end to end through
llama-cpp-python: logits against stock files written by gguf-py, the fallback path against the
skip path, and malformed files refused at load."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType

from mode_edge.formats.groups import GROUPS_KEY
from mode_edge.formats.plan import QuantPlan
from mode_edge.gguf.export import export_model
from mode_edge.gguf.inspect import field_value
from mode_edge.runtime.build import GROUPS, capabilities
from tests.gguf_rewrite import degroup_to_f32, regroup

pytestmark = pytest.mark.runtime  # loads models / runs ops of the patched llama.cpp

T = GGMLQuantizationType
PROMPT = "<|im_start|>user\nWhat is 12 + 30? Count the circles.<|im_end|>\n<|im_start|>assistant\n"

LOGITS_SCRIPT = """
import json, sys
import numpy as np
import llama_cpp
path, prompt, out, steps, repack = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "steps", sys.argv[5] == "1"
if not repack:  # weights in plain CPU memory: the kernels of ggml-cpu.c, not repack.cpp's
    from mode_edge.runtime.unpacked import load_weights_unpacked
    load_weights_unpacked()
llm = llama_cpp.Llama(path, n_ctx=128, n_threads=2, verbose=True, logits_all=True,
                      type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
toks = llm.tokenize(prompt.encode(), special=True)
if steps:  # one token per batch, as decoding runs
    for t in toks:
        llm.eval([t])
else:
    llm.eval(toks)
np.save(out, np.asarray(llm.scores[: llm.n_tokens], dtype=np.float32))
"""
ONE_OP = "all expert groups in one mul_mat_id"


def logits(path, tmp_path, env=None, steps=False, repack=True, log=None) -> np.ndarray:
    """Logits of every prompt position, computed in a fresh process (the runtime reads
    MODE_EDGE_GROUPS_FALLBACK once per process). steps: one token per batch, as decoding runs;
    repack=False keeps weights out of ggml's repacked layouts."""
    out = tmp_path / f"logits-{path.stem}-{len(os.listdir(tmp_path))}.npy"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            LOGITS_SCRIPT,
            str(path),
            PROMPT,
            str(out),
            "steps" if steps else "batch",
            "1" if repack else "0",
        ],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    if log is not None:
        log.append(proc.stderr)
    return np.load(out)


@pytest.fixture(scope="module", autouse=True)
def patched_runtime():
    assert capabilities() & GROUPS, (
        "the installed llama.cpp cannot load expert groups: run `mode-edge runtime build`"
    )


@pytest.fixture(scope="module")
def stock(tiny_models, tmp_path_factory):
    """The tiny model as stock files: F32, and Q4_K experts (everything else F32)."""
    model = tiny_models["transformers"]
    out = {}
    for t in (T.F32, T.Q4_K):
        plan = QuantPlan(method=f"ref-{t.name}", default=T.F32)
        from mode_edge.arch import architecture_for
        from mode_edge.formats.checkpoint import Checkpoint
        from mode_edge.formats.tensors import Role

        for s in architecture_for(Checkpoint(model)).text_tensors():
            if s.role == Role.EXPERT:
                plan.tensors[s.name] = t
        out[t.name] = export_model(
            model, tmp_path_factory.mktemp(f"stock-{t.name}"), None, plan=plan, label=t.name.lower()
        ).text_path
    return out


@pytest.mark.parametrize("n_groups", [3, 8])  # one all-groups op, or two chained in place (6 + 2)
@pytest.mark.parametrize("repack", [True, False], ids=["repacked", "plain"])
@pytest.mark.parametrize("steps", [False, True], ids=["batch", "token-by-token"])
def test_same_type_groups_give_the_stock_logits(stock, tmp_path, n_groups, repack, steps):
    """Experts split into interleaved groups, bytes unchanged. The all-groups op runs them (the
    log says so) and gives each expert the kernel the stock op gives it (ggml's repacked gemv
    when the weights were repacked, else tiled or vec_dot), so the logits are the stock file's bit
    for bit."""
    grouped = tmp_path / "grouped-q4k.gguf"
    regroup(stock["Q4_K"], grouped, n_groups=n_groups)
    log: list[str] = []
    ref = logits(stock["Q4_K"], tmp_path, steps=steps, repack=repack, log=log)
    got = logits(grouped, tmp_path, steps=steps, repack=repack, log=log)
    assert ("CPU_REPACK model buffer" in log[0]) == repack  # the kernels the test means to cover
    assert ONE_OP in log[1]
    assert got.shape == ref.shape and np.isfinite(got).all()
    assert np.array_equal(got, ref)


def _mixed_types(n_expert: int, shift: int) -> list[T]:
    ladder = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q8_0]
    return [ladder[(e * 3 + shift) % 4] for e in range(n_expert)]


@pytest.fixture(scope="module")
def mixed(stock, tmp_path_factory):
    """Experts of mixed types (Q2_K/Q3_K/Q4_K/Q8_0, interleaved; gate, up and down grouped
    differently) requantized from the F32 file, and the same weights dequantized into stock F32."""
    from gguf import GGUFReader

    d = tmp_path_factory.mktemp("mixed")
    r = GGUFReader(stock["F32"])
    names = [t.name for t in r.tensors if "_exps." in t.name]
    E = next(int(t.shape[-1]) for t in r.tensors if "_exps." in t.name)  # ggml order: ne[2] = experts
    types = {n: _mixed_types(E, i) for i, n in enumerate(names)}
    groups = {n: [list(dict.fromkeys(types[n])).index(t) for t in types[n]] for n in names}
    grouped = d / "mixed.gguf"
    regroup(stock["F32"], grouped, groups=groups, types=types)
    ref = d / "mixed-dequantized-f32.gguf"
    degroup_to_f32(grouped, ref)

    # the same experts and types in twice as many groups, listed in another order
    def resplit_of(g: list[int]) -> list[int]:
        n = len(set(g))
        rank = [sum(1 for f in range(e) if g[f] == g[e]) for e in range(len(g))]  # place within its group
        return [2 * (n - 1 - g[e]) + rank[e] % 2 for e in range(len(g))]

    split = {n: resplit_of(g) for n, g in groups.items()}
    resplit = d / "mixed-resplit.gguf"
    regroup(stock["F32"], resplit, groups=split, types=types)
    return grouped, ref, resplit


def test_mixed_types_match_the_dequantized_stock_file(mixed, tmp_path):
    grouped, ref, _ = mixed
    a, b = logits(ref, tmp_path), logits(grouped, tmp_path)
    span = float(a.max() - a.min())
    diff = np.abs(a - b)
    # identical weights; but the quantized kernels round activations to 8 bits and F32 ones do
    # not, and in a random tiny model that noise can flip a top-k routing choice at a position
    # (an all-Q2_K control shows the same 0.6-0.9% of the logit range elsewhere)
    assert (diff.max(-1) <= 0.02 * span).mean() >= 0.9
    assert diff.mean() <= 0.005 * span
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.85


def test_decoding_mixed_types_matches_the_dequantized_stock_file(mixed, tmp_path):
    """Token by token (four types in one op, src1 converted once per type) against the F32 file
    with the same weights; and against the masked fallback, token by token too."""
    grouped, ref, _ = mixed
    log: list[str] = []
    a = logits(ref, tmp_path, steps=True)
    b = logits(grouped, tmp_path, steps=True, log=log)
    assert ONE_OP in log[0]
    span = float(a.max() - a.min())
    diff = np.abs(a - b)
    assert (diff.max(-1) <= 0.02 * span).mean() >= 0.9  # as in the batch test above
    assert diff.mean() <= 0.005 * span
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.85
    fallback = logits(grouped, tmp_path, steps=True, env={"MODE_EDGE_GROUPS_FALLBACK": "1"})
    assert np.abs(b - fallback).max() <= 1e-5 * span  # as in test_fallback_path_equals_skip_path


def test_regrouping_mixed_types_is_exact(mixed, tmp_path):
    """Per-expert types fixed, grouping changed (8 groups: two chained ops, other order,
    interleaved): the same logits up to float rounding (a misplaced expert would move them by
    O(1)), so experts are found wherever their group puts them."""
    grouped, _, resplit = mixed
    a, b = logits(grouped, tmp_path), logits(resplit, tmp_path)
    assert np.abs(a - b).max() <= 1e-5 * float(a.max() - a.min())


def test_fallback_path_equals_skip_path(mixed, tmp_path):
    grouped, _, _ = mixed
    skip = logits(grouped, tmp_path)
    fallback = logits(grouped, tmp_path, env={"MODE_EDGE_GROUPS_FALLBACK": "1"})
    assert np.isfinite(fallback).all()
    # same products, but clamped ids give some experts more rows, so the CPU may pick another
    # kernel or chunking for them (a different summation order): equal up to float rounding
    assert np.abs(skip - fallback).max() <= 1e-5 * float(skip.max() - skip.min())


LOAD_SCRIPT = """
import sys, llama_cpp
try:
    llama_cpp.Llama(sys.argv[1], n_ctx=64, verbose=True)
except Exception as e:
    print("refused:", e)
    sys.exit(3)
"""


REFUSED = {
    "repeated": "is already in group",
    "out_of_range": "is outside 0..",
    "missing": "is in no group",
    "wrong_shape": "has shape",
    "version": "layout version 2 is not supported",
    "key_type": "mode_edge.expert_groups is a str, expected UINT32 1",
    # found by benchmarks/fuzz_loader.py: an I32 group weight crashed in mul_mat_id (no vec_dot);
    # the others loaded, or failed with the generic tensor-count or missing-tensor errors
    "int_weight": "has type i32, which no kernel computes with",
    "whole_too": "is stored both whole and as expert groups",
    "no_key": "is stored as expert groups but the file has no mode_edge.expert_groups key",
    "gap": "has 4 group tensors, expected 2",
    "orphan_ids": "has 5 group tensors, expected 4",
    "no_g0": "has expert-group tensors but no blk.0.ffn_up_exps.g0.weight",
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_malformed_grouped_files_are_refused_at_load(stock, tmp_path, case):
    from gguf import GGUFReader, GGUFWriter

    good = tmp_path / "good.gguf"
    regroup(stock["Q4_K"], good, n_groups=2)
    bad = tmp_path / f"{case}.gguf"
    r = GGUFReader(good)
    w = GGUFWriter(bad, r.fields["general.architecture"].contents())
    from tests.gguf_rewrite import _copy_metadata

    _copy_metadata(r, w, drop={GROUPS_KEY} if case in ("version", "key_type", "no_key") else set())
    if case == "version":
        w.add_uint32(GROUPS_KEY, 2)
    elif case == "key_type":
        w.add_string(GROUPS_KEY, "1")
    target = "blk.0.ffn_up_exps.g1"
    renamed = {
        "gap": {"blk.0.ffn_up_exps.g1": "blk.0.ffn_up_exps.g2"},
        "no_g0": {"blk.0.ffn_up_exps.g0": "blk.0.ffn_up_exps.g2"},
    }
    for t in r.tensors:
        data = np.ascontiguousarray(t.data)
        name = t.name
        for old, new in renamed.get(case, {}).items():
            name = name.replace(old + ".", new + ".")
        if case == "int_weight" and t.name == target + ".weight":
            shape = [int(x) for x in reversed(t.shape.tolist())]
            w.add_tensor(name, np.zeros(shape, dtype=np.int32), raw_dtype=GGMLQuantizationType.I32)
            continue
        if case == "whole_too" and t.name == target + ".weight":
            n_in, n_out, _ = (int(x) for x in t.shape)
            n_expert = int(field_value(r, f"{field_value(r, 'general.architecture')}.expert_count"))
            whole = np.zeros((n_expert, n_out, n_in), dtype=np.float32)
            w.add_tensor("blk.0.ffn_up_exps.weight", whole, raw_dtype=GGMLQuantizationType.F32)
        if case == "orphan_ids" and t.name == target + ".ids":
            w.add_tensor("blk.0.ffn_up_exps.g2.ids", np.asarray(t.data, dtype=np.int32)[:1].copy())
        if t.name == target + ".ids":
            ids = data.astype(np.int32).copy()
            if case == "repeated":
                ids[0] = 0  # expert 0 is already in group 0
            elif case == "out_of_range":
                ids[-1] = 10_000
            elif case == "wrong_shape":
                ids = np.concatenate([ids, ids[:1]])
            data = ids
        if case == "missing" and t.name.startswith(target):
            continue  # a whole group gone: its experts are in none
        w.add_tensor(name, data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(bad)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 3, (proc.returncode, proc.stderr[-1500:])  # an exception, not a crash
    assert REFUSED[case] in proc.stderr, proc.stderr[-1500:]
    # the type check is the loader's for every tensor float ops read, not only expert groups
    assert case == "int_weight" or "mode-edge expert groups" in proc.stderr, proc.stderr[-1500:]
