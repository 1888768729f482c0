"""Mutations of valid expert-group GGUF files, for benchmarks/fuzz_loader.py.

A valid file is read once with gguf-py into a `Seed` (its metadata, tensors and the byte
positions of every tensor-info field). Each mutation takes the seed and a random generator and
writes one case file: structural ones (ids, dtypes, group counts and numbering, shapes, the
mode_edge.expert_groups key) rewrite the file with gguf-py's GGUFWriter; byte-level ones
(offsets, dims, types, counts, truncation, flips) edit the valid bytes in place. Every mutation
is deterministic given the generator, so a case is reproduced from (seed file, mutation, rng
seed) alone.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from mode_edge.formats.groups import GROUP_RE as _GROUP
from mode_edge.formats.groups import GROUPS_KEY as KEY
from mode_edge.formats.groups import group_tensor_names
from mode_edge.gguf.writer import tensor_nbytes

T = GGMLQuantizationType


@dataclass
class Tensor:
    name: str
    type: int
    shape: tuple[int, ...]  # numpy order: outermost first (GGUF stores it reversed)
    data: bytes


@dataclass
class KV:
    name: str
    value: Any
    vtype: GGUFValueType
    sub: GGUFValueType | None = None


@dataclass
class Seed:
    label: str
    path: Path
    arch: str
    kvs: list[KV]
    tensors: list[Tensor]
    raw: bytes
    data_offset: int
    info: dict[str, dict[str, Any]]  # tensor name -> byte positions of its info fields
    kv_pos: list[tuple[str, int]]  # (key, position of its value-type field)
    groups: dict[str, list[int]] = field(default_factory=dict)  # base tensor -> its group numbers
    n_expert: int = 0

    def tensor(self, name: str) -> Tensor:
        return next(t for t in self.tensors if t.name == name)


def read_seed(path: Path, label: str) -> Seed:
    r = GGUFReader(path)
    kvs, kv_pos = [], []
    for f in r.fields.values():
        if f.name.startswith("GGUF."):
            continue
        pos = f.offset + int(f.parts[0].nbytes) + int(f.parts[1].nbytes)
        kv_pos.append((f.name, pos))
        if f.name == "general.architecture":
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == GGUFValueType.ARRAY else None
        kvs.append(KV(f.name, f.contents(), vtype, sub))
    tensors, info = [], {}
    for t in r.tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        tensors.append(
            Tensor(t.name, int(t.tensor_type), shape, bytes(np.ascontiguousarray(t.data).tobytes()))
        )
        pos, parts = t.field.offset, t.field.parts
        offs = [pos]
        for p in parts:
            offs.append(offs[-1] + int(p.nbytes))
        info[t.name] = {
            "name_len": offs[0],
            "n_dims": offs[2],
            "dims": [offs[3] + 8 * j for j in range(len(t.shape))],
            "type": offs[4],
            "offset": offs[5],
        }
    groups: dict[str, list[int]] = {}
    for t in tensors:
        m = _GROUP.match(t.name)
        if m and m["kind"] == "weight":
            groups.setdefault(m["base"], []).append(int(m["k"]))
    for ks in groups.values():
        ks.sort()
    if not groups:
        raise ValueError(f"{path} has no expert groups: a fuzz seed must be a grouped file")
    arch = r.fields["general.architecture"].contents()
    n_expert = int(r.fields[f"{arch}.expert_count"].contents())
    return Seed(
        label,
        path,
        arch,
        kvs,
        tensors,
        path.read_bytes(),
        int(r.data_offset),
        info,
        kv_pos,
        groups,
        n_expert,
    )


def _ids(tensors: list[Tensor], name: str) -> np.ndarray:
    return np.frombuffer(next(t for t in tensors if t.name == name).data, dtype=np.int32)


def nbytes(ttype: int, shape: tuple[int, ...]) -> int:
    """The writer's tensor_nbytes, with a row that is not a whole number of blocks floored (such
    a file is what the case is for: the loader must refuse its shape itself)."""
    block = GGML_QUANT_SIZES[T(ttype)][0]
    return tensor_nbytes((*shape[:-1], shape[-1] - shape[-1] % block), T(ttype))


def write(path: Path, seed: Seed, tensors: list[Tensor], kvs: list[KV] | None = None) -> None:
    w = GGUFWriter(path, seed.arch)
    for kv in seed.kvs if kvs is None else kvs:
        w.add_key_value(kv.name, kv.value, kv.vtype, sub_type=kv.sub)
    for t in tensors:
        w.add_tensor(t.name, np.frombuffer(t.data, dtype=np.int8), raw_shape=t.shape, raw_dtype=T(t.type))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# -- helpers for structural mutations ----------------------------------------------------------


def _pick_group(seed: Seed, rng: random.Random) -> tuple[str, int]:
    base = rng.choice(sorted(seed.groups))
    return base, rng.choice(seed.groups[base])


def _with(seed: Seed, edits: dict[str, Tensor | None], extra: list[Tensor] = ()) -> list[Tensor]:
    """The seed's tensors with some replaced (or dropped: None) and some appended."""
    out = []
    for t in seed.tensors:
        if t.name in edits:
            if edits[t.name] is not None:
                out.append(edits[t.name])
        else:
            out.append(t)
    return out + list(extra)


