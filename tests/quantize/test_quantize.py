"""The quantization engine against llama.cpp's own quantizer and gguf-py's dequantizer."""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, dequantize

from mode_edge.errors import UserError
from mode_edge.formats.groups import GROUPS_KEY, read_groups
from mode_edge.formats.imatrix import Imatrix, ImatrixEntry
from mode_edge.formats.plan import QuantPlan
from mode_edge.gguf.export import export_model
from mode_edge.quantize.ggml_lib import quantize_rows

PURE_TYPES = [T.Q4_K, T.Q3_K, T.Q2_K, T.IQ4_XS, T.Q8_0]


@pytest.fixture(scope="module")
def f32_file(converted):
    return converted["transformers"][0]


@pytest.fixture(scope="module")
def model_dir(tiny_models):
    return tiny_models["transformers"]


@pytest.fixture(scope="module")
def imatrix(f32_file, tmp_path_factory) -> Imatrix:
    """A random importance matrix for every quantizable weight, some experts with no tokens,
    written to and read back from the GGUF imatrix format."""
    rng = np.random.default_rng(7)
    entries = {}
    for t in GGUFReader(f32_file).tensors:
        if len(t.shape) < 2 or "norm" in t.name or "ffn_gate_inp" in t.name:
            continue
        n_in = int(t.shape[0])
        n_exp = int(t.shape[2]) if len(t.shape) == 3 else 1
        counts = rng.integers(1, 500, n_exp).astype(np.float32)
        if n_exp > 1:
            counts[1] = 0  # an expert the calibration never reached
        sums = (rng.gamma(0.5, 2.0, (n_exp, n_in)) * counts[:, None]).astype(np.float32)
        entries[t.name] = ImatrixEntry(sums, counts)
    path = tmp_path_factory.mktemp("imatrix") / "imatrix.gguf"
    Imatrix(entries, ["synthetic"], 3, 512).save(path)
    return Imatrix.load(path)


def _llama_quantize(src, dst, ftype: int, pure: bool, imatrix: Imatrix | None = None) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.pure = pure
    params.nthread = 2
    keep = []
    if imatrix is not None:
        arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix.entries) + 1))()
        for i, (name, e) in enumerate(sorted(imatrix.entries.items())):
            data = np.ascontiguousarray(e.importance().reshape(-1), dtype=np.float32)
            keep.append(data)
            arr[i].name = name.encode()
            arr[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = data.size
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(arr)
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) == 0


def _tensor_bytes(path):
    return {
        t.name: (t.tensor_type, np.asarray(t.data).view(np.uint8).reshape(-1))
        for t in GGUFReader(path).tensors
    }


def _ftype(t: T) -> int:
    import llama_cpp

    name = {T.Q3_K: "Q3_K_M", T.Q4_K: "Q4_K_M"}.get(t, t.name)  # pure ignores the mix
    return getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}")


@pytest.mark.parametrize("use_imatrix", [False, True], ids=["no-imatrix", "imatrix"])
@pytest.mark.parametrize("qtype", PURE_TYPES, ids=lambda t: t.name)
def test_pure_files_byte_identical_to_llama_quantize(
    qtype, use_imatrix, f32_file, model_dir, imatrix, tmp_path
):
    im = imatrix if use_imatrix else None
    ref_path = tmp_path / "ref.gguf"
    _llama_quantize(f32_file, ref_path, _ftype(qtype), pure=True, imatrix=im)
    ours = export_model(
        model_dir, tmp_path / "ours", None, plan=QuantPlan(default=qtype), label="x", imatrix=im, n_threads=2
    ).text_path
    ref, got = _tensor_bytes(ref_path), _tensor_bytes(ours)
    assert ref.keys() == got.keys()
    n_quant = 0
    for name, (rtype, rbytes) in ref.items():
        gtype, gbytes = got[name]
        assert gtype == rtype, f"{name}: {gtype.name} vs llama.cpp's {rtype.name}"
        assert np.array_equal(gbytes, rbytes), f"{name} ({rtype.name}) differs from llama.cpp's bytes"
        n_quant += rtype == qtype
    assert n_quant >= 3 * 3 + 3 * 4 + 2  # experts, attention, embedding and output all took the type


@pytest.mark.parametrize("preset", ["Q4_K_M", "Q3_K_S"])
def test_preset_plans_match_llama_quantize(preset, f32_file, model_dir, tmp_path):
    """Our preset plan (from llama.cpp's dry run) writes the same types and bytes as the real run."""
    import llama_cpp

    from mode_edge.cli.convert import type_plan as _type_plan

    ref_path = tmp_path / "ref.gguf"
    _llama_quantize(f32_file, ref_path, getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{preset}"), pure=False)
    plan, label = _type_plan(model_dir, preset, 2)
    ours = export_model(model_dir, tmp_path / "ours", None, plan=plan, label=label, n_threads=2).text_path
    ref, got = _tensor_bytes(ref_path), _tensor_bytes(ours)
    mixed = {t for t, _ in ref.values()}
    assert len(mixed - {T.F32}) >= 2, "the preset should mix types"
    for name, (rtype, rbytes) in ref.items():
        assert got[name][0] == rtype, name
        assert np.array_equal(got[name][1], rbytes), name


MIXED = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q8_0, T.Q4_K, T.Q2_K, T.Q8_0, T.Q3_K]  # interleaved groups


