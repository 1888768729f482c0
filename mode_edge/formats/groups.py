"""The expert-group layout (docs/design.md): one tensor per type inside an MoE expert tensor.

    blk.N.ffn_gate_exps.gK.weight  [n_K, n_out, n_in]  type T_K
    blk.N.ffn_gate_exps.gK.ids     I32 [n_K]           global expert ids, ascending

plus `mode_edge.expert_groups` = 1. The ids of all groups of a tensor partition
0..n_expert-1. Groups are numbered in ascending bits per weight.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

from mode_edge.errors import UserError
from mode_edge.formats.quant_types import bits_per_weight

GROUPS_KEY = "mode_edge.expert_groups"
GROUPS_VERSION = 1

GROUP_RE = re.compile(r"^(?P<base>.+)\.g(?P<k>\d+)\.(?P<kind>weight|ids)$")


def group_tensor_names(base: str, k: int) -> tuple[str, str]:
    """("blk.0.ffn_up_exps.weight", 1) -> ("blk.0.ffn_up_exps.g1.weight", "blk.0.ffn_up_exps.g1.ids")."""
    stem = base[: -len(".weight")] if base.endswith(".weight") else base
    return f"{stem}.g{k}.weight", f"{stem}.g{k}.ids"


def split_groups(types: list[GGMLQuantizationType]) -> list[tuple[GGMLQuantizationType, list[int]]]:
    by_type: dict[GGMLQuantizationType, list[int]] = defaultdict(list)
    for e, t in enumerate(types):
        by_type[t].append(e)
    order = sorted(by_type, key=lambda t: (bits_per_weight(t), t.value))
    return [(t, by_type[t]) for t in order]


def _check_version(reader: GGUFReader) -> None:
    """The runtime's rule: UINT32 1, or the groups are not read."""
    f = reader.get_field(GROUPS_KEY)
    if f is None:
        raise UserError(f"the file has expert-group tensors but no {GROUPS_KEY} key", "the file is corrupt")
    if f.types != [GGUFValueType.UINT32]:
        raise UserError(
            f"{GROUPS_KEY} is a {f.types[0].name}, expected UINT32 {GROUPS_VERSION}", "the file is corrupt"
        )
    version = int(f.contents())
    if version != GROUPS_VERSION:
        raise UserError(
            f"expert-group layout version {version} is not supported (this mode-edge reads {GROUPS_VERSION})",
            "convert the model with this version of mode-edge",
        )


def read_groups(reader: GGUFReader) -> dict[str, list[dict[str, Any]]]:
    """base tensor name -> its groups (k, type, ids, shape), checked as the runtime checks them:
    the layout version, ids partitioning 0..expert_count-1, shapes (docs/gguf-expert-groups.md).

    Raises UserError if any tensor's groups are malformed (ids not a partition, bad shapes)."""
    weights: dict[str, dict[int, Any]] = defaultdict(dict)
    ids: dict[str, dict[int, Any]] = defaultdict(dict)
    for t in reader.tensors:
        m = GROUP_RE.match(t.name)
        if m:
            (weights if m["kind"] == "weight" else ids)[m["base"]][int(m["k"])] = t
    out: dict[str, list[dict[str, Any]]] = {}
    if weights or ids:
        _check_version(reader)
    arch = reader.get_field("general.architecture")
    count = reader.get_field(f"{arch.contents() if arch is not None else ''}.expert_count")
    try:
        n_expert = int(count.contents()) if count is not None else None
    except (TypeError, ValueError):
        raise UserError(f"{count.name} is not a number", "the file is corrupt") from None
    for base in sorted(set(weights) | set(ids)):
        ws, iz = weights.get(base, {}), ids.get(base, {})
        if ws.keys() != iz.keys():
            raise UserError(f"{base}: groups {sorted(ws)} have ids for {sorted(iz)}", "the file is corrupt")
        if sorted(ws) != list(range(len(ws))):
            raise UserError(
                f"{base}: group numbers {sorted(ws)} are not 0..{len(ws) - 1}", "the file is corrupt"
            )
        groups, all_ids, inner = [], [], None
        for k in range(len(ws)):
            w, i = ws[k], iz[k]
            if i.tensor_type != GGMLQuantizationType.I32 or len(i.shape) != 1:
                raise UserError(f"{base}.g{k}.ids must be a 1-D I32 tensor", "the file is corrupt")
            id_list = [int(x) for x in np.asarray(i.data)]
            shape = [int(x) for x in w.shape]  # ggml order: n_in, n_out, n_k
            if len(shape) != 3 or shape[2] != len(id_list):
                raise UserError(
                    f"{base}.g{k}: {len(id_list)} ids for a weight of shape {shape}", "the file is corrupt"
                )
            if inner is not None and shape[:2] != inner:
                raise UserError(
                    f"{base}.g{k}: shape {shape[:2]} differs from group 0's {inner}", "the file is corrupt"
                )
            inner = shape[:2]
            if id_list != sorted(id_list):
                raise UserError(f"{base}.g{k}.ids are not ascending", "the file is corrupt")
            all_ids += id_list
            groups.append({"k": k, "type": w.tensor_type, "ids": id_list, "shape": shape})
        n = n_expert if n_expert is not None else len(all_ids)
        if sorted(all_ids) != list(range(n)):
            raise UserError(f"{base}: group ids do not partition 0..{n - 1}", "the file is corrupt")
        out[base] = groups
    return out


def expert_types(reader: GGUFReader) -> dict[str, list[GGMLQuantizationType]]:
    """Per expert tensor (stock or grouped), the type of every expert."""
    result: dict[str, list[GGMLQuantizationType]] = {}
    for t in reader.tensors:
        if "_exps." in t.name and not GROUP_RE.match(t.name) and len(t.shape) == 3:
            result[t.name] = [t.tensor_type] * int(t.shape[2])
    for base, groups in read_groups(reader).items():
        n = sum(len(g["ids"]) for g in groups)
        types: list[GGMLQuantizationType] = [GGMLQuantizationType.F32] * n
        for g in groups:
            for e in g["ids"]:
                types[e] = g["type"]
        result[base + ".weight"] = types
    return result
