"""Test helpers that rewrite GGUF files with gguf-py alone: split a stock file's expert tensors
into expert groups (same bytes per expert), or merge a grouped file back into stock F32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, dequantize

from mode_edge.formats.groups import GROUPS_KEY, GROUPS_VERSION, group_tensor_names

T = GGMLQuantizationType


def _copy_metadata(r: GGUFReader, w: GGUFWriter, drop: set[str]) -> None:
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name in drop or f.name == "general.architecture":
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), vtype, sub_type=sub)


def _arch(r: GGUFReader) -> str:
    return r.fields["general.architecture"].contents()


def _numpy_shape(t) -> tuple[int, ...]:
    return tuple(int(x) for x in reversed(t.shape.tolist()))


def _raw(t) -> np.ndarray:
    """The tensor's data as gguf-py reads it: element shape for float types, byte shape (rows x
    row bytes) for block types -- the shape GGUFWriter.add_tensor expects back."""
    return np.ascontiguousarray(t.data)


def regroup(
    src: Path,
    dst: Path,
    groups: dict[str, list[int]] | None = None,
    n_groups: int = 3,
    types: dict[str, list[T]] | None = None,
) -> None:
    """Split every expert tensor of a stock file into expert groups. groups[name][e] is the group
    of expert e (default: e % n_groups, interleaved). Bytes per expert are copied unchanged, unless
    types[name] gives each expert a type, in which case the expert is dequantized and requantized."""
    from mode_edge.quantize.ggml_lib import quantize_rows

    r = GGUFReader(src)
    w = GGUFWriter(dst, _arch(r))
    _copy_metadata(r, w, drop=set())
    w.add_uint32(GROUPS_KEY, GROUPS_VERSION)
    for t in r.tensors:
        shape = _numpy_shape(t)
        if "_exps." not in t.name or len(shape) != 3:
            w.add_tensor(t.name, _raw(t), raw_dtype=t.tensor_type)
            continue
        E = shape[0]
        assign = (groups or {}).get(t.name) or [e % n_groups for e in range(E)]
        raw = _raw(t)  # [E, rows, row bytes or elements]
        want = (types or {}).get(t.name)
        for k in sorted(set(assign)):
            ids = [e for e in range(E) if assign[e] == k]
            w_name, i_name = group_tensor_names(t.name, k)
            if want is None:
                data, ttype = np.ascontiguousarray(raw[ids]), t.tensor_type
            else:
                ttype = want[ids[0]]
                rows = raw[ids].reshape(len(ids) * shape[1], -1)
                full = rows if t.tensor_type == T.F32 else dequantize(rows, t.tensor_type)
                data = quantize_rows(ttype, np.ascontiguousarray(full, dtype=np.float32), None)
                data = data.reshape(len(ids), shape[1], -1)
            w.add_tensor(w_name, data, raw_dtype=ttype)
            w.add_tensor(i_name, np.asarray(ids, dtype=np.int32), raw_dtype=T.I32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def degroup_to_f32(src: Path, dst: Path) -> None:
    """The same model in stock form: every expert tensor F32, experts dequantized from their groups."""
    r = GGUFReader(src)
    w = GGUFWriter(dst, _arch(r))
    _copy_metadata(r, w, drop={GROUPS_KEY})
    parts: dict[str, dict[int, tuple]] = {}
    for t in r.tensors:
        if ".g" in t.name and t.name.rsplit(".", 2)[-2].startswith("g") and "_exps." in t.name:
            stem, gk, kind = t.name.rsplit(".", 2)
            parts.setdefault(stem + ".weight", {}).setdefault(int(gk[1:]), {})[kind] = t
            continue
        w.add_tensor(t.name, _raw(t), raw_dtype=t.tensor_type)
    for name, groups in parts.items():
        ids_all = np.concatenate([np.asarray(g["ids"].data, dtype=np.int64) for g in groups.values()])
        first = groups[0]["weight"]
        shape = _numpy_shape(first)
        full = np.zeros((len(ids_all),) + shape[1:], dtype=np.float32)
        for g in groups.values():
            tw, ids = g["weight"], np.asarray(g["ids"].data, dtype=np.int64)
            sh = _numpy_shape(tw)
            rows = _raw(tw).reshape(sh[0] * sh[1], -1)
            full[ids] = (rows if tw.tensor_type == T.F32 else dequantize(rows, tw.tensor_type)).reshape(sh)
        w.add_tensor(name, full)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