@pytest.fixture(scope="module")
def mixed_file(model_dir, imatrix, tmp_path_factory):
    plan = QuantPlan(
        method="test-mixed",
        default=T.Q8_0,
        tensors={
            "blk.0.ffn_gate_exps.weight": MIXED,
            "blk.0.ffn_up_exps.weight": MIXED[::-1],
            "blk.1.ffn_down_exps.weight": [T.IQ2_XS] * 4 + [T.Q4_K] * 4,
            "blk.2.ffn_up_exps.weight": [T.Q6_K] * 8,  # one type: stays in stock form
        },
    )
    path = tmp_path_factory.mktemp("mixed") / "plan.json"
    plan.save(path)
    out = tmp_path_factory.mktemp("mixed-out")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mode_edge.cli",
            "pack",
            str(model_dir),
            "--plan",
            str(path),
            "--imatrix",
            str(imatrix_path(imatrix, out)),
            "-o",
            str(out),
            "-q",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return next(p for p in out.glob("*.gguf") if not p.name.startswith("mmproj"))


def imatrix_path(imatrix: Imatrix, folder):
    p = folder.parent / (folder.name + "-imatrix.gguf")
    imatrix.save(p)
    return p


def test_mixed_groups_dequantize_to_per_expert_quantization(mixed_file, f32_file, imatrix):
    r = GGUFReader(mixed_file)
    assert r.get_field(GROUPS_KEY).contents() == 1
    groups = read_groups(r)
    assert set(groups) == {"blk.0.ffn_gate_exps", "blk.0.ffn_up_exps", "blk.1.ffn_down_exps"}
    assert "blk.2.ffn_up_exps.weight" in {t.name for t in r.tensors}  # uniform -> stock
    tensors = {t.name: t for t in r.tensors}
    f32 = {t.name: np.asarray(t.data) for t in GGUFReader(f32_file).tensors}
    for base, gs in groups.items():
        weights = f32[base + ".weight"]
        imp = imatrix.entries[base + ".weight"].importance()
        seen = []
        for g in gs:
            w = tensors[f"{base}.g{g['k']}.weight"]
            deq = dequantize(np.asarray(w.data), g["type"])  # gguf-py, not our code
            assert deq.shape == (len(g["ids"]),) + weights.shape[1:]
            for j, e in enumerate(g["ids"]):
                alone = quantize_rows(g["type"], weights[e], imp[e])
                want = dequantize(alone.reshape(weights.shape[1], -1), g["type"])
                assert np.array_equal(deq[j], want), f"{base} expert {e}"
                # and it is a quantization of that expert, not of another one
                dist = [np.linalg.norm(deq[j] - weights[x]) for x in range(len(weights))]
                assert int(np.argmin(dist)) == e
                seen.append(e)
        assert sorted(seen) == list(range(8))


def test_group_types_follow_plan(mixed_file):
    from mode_edge.formats.groups import expert_types

    types = expert_types(GGUFReader(mixed_file))
    assert types["blk.0.ffn_gate_exps.weight"] == MIXED
    assert types["blk.0.ffn_up_exps.weight"] == MIXED[::-1]
    assert types["blk.1.ffn_down_exps.weight"] == [T.IQ2_XS] * 4 + [T.Q4_K] * 4
    assert types["blk.2.ffn_up_exps.weight"] == [T.Q6_K] * 8