def _ids_tensor(name: str, ids) -> Tensor:
    a = np.asarray(ids, dtype=np.int32)
    return Tensor(name, int(T.I32), (len(a),), a.tobytes())


def _expert_slices(t: Tensor) -> list[bytes]:
    n = t.shape[0]
    step = len(t.data) // n
    return [t.data[i * step : (i + 1) * step] for i in range(n)]


# -- structural mutations --------------------------------------------------------------------


def ids_value(kind: str) -> Callable[[Seed, random.Random, Path], str]:
    def run(seed: Seed, rng: random.Random, out: Path) -> str:
        base, k = _pick_group(seed, rng)
        _, ni = group_tensor_names(base, k)
        ids = _ids(seed.tensors, ni).copy()
        j = rng.randrange(len(ids))
        E = seed.n_expert
        if kind == "repeat":
            others = [
                int(x) for g in seed.groups[base] for x in _ids(seed.tensors, group_tensor_names(base, g)[1])
            ]
            v = rng.choice([x for x in others if x != ids[j]])
        elif kind == "negative":
            v = rng.choice([-1, -2, -E, -(2**31), -(2**16)])
        elif kind == "too_big":
            v = rng.choice([E, E + 1, 2 * E, 2**16, 2**16 + int(ids[j]), 2**31 - 1, rng.randrange(E, 2**31)])
        else:  # random
            v = rng.randrange(-(2**31), 2**31)
        ids[j] = v
        write(out, seed, _with(seed, {ni: _ids_tensor(ni, ids)}))
        return f"{ni}[{j}] = {v}"

    return run


def ids_shuffle(seed: Seed, rng: random.Random, out: Path) -> str:
    """One group's experts in another order (ids and weight slices together): the spec forbids
    writing it, our loader accepts it (docs/gguf-expert-groups.md, section 10)."""
    base, k = _pick_group(seed, rng)
    nw, ni = group_tensor_names(base, k)
    ids, w = _ids(seed.tensors, ni), seed.tensor(nw)
    order = list(range(len(ids)))
    rng.shuffle(order)
    sl = _expert_slices(w)
    tw = replace(w, data=b"".join(sl[i] for i in order))
    write(out, seed, _with(seed, {nw: tw, ni: _ids_tensor(ni, ids[order])}))
    return f"{ni} in order {order}"


def ids_length(consistent: bool) -> Callable[[Seed, random.Random, Path], str]:
    def run(seed: Seed, rng: random.Random, out: Path) -> str:
        base, k = _pick_group(seed, rng)
        nw, ni = group_tensor_names(base, k)
        ids, w = list(_ids(seed.tensors, ni)), seed.tensor(nw)
        sl = _expert_slices(w)
        action = rng.choice(["drop", "append", "empty", "double"])
        if action == "drop":
            j = rng.randrange(len(ids))
            del ids[j]
            del sl[j]
        elif action == "append":
            ids.append(rng.randrange(seed.n_expert))
            sl.append(sl[0])
        elif action == "empty":
            ids, sl = [], []
        else:
            ids, sl = ids + ids, sl + sl
        edits = {ni: _ids_tensor(ni, ids)}
        if consistent:
            edits[nw] = replace(w, shape=(len(sl), *w.shape[1:]), data=b"".join(sl))
        write(out, seed, _with(seed, edits))
        return f"{ni} {action} ({len(ids)} ids){', weight resized' if consistent else ''}"

    return run


