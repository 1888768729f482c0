"""The expert-group reader (mode-edge inspect, chat's pre-check) refuses what the loader refuses."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter

from mode_edge.errors import UserError
from mode_edge.formats.groups import GROUPS_KEY, read_groups

BASE = "blk.0.ffn_up_exps"


def _file(tmp_path, groups, *, key="u32", version=1, n_expert=4):
    path = tmp_path / "g.gguf"
    w = GGUFWriter(str(path), "qwen3vlmoe")
    if n_expert is not None:
        w.add_expert_count(n_expert)
    if key == "u32":
        w.add_uint32(GROUPS_KEY, version)
    elif key == "str":
        w.add_string(GROUPS_KEY, str(version))
    for k, ids in enumerate(groups):
        w.add_tensor(f"{BASE}.g{k}.weight", np.zeros((len(ids), 3, 32), dtype=np.float32))
        w.add_tensor(f"{BASE}.g{k}.ids", np.asarray(ids, dtype=np.int32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return GGUFReader(path)


def test_a_valid_file_reads(tmp_path):
    g = read_groups(_file(tmp_path, [[0, 2], [1, 3]]))[BASE]
    assert [x["ids"] for x in g] == [[0, 2], [1, 3]] and g[0]["shape"] == [32, 3, 2]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"version": 2}, "layout version 2 is not supported"),
        ({"key": "str"}, "is a STRING, expected UINT32 1"),
        ({"key": None}, "no mode_edge.expert_groups key"),
        ({"n_expert": 5}, r"do not partition 0\.\.4"),  # expert 4 is in no group
    ],
)
def test_the_loaders_refusals(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        read_groups(_file(tmp_path, [[0, 2], [1, 3]], **kwargs))


def test_without_expert_count_the_ids_themselves_must_partition(tmp_path):
    read_groups(_file(tmp_path, [[0, 2], [1, 3]], n_expert=None))
    with pytest.raises(UserError, match="partition"):
        read_groups(_file(tmp_path, [[0, 2], [1, 4]], n_expert=None))