def test_inspect_shows_groups_and_rejects_corrupt_ids(mixed_file, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mode_edge.cli", "inspect", str(mixed_file), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(proc.stdout)
    assert info["experts"]["blk.0.ffn_gate_exps.weight"] == {"Q2_K": 2, "Q3_K": 2, "Q4_K": 2, "Q8_0": 2}
    # corrupt one id so the groups no longer partition 0..7 (an id appears twice)
    bad = tmp_path / "bad.gguf"
    shutil.copy(mixed_file, bad)
    r = GGUFReader(bad)
    ids = next(t for t in r.tensors if t.name == "blk.0.ffn_gate_exps.g0.ids")
    offset = int(ids.data_offset)
    raw = bytearray(bad.read_bytes())
    first = int(np.frombuffer(raw[offset : offset + 4], dtype=np.int32)[0])
    other = (first + 1) % 8
    raw[offset : offset + 4] = (
        np.int32(other).tobytes() if other not in np.asarray(ids.data) else np.int32(3).tobytes()
    )
    bad.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="partition|ascending"):
        read_groups(GGUFReader(bad))
    proc = subprocess.run(
        [sys.executable, "-m", "mode_edge.cli", "inspect", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "corrupt" in proc.stderr


def test_plan_needing_imatrix_fails_before_writing(model_dir, tmp_path):
    plan = QuantPlan(default=T.Q8_0, tensors={"blk.0.ffn_up_exps.weight": [T.IQ2_XXS] * 8})
    with pytest.raises(UserError, match="importance matrix"):
        export_model(model_dir, tmp_path / "out", None, plan=plan, label="x")
    assert not (tmp_path / "out").exists()


@pytest.mark.runtime
def test_stock_q4_k_file_runs_in_stock_llama_cpp(model_dir, f32_file, tmp_path):
    import llama_cpp

    path = export_model(model_dir, tmp_path, None, plan=QuantPlan(default=T.Q4_K), label="q4_k").text_path
    ids = list(range(5, 60, 3))
    out = []
    for p in (f32_file, path):
        llm = llama_cpp.Llama(str(p), n_ctx=128, logits_all=True, verbose=False, n_threads=2)
        llm.eval(ids)
        out.append(np.asarray(llm.scores[: len(ids)]))
        llm.close()
    ref, got = out
    # Q4_K keeps ~4.5 bits: logits stay correlated with F32's (a random tiny MoE flips some
    # routing decisions under quantization noise, so judge the median token)
    corr = [np.corrcoef(a, b)[0, 1] for a, b in zip(ref, got)]
    assert np.median(corr) > 0.9 and min(corr) > 0.5, corr


def test_imatrix_file_layout_is_llama_imatrix_s(imatrix, tmp_path):
    path = tmp_path / "m.gguf"
    imatrix.save(path)
    r = GGUFReader(path)
    assert r.get_field("general.type").contents() == "imatrix"
    assert r.get_field("imatrix.datasets").contents() == ["synthetic"]
    assert r.get_field("imatrix.chunk_count").contents() == 3
    names = [t.name for t in r.tensors]
    bases = sorted({n.rsplit(".", 1)[0] for n in names})
    # llama-imatrix: tensors sorted by name, each as .in_sum2 then .counts
    assert names == [f"{b}.{k}" for b in bases for k in ("in_sum2", "counts")]
    t = {t.name: t for t in r.tensors}
    s, c = t["blk.0.ffn_up_exps.weight.in_sum2"], t["blk.0.ffn_up_exps.weight.counts"]
    assert [int(x) for x in s.shape] == [256, 8] and [int(x) for x in c.shape] == [1, 8]
    assert s.tensor_type == T.F32 and c.tensor_type == T.F32
    back = Imatrix.load(path)
    e = back.entries["blk.0.ffn_up_exps.weight"]
    assert np.array_equal(e.importance()[1], np.ones(256, np.float32))  # no tokens -> 1.0


@pytest.mark.parametrize("qtype", [T.Q4_K, T.IQ4_XS, T.Q2_K, T.Q6_K], ids=lambda t: t.name)
def test_fallback_for_rows_not_multiple_of_256_matches_llama(qtype, converted, tiny_models, tmp_path):
    """expert width 128: down_proj rows take llama-quantize's fallback (Q5_0, IQ4_NL, Q4_0, Q8_0)."""
    f32 = converted["published_square"][0]
    ref_path = tmp_path / "ref.gguf"
    _llama_quantize(f32, ref_path, _ftype(qtype), pure=True)
    ours = export_model(
        tiny_models["published_square"],
        tmp_path / "ours",
        None,
        plan=QuantPlan(default=qtype),
        label="x",
        n_threads=2,
    ).text_path
    ref, got = _tensor_bytes(ref_path), _tensor_bytes(ours)
    assert ref["blk.0.ffn_down_exps.weight"][0] != qtype  # a fallback happened
    for name, (rtype, rbytes) in ref.items():
        assert got[name][0] == rtype, name
        assert np.array_equal(got[name][1], rbytes), name


def test_planned_sizes_equal_written_files(model_dir, mixed_file, imatrix, tmp_path):
    """Byte accounting for allocation: computed from shapes and the real header, no data."""
    from mode_edge.gguf.export import planned_sizes

    for plan in (
        QuantPlan(default=T.Q4_K),
        QuantPlan(
            default=T.Q8_0,
            tensors={
                "blk.0.ffn_gate_exps.weight": MIXED,
                "blk.1.ffn_down_exps.weight": [T.IQ2_XS] * 4 + [T.Q4_K] * 4,
            },
        ),
    ):
        text, mm = planned_sizes(model_dir, plan, imatrix)
        r = export_model(model_dir, tmp_path / plan.method, None, plan=plan, label="x", imatrix=imatrix)
        assert (text, mm) == (r.text_path.stat().st_size, r.mmproj_path.stat().st_size)