def ids_dtype(seed: Seed, rng: random.Random, out: Path) -> str:
    base, k = _pick_group(seed, rng)
    _, ni = group_tensor_names(base, k)
    ids = _ids(seed.tensors, ni)
    n = len(ids)
    kind = rng.choice(["I16", "I64", "F32", "I8", "F16", "2d", "2d_t", "3d", "bytes_as_I64"])
    if kind in ("I16", "I64", "F32", "I8", "F16"):
        dt = {"I16": np.int16, "I64": np.int64, "F32": np.float32, "I8": np.int8, "F16": np.float16}[kind]
        t = Tensor(ni, int(T[kind]), (n,), ids.astype(dt).tobytes())
    elif kind == "2d":
        t = Tensor(ni, int(T.I32), (1, n), ids.tobytes())
    elif kind == "2d_t":
        t = Tensor(ni, int(T.I32), (n, 1), ids.tobytes())
    elif kind == "3d":
        t = Tensor(ni, int(T.I32), (1, 1, n), ids.tobytes())
    else:  # the same bytes declared I64 (half as many elements)
        t = Tensor(ni, int(T.I64), (max(n // 2, 1),), ids.tobytes()[: 8 * max(n // 2, 1)].ljust(8, b"\0"))
    write(out, seed, _with(seed, {ni: t}))
    return f"{ni} as {kind}"


_WEIGHT_TYPES = [t for t in T if t in GGML_QUANT_SIZES]


def weight_dtype(keep_bytes: bool) -> Callable[[Seed, random.Random, Path], str]:
    def run(seed: Seed, rng: random.Random, out: Path) -> str:
        base, k = _pick_group(seed, rng)
        nw, _ = group_tensor_names(base, k)
        w = seed.tensor(nw)
        new = rng.choice(_WEIGHT_TYPES)
        data = w.data if keep_bytes else rng.randbytes(nbytes(int(new), w.shape))
        write(out, seed, _with(seed, {nw: replace(w, type=int(new), data=data)}))
        return f"{nw} as {new.name}{' (bytes kept)' if keep_bytes else ''}"

    return run


def group_split_singletons(seed: Seed, rng: random.Random, out: Path) -> str:
    """A valid file: every expert of a tensor in its own group (more groups than one all-groups
    op holds), bytes and types kept."""
    base = rng.choice(sorted(seed.groups))
    edits: dict[str, Tensor | None] = {}
    extra, n = [], 0
    for k in seed.groups[base]:
        nw, ni = group_tensor_names(base, k)
        w, ids = seed.tensor(nw), _ids(seed.tensors, ni)
        edits[nw] = edits[ni] = None
        for e, sl in zip(ids, _expert_slices(w), strict=True):
            gw, gi = group_tensor_names(base, n)
            extra += [replace(w, name=gw, shape=(1, *w.shape[1:]), data=sl), _ids_tensor(gi, [e])]
            n += 1
    write(out, seed, _with(seed, edits, extra))
    return f"{base}: {n} groups of one expert"


def group_remove(seed: Seed, rng: random.Random, out: Path) -> str:
    base, k = _pick_group(seed, rng)
    nw, ni = group_tensor_names(base, k)
    what = rng.choice(["weight", "ids", "both", "all"])
    if what == "all":
        edits = {n: None for g in seed.groups[base] for n in group_tensor_names(base, g)}
    else:
        edits = {n: None for n, w in ((nw, "weight"), (ni, "ids")) if what in (w, "both")}
    write(out, seed, _with(seed, edits))
    return f"{base} g{k}: removed {what}"


def group_extra(seed: Seed, rng: random.Random, out: Path) -> str:
    base, k = _pick_group(seed, rng)
    nw, ni = group_tensor_names(base, k)
    top = max(seed.groups[base])
    what = rng.choice(["copy_next", "copy_far", "empty_next", "orphan_ids", "orphan_weight", "zero_experts"])
    w, ids = seed.tensor(nw), _ids(seed.tensors, ni)
    n = (
        top + 1
        if what in ("copy_next", "empty_next", "orphan_ids", "orphan_weight")
        else top + rng.randrange(2, 50)
    )
    gw, gi = group_tensor_names(base, n)
    if what in ("copy_next", "copy_far"):
        extra = [replace(w, name=gw), _ids_tensor(gi, ids)]
    elif what == "empty_next" or what == "zero_experts":
        extra = [replace(w, name=gw, shape=(0, *w.shape[1:]), data=b""), _ids_tensor(gi, [])]
    elif what == "orphan_ids":
        extra = [_ids_tensor(gi, ids[:1])]
    else:
        extra = [replace(w, name=gw, shape=(1, *w.shape[1:]), data=_expert_slices(w)[0])]
    write(out, seed, _with(seed, {}, extra))
    return f"{base}: extra g{n} ({what})"


def group_renumber(seed: Seed, rng: random.Random, out: Path) -> str:
    """Renumber one tensor's groups: a permutation (valid), a gap, or from 1."""
    base = rng.choice(sorted(seed.groups))
    ks = seed.groups[base]
    how = rng.choice(["permute", "gap", "from_one", "huge"])
    if how == "permute":
        new = ks[:]
        rng.shuffle(new)
    elif how == "gap":
        j, shift = rng.randrange(len(ks)), rng.randrange(1, 5)
        new = [k if i < j else k + shift for i, k in enumerate(ks)]
    elif how == "from_one":
        new = [k + 1 for k in ks]
    else:
        new = [k if i else rng.choice([2**31 - 1, 10**12, 99999]) for i, k in enumerate(ks)]
    ren = {}
    for old, k in zip(ks, new, strict=True):
        for a, b in zip(group_tensor_names(base, old), group_tensor_names(base, k), strict=True):
            ren[a] = b
    tensors = [replace(t, name=ren.get(t.name, t.name)) for t in seed.tensors]
    write(out, seed, tensors)
    return f"{base}: groups {ks} renumbered {new} ({how})"


def group_shape(seed: Seed, rng: random.Random, out: Path) -> str:
    base, k = _pick_group(seed, rng)
    nw, _ = group_tensor_names(base, k)
    w = seed.tensor(nw)
    n, rows, cols = w.shape
    block = GGML_QUANT_SIZES[T(w.type)][0]
    how = rng.choice(
        ["rows+1", "rows-1", "rows*2", "cols+block", "cols-block", "swap", "experts+1", "4d", "2d"]
    )
    shape = {
        "rows+1": (n, rows + 1, cols),
        "rows-1": (n, max(rows - 1, 0), cols),
        "rows*2": (n, rows * 2, cols),
        "cols+block": (n, rows, cols + block),
        "cols-block": (n, rows, max(cols - block, 0)),
        "swap": (n, cols, rows),
        "experts+1": (n + 1, rows, cols),
        "4d": (2, n, rows, cols),
        "2d": (n * rows, cols),
    }[how]
    data = rng.randbytes(nbytes(w.type, shape)) if rng.random() < 0.5 else w.data
    write(out, seed, _with(seed, {nw: replace(w, shape=shape, data=data)}))
    return f"{nw} shape {shape} ({how}; {'resized' if data is not w.data else 'bytes kept'})"


def key_edit(seed: Seed, rng: random.Random, out: Path) -> str:
    kvs = [kv for kv in seed.kvs if kv.name != KEY]
    V = GGUFValueType
    how = rng.choice(
        [
            "absent",
            "v0",
            "v2",
            "vmax",
            "u8",
            "i32",
            "u64",
            "i64",
            "f32",
            "bool",
            "string",
            "array",
            "moved_last",
        ]
    )
    val = {
        "v0": KV(KEY, 0, V.UINT32),
        "v2": KV(KEY, 2, V.UINT32),
        "vmax": KV(KEY, 2**32 - 1, V.UINT32),
        "u8": KV(KEY, 1, V.UINT8),
        "i32": KV(KEY, 1, V.INT32),
        "u64": KV(KEY, 1, V.UINT64),
        "i64": KV(KEY, 1, V.INT64),
        "f32": KV(KEY, 1.0, V.FLOAT32),
        "bool": KV(KEY, True, V.BOOL),
        "string": KV(KEY, "1", V.STRING),
        "array": KV(KEY, [1], V.ARRAY, V.UINT32),
    }.get(how)
    if val is not None:
        kvs.append(val)
    if how == "moved_last":  # a valid key after all the others: order must not matter
        kvs.append(KV(KEY, 1, V.UINT32))
    write(out, seed, seed.tensors, kvs)
    return f"{KEY}: {how}"


def whole_and_groups(seed: Seed, rng: random.Random, out: Path) -> str:
    """The tensor stored both whole (as a stock file would) and as groups."""
    base = rng.choice(sorted(seed.groups))
    w0 = seed.tensor(group_tensor_names(base, seed.groups[base][0])[0])
    shape = (seed.n_expert, *w0.shape[1:])
    whole = Tensor(base + ".weight", w0.type, shape, rng.randbytes(nbytes(w0.type, shape)))
    write(out, seed, _with(seed, {}, [whole]))
    return f"{base}: whole tensor added beside its groups"


def groups_on_other_tensor(seed: Seed, rng: random.Random, out: Path) -> str:
    """Another tensor (attention, router, shared expert, embedding) stored as 'groups'."""
    grouped = {f"{b}.g" for b in seed.groups}
    cands = [t for t in seed.tensors if len(t.shape) >= 2 and not any(t.name.startswith(g) for g in grouped)]
    t = rng.choice(cands)
    stem = t.name[: -len(".weight")] if t.name.endswith(".weight") else t.name
    gw, gi = f"{stem}.g0.weight", f"{stem}.g0.ids"
    shape = t.shape if len(t.shape) == 3 else (1, *t.shape)
    extra = [replace(t, name=gw, shape=shape), _ids_tensor(gi, list(range(shape[0])))]
    write(out, seed, _with(seed, {t.name: None}, extra))
    return f"{t.name} stored as one group"


def swap_group_ids(seed: Seed, rng: random.Random, out: Path) -> str:
    base = rng.choice(sorted(seed.groups))
    ks = seed.groups[base]
    if len(ks) < 2:
        return ids_shuffle(seed, rng, out)
    a, b = rng.sample(ks, 2)
    ia, ib = group_tensor_names(base, a)[1], group_tensor_names(base, b)[1]
    write(
        out,
        seed,
        _with(
            seed, {ia: _ids_tensor(ia, _ids(seed.tensors, ib)), ib: _ids_tensor(ib, _ids(seed.tensors, ia))}
        ),
    )
    return f"{base}: ids of g{a} and g{b} swapped"


# -- byte-level mutations of the valid file ----------------------------------------------------


def _put(buf: bytearray, pos: int, fmt: str, value: int) -> None:
    struct.pack_into("<" + fmt, buf, pos, value)


def _pick_tensor(seed: Seed, rng: random.Random) -> str:
    grouped = [n for n in seed.info if _GROUP.match(n)]
    return rng.choice(grouped) if rng.random() < 0.7 else rng.choice(sorted(seed.info))


def _emit(out: Path, buf: bytes | bytearray) -> None:
    out.write_bytes(bytes(buf))


def _edit_field(seed: Seed, out: Path, pos: int, fmt: str, pick: Callable[[int], int]) -> tuple[int, int]:
    """Write the valid file with the little-endian field at pos replaced by pick(current)."""
    buf = bytearray(seed.raw)
    (cur,) = struct.unpack_from("<" + fmt, buf, pos)
    v = pick(cur)
    _put(buf, pos, fmt, v)
    _emit(out, buf)
    return cur, v


def tensor_offset(seed: Seed, rng: random.Random, out: Path) -> str:
    name = _pick_tensor(seed, rng)
    size = len(seed.raw) - seed.data_offset
    other = struct.unpack_from("<Q", seed.raw, seed.info[rng.choice(sorted(seed.info))]["offset"])[0]
    cur, v = _edit_field(
        seed,
        out,
        seed.info[name]["offset"],
        "Q",
        lambda cur: rng.choice(
            [0, cur + 1, cur + 32, max(cur - 32, 0), size, size - 4, size + 32, 2**63, 2**64 - 32, other]
            + [rng.randrange(2**64)]
        ),
    )
    return f"{name} offset {cur} -> {v}"


def tensor_dim(seed: Seed, rng: random.Random, out: Path) -> str:
    name = _pick_tensor(seed, rng)
    dims = seed.info[name]["dims"]
    j = rng.randrange(len(dims))
    cur, v = _edit_field(
        seed,
        out,
        dims[j],
        "Q",
        lambda cur: rng.choice(
            [0, 1, cur + 1, max(cur - 1, 0), cur * 2, 2**31, 2**32 + cur, 2**62, 2**63 - 1, 2**64 - 1]
        ),
    )
    return f"{name} ne[{j}] {cur} -> {v}"


def tensor_ndims(seed: Seed, rng: random.Random, out: Path) -> str:
    name = _pick_tensor(seed, rng)
    _, v = _edit_field(
        seed, out, seed.info[name]["n_dims"], "I", lambda cur: rng.choice([0, 1, 2, 3, 4, 5, 255, 2**31])
    )
    return f"{name} n_dims -> {v}"


def tensor_type(seed: Seed, rng: random.Random, out: Path) -> str:
    name = _pick_tensor(seed, rng)
    _, v = _edit_field(
        seed,
        out,
        seed.info[name]["type"],
        "I",
        lambda cur: rng.choice(
            [rng.randrange(0, 48), rng.randrange(0, 48), 4, 5, 31, 36, 39, 2**31, 2**32 - 1]
        ),
    )
    return f"{name} type -> {v}"


def tensor_name_len(seed: Seed, rng: random.Random, out: Path) -> str:
    name = _pick_tensor(seed, rng)
    cur, v = _edit_field(
        seed,
        out,
        seed.info[name]["name_len"],
        "Q",
        lambda cur: rng.choice([0, cur - 1, cur + 1, 64, 65, 1024, 2**32, 2**63, 2**64 - 1]),
    )
    return f"{name} name length {cur} -> {v}"


def header_counts(seed: Seed, rng: random.Random, out: Path) -> str:
    which = rng.choice(["n_tensors", "n_kv", "version"])
    if which == "version":
        _, v = _edit_field(seed, out, 4, "I", lambda cur: rng.choice([0, 1, 2, 4, 2**31]))
    else:
        _, v = _edit_field(
            seed,
            out,
            {"n_tensors": 8, "n_kv": 16}[which],
            "Q",
            lambda cur: rng.choice([0, cur - 1, cur + 1, cur * 2, 2**31, 2**63, 2**64 - 1]),
        )
    return f"header {which} -> {v}"


def kv_type(seed: Seed, rng: random.Random, out: Path) -> str:
    cands = [kp for kp in seed.kv_pos if kp[0] == KEY or rng.random() < 0.3] or seed.kv_pos
    name, pos = rng.choice(cands)
    _, v = _edit_field(seed, out, pos, "I", lambda cur: rng.choice(list(range(13)) + [13, 255, 2**31]))
    return f"kv {name} value type -> {v}"


def truncate(seed: Seed, rng: random.Random, out: Path) -> str:
    n = len(seed.raw)
    at = rng.randrange(seed.data_offset + 64) if rng.random() < 0.5 else rng.randrange(n)
    _emit(out, seed.raw[:at])
    return f"truncated at {at} of {n}"


def header_flips(seed: Seed, rng: random.Random, out: Path) -> str:
    buf = bytearray(seed.raw)
    k = rng.choice([1, 1, 2, 4, 8, 16])
    where = []
    for _ in range(k):
        p = rng.randrange(seed.data_offset)
        buf[p] ^= 1 << rng.randrange(8) if rng.random() < 0.5 else rng.randrange(1, 256)
        where.append(p)
    _emit(out, buf)
    return f"{k} header bytes changed at {sorted(where)}"


def ids_bytes(seed: Seed, rng: random.Random, out: Path) -> str:
    """Random bytes over one .ids tensor's data, in place."""
    buf = bytearray(seed.raw)
    names = [n for n in seed.info if n.endswith(".ids")]
    name = rng.choice(names)
    (off,) = struct.unpack_from("<Q", buf, seed.info[name]["offset"])
    size = len(seed.tensor(name).data)
    start = seed.data_offset + off
    buf[start : start + size] = rng.randbytes(size)
    _emit(out, buf)
    return f"{name}: data replaced by random bytes"


Mutation = Callable[[Seed, random.Random, Path], str]

MUTATIONS: dict[str, Mutation] = {
    "ids: repeated expert": ids_value("repeat"),
    "ids: negative": ids_value("negative"),
    "ids: >= n_expert or huge": ids_value("too_big"),
    "ids: random int32": ids_value("random"),
    "ids: shuffled (loader accepts)": ids_shuffle,
    "ids: length (weight kept)": ids_length(False),
    "ids: length (weight resized)": ids_length(True),
    "ids: dtype or rank": ids_dtype,
    "ids: random bytes in place": ids_bytes,
    "ids: swapped between groups": swap_group_ids,
    "weight: another type": weight_dtype(False),
    "weight: another type, same bytes": weight_dtype(True),
    "weight: shape disagrees": group_shape,
    "groups: one expert each (valid)": group_split_singletons,
    "groups: removed": group_remove,
    "groups: extra": group_extra,
    "groups: renumbered": group_renumber,
    "groups: beside the whole tensor": whole_and_groups,
    "groups: on another tensor": groups_on_other_tensor,
    "key: absent, version, type": key_edit,
    "info: tensor offset": tensor_offset,
    "info: tensor dim": tensor_dim,
    "info: n_dims": tensor_ndims,
    "info: tensor type": tensor_type,
    "info: name length": tensor_name_len,
    "header: counts, version": header_counts,
    "header: kv value type": kv_type,
    "header: random byte flips": header_flips,
    "file: truncated": truncate,
}
