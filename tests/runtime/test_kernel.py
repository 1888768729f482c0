"""ggml's CPU mul_mat_id in mode-edge's runtime: ids of -1 (an expert outside the group) compute
nothing and leave zeros, even where the output buffer held garbage; all other rows are the
matrix products. The all-groups op (one op over groups of different types) gives every row its
group's product, alone and chained. Checked op by op through ctypes on the installed libggml,
against numpy and gguf-py's dequantizer (references nobody here wrote)."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from gguf import GGMLQuantizationType, dequantize

from mode_edge.quantize.ggml_lib import lib_dir, quantize_rows
from mode_edge.runtime.build import CPU_SKIP, capabilities

pytestmark = pytest.mark.runtime  # loads models / runs ops of the patched llama.cpp

T = GGMLQuantizationType


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class _Tensor(ctypes.Structure):
    """struct ggml_tensor of the pinned ggml (include/ggml.h), to set what the runtime's graph sets
    on the all-groups op: its extra sources and op_params[0]. Checked against the library below."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


def _libs():
    d = lib_dir()
    base = ctypes.CDLL(str(sorted(d.glob("libggml-base.*"))[0]), mode=ctypes.RTLD_GLOBAL)
    cpu = ctypes.CDLL(str(sorted(d.glob("libggml-cpu.*"))[0]), mode=ctypes.RTLD_GLOBAL)
    p = ctypes.c_void_p
    base.ggml_init.argtypes, base.ggml_init.restype = [_InitParams], p
    base.ggml_free.argtypes, base.ggml_free.restype = [p], None
    base.ggml_new_tensor_3d.argtypes = [p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
    base.ggml_new_tensor_3d.restype = p
    base.ggml_new_tensor_2d.argtypes = [p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    base.ggml_new_tensor_2d.restype = p
    base.ggml_new_tensor_1d.argtypes = [p, ctypes.c_int, ctypes.c_int64]
    base.ggml_new_tensor_1d.restype = p
    base.ggml_view_tensor.argtypes, base.ggml_view_tensor.restype = [p, p], p
    base.ggml_tensor_overhead.argtypes, base.ggml_tensor_overhead.restype = [], ctypes.c_size_t
    base.ggml_mul_mat_id.argtypes, base.ggml_mul_mat_id.restype = [p, p, p, p], p
    base.ggml_new_graph.argtypes, base.ggml_new_graph.restype = [p], p
    base.ggml_build_forward_expand.argtypes, base.ggml_build_forward_expand.restype = [p, p], None
    base.ggml_get_data.argtypes, base.ggml_get_data.restype = [p], p
    base.ggml_nbytes.argtypes, base.ggml_nbytes.restype = [p], ctypes.c_size_t
    cpu.ggml_graph_compute_with_ctx.argtypes = [p, p, ctypes.c_int]
    cpu.ggml_graph_compute_with_ctx.restype = ctypes.c_int
    return base, cpu


class _Arena:
    """A ggml context whose memory starts as NaN (every byte 0xFF), with the op graph helpers the
    tests share: tensors holding given bytes, and a graph computed on the CPU."""

    def __init__(self, size: int = 64 * 1024 * 1024):
        self.base, self.cpu = _libs()
        self.buf = (ctypes.c_uint8 * size)()
        ctypes.memset(self.buf, 0xFF, size)
        self.ctx = self.base.ggml_init(_InitParams(size, ctypes.cast(self.buf, ctypes.c_void_p), False))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.base.ggml_free(self.ctx)

    def tensor(self, data: bytes, t: T, *ne: int):
        x = getattr(self.base, f"ggml_new_tensor_{len(ne)}d")(self.ctx, int(t), *ne)
        assert self.base.ggml_nbytes(x) == len(data)
        ctypes.memmove(self.base.ggml_get_data(x), data, len(data))
        return x

    def compute(self, out, shape: tuple[int, ...], threads: int) -> np.ndarray:
        gf = self.base.ggml_new_graph(self.ctx)
        self.base.ggml_build_forward_expand(gf, out)
        assert self.cpu.ggml_graph_compute_with_ctx(self.ctx, gf, threads) == 0
        res = np.frombuffer(
            ctypes.string_at(self.base.ggml_get_data(out), 4 * int(np.prod(shape))), dtype=np.float32
        )
        return res.reshape(shape).copy()


def _inputs(a: _Arena, b: np.ndarray, ids: np.ndarray):
    """b [T, n_b, K] and ids [T, n_used] as ggml tensors"""
    Tn, n_b, K = b.shape
    return (
        a.tensor(np.ascontiguousarray(b, dtype=np.float32).tobytes(), T.F32, K, n_b, Tn),
        a.tensor(np.ascontiguousarray(ids, dtype=np.int32).tobytes(), T.I32, ids.shape[1], Tn),
    )


def mul_mat_id(
    weights: bytes, wtype: T, K: int, N: int, E: int, b: np.ndarray, ids: np.ndarray, threads: int = 2
) -> np.ndarray:
    """ggml_mul_mat_id(as [E, N, K] of wtype, b [T, n_b, K], ids [T, n_used]) -> [T, n_used, N],
    computed in a context whose memory starts as NaN."""
    with _Arena() as a:
        b_t, i_t = _inputs(a, b, ids)
        out = a.base.ggml_mul_mat_id(a.ctx, a.tensor(weights, wtype, K, N, E), b_t, i_t)
        return a.compute(out, (b.shape[0], ids.shape[1], N), threads)


def _quantized(wtype: T, w: np.ndarray) -> tuple[bytes, np.ndarray]:
    """w [E, N, K] in wtype: its bytes, and the weights they hold (gguf-py's dequantizer)"""
    E, N, K = w.shape
    if wtype == T.F32:
        return w.tobytes(), w
    q = quantize_rows(wtype, w.reshape(E * N, K), None)
    return q.tobytes(), dequantize(q.reshape(E * N, -1), wtype).reshape(E, N, K)


def all_groups_mul_mat_id(
    groups: list[tuple[bytes, T, int]],
    K: int,
    N: int,
    b: np.ndarray,
    ids: np.ndarray,
    maps: list[np.ndarray],
    threads: int = 2,
) -> np.ndarray:
    """The runtime's all-groups op, built as llama-graph.cpp builds it: per op, its groups' weights in
    src[0] and src[4..], the id -> group << 16 | local map in src[3], op_params[0] bit 4; several
    ops (one map each, -1 for the others' experts) chained in place with bit 1 and src[9]. The
    context's memory starts as NaN."""
    with _Arena() as a:
        assert ctypes.sizeof(_Tensor) == a.base.ggml_tensor_overhead() - 32  # 32: struct ggml_object
        ws = [a.tensor(data, t, K, N, n) for data, t, n in groups]
        b_t, i_t = _inputs(a, b, ids)
        out, per_op, op = None, len(groups) // len(maps), None
        for k, m in enumerate(maps):
            if out is None:
                node = a.base.ggml_mul_mat_id(a.ctx, ws[0], b_t, i_t)
                t = _Tensor.from_address(node)
                assert list(t.src[:3]) == [ws[0], b_t, i_t]  # the struct matches the library's
                op = t.op
            else:  # written in place on the first's output
                node = a.base.ggml_view_tensor(a.ctx, out)
                t = _Tensor.from_address(node)
                t.op = op
                t.src[0], t.src[1], t.src[2] = ws[k * per_op], b_t, i_t
            t.src[3] = a.tensor(m.astype(np.int32).tobytes(), T.I32, len(m))
            for j, w in enumerate(ws[k * per_op + 1 : (k + 1) * per_op]):
                t.src[4 + j] = w
            t.src[9] = out
            t.op_params[0] = 4 | (1 if len(maps) > 1 else 0)
            out = node
        return a.compute(out, (b.shape[0], ids.shape[1], N), threads)


@pytest.fixture(scope="module", autouse=True)
def patched_runtime():
    assert capabilities() & CPU_SKIP, "the installed llama.cpp is stock: run `mode-edge runtime build`"


@pytest.mark.parametrize("wtype", [T.F32, T.Q8_0, T.Q4_K, T.Q2_K])
@pytest.mark.parametrize("n_b", [1, 4])  # MoE input broadcast over the slots, or one row per slot
def test_out_of_group_ids_give_zeros_and_the_rest_is_the_product(wtype, n_b):
    rng = np.random.default_rng(int(wtype) * 10 + n_b)
    K, N, E, Tn, n_used = 256, 64, 6, 9, 4
    data, wq = _quantized(wtype, rng.standard_normal((E, N, K)).astype(np.float32))
    b = rng.standard_normal((Tn, n_b, K)).astype(np.float32)
    ids = rng.integers(0, E, size=(Tn, n_used)).astype(np.int32)
    ids[rng.random(ids.shape) < 0.4] = -1  # out of this group
    ids[0, :] = -1  # a token with no expert in the group
    got = mul_mat_id(data, wtype, K, N, E, b, ids)
    assert np.isfinite(got).all()  # no NaN from the poisoned arena survives
    skip = ids < 0
    assert (got[skip] == 0).all()
    want = np.einsum(
        "tjk,tjnk->tjn", b[:, np.arange(n_used) % n_b], wq[np.where(skip, 0, ids)].astype(np.float64)
    )
    tol = 1e-4 if wtype == T.F32 else 3e-2  # quantized types use an 8-bit activation copy
    scale = np.abs(want[~skip]).max()
    assert np.abs(got[~skip] - want[~skip]).max() <= tol * scale


def test_group_sum_equals_the_whole_tensor():
    """Splitting the experts into two groups with -1 outside each and summing the two results
    gives exactly the one-tensor product: the skip composes across groups."""
    rng = np.random.default_rng(7)
    K, N, E, Tn, n_used = 256, 32, 8, 5, 3
    w = rng.standard_normal((E, N, K)).astype(np.float32)
    b = rng.standard_normal((Tn, 1, K)).astype(np.float32)
    ids = np.stack([rng.choice(E, n_used, replace=False) for _ in range(Tn)]).astype(np.int32)
    whole = mul_mat_id(w.tobytes(), T.F32, K, N, E, b, ids)
    groups = [np.array([0, 3, 5, 6]), np.array([1, 2, 4, 7])]  # interleaved ids
    total = np.zeros_like(whole)
    for g in groups:
        local = np.full(E, -1, dtype=np.int32)
        local[g] = np.arange(len(g))
        total += mul_mat_id(w[g].tobytes(), T.F32, K, N, len(g), b, local[ids])
    assert np.array_equal(total, whole)


@pytest.mark.parametrize("Tn", [1, 24])  # decoding, and enough rows per expert for the tiled kernels
@pytest.mark.parametrize("n_ops", [1, 2])  # all groups in one op, or two ops chained in place
def test_all_groups_op_gives_every_row_its_groups_product(Tn, n_ops):
    rng = np.random.default_rng(Tn * 10 + n_ops)
    K, N, E, n_used = 256, 64, 12, 4
    w = rng.standard_normal((E, N, K)).astype(np.float32)
    types = [T.Q2_K, T.Q4_K, T.Q8_0, T.Q3_K]
    member = [
        np.array([0, 5, 9]),
        np.array([1, 4, 8, 11]),
        np.array([2, 6]),
        np.array([3, 7, 10]),
    ]  # interleaved
    groups, wq = [], np.zeros_like(w)
    for t, g in zip(types, member):
        data, deq = _quantized(t, w[g])
        groups.append((data, t, len(g)))
        wq[g] = deq
    packed = np.zeros(E, dtype=np.int64)
    for k, g in enumerate(member):
        packed[g] = (k << 16) | np.arange(len(g))
    per_op = len(types) // n_ops
    maps = [
        np.where((packed >> 16) // per_op == o, ((packed >> 16) - o * per_op) << 16 | (packed & 0xFFFF), -1)
        for o in range(n_ops)
    ]
    b = rng.standard_normal((Tn, 1, K)).astype(np.float32)
    ids = np.stack([rng.choice(E, n_used, replace=False) for _ in range(Tn)]).astype(np.int32)
    got = all_groups_mul_mat_id(groups, K, N, b, ids, maps)
    assert np.isfinite(got).all()  # every row written: no NaN from the arena
    want = np.einsum("tk,tjnk->tjn", b[:, 0].astype(np.float64), wq[ids].astype(np.float64))
    assert np.abs(got - want).max() <= 3e-2 * np.abs(want).max()
    # each row is exactly what the stock op computes for that expert's group alone
    for k, (g, (data, t, n)) in enumerate(zip(member, groups)):
        local = np.full(E, -1, dtype=np.int32)
        local[g] = np.arange(n)
        alone = mul_mat_id(data, t, K, N, n, b, local[ids])
        rows = np.isin(ids, g)
        assert np.array_equal(got[rows], alone[rows]), types[k]
