"""The loader fuzz's smoke run (benchmarks/fuzz_loader.py): 290 malformed expert-group files of a
tiny Qwen3-VL-MoE, ten per mutation, loaded by the installed runtime in forked children and read
by mode-edge's own reader. No sanitizer here; the ASan + UBSan run of 10,000 cases is the
benchmark."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.runtime

_BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(_BENCH))
_spec = importlib.util.spec_from_file_location("fuzz_loader", _BENCH / "fuzz_loader.py")
fuzz = importlib.util.module_from_spec(_spec)
sys.modules["fuzz_loader"] = fuzz  # its dataclass looks its module up there
_spec.loader.exec_module(fuzz)


def test_loader_fuzz_smoke(tmp_path):
    n = 10 * len(fuzz.gm.MUTATIONS)
    report = tmp_path / "report.json"
    rc = fuzz.main(["--cases", str(n), "--seeds", "tiny", "--work", str(tmp_path), "--json", str(report)])
    rep = json.loads(report.read_text())
    assert rep["failures"] == [] and rc == 0, json.dumps(rep["failures"], indent=1)[:3000]
    assert rep["cases"] == n == rep.get("refused", 0) + rep.get("loaded", 0)
    # every mutation ran; the valid-by-construction ones loaded, the corrupting ones were refused
    assert all(sum(c.values()) == 10 for c in rep["by_mutation"].values())
    assert rep["by_mutation"]["groups: one expert each (valid)"].get("loaded") == 10
    assert rep["by_mutation"]["groups: beside the whole tensor"].get("refused") == 10
    assert rep["by_mutation"]["ids: repeated expert"].get("refused") == 10
    # refusals name their reason: a mode-edge expert-group message among them
    assert any("mode-edge expert groups" in m for m in rep["refusals"])


def test_refusal_reasons_are_read_from_the_log():
    gguf_log = (
        "llama_model_loader: loaded meta data\n"
        "gguf_init_from_reader: tensor 'x' has offset 9, expected 8\n"
        "gguf_init_from_reader: failed to read tensor data\n"
        "llama_model_load: error loading model: llama_model_loader: failed to load model from /a.gguf\n"
    )
    assert fuzz.reason(gguf_log) == "gguf_init_from_reader: tensor 'x' has offset 9, expected 8"
    ours = "llama_model_load: error loading model: mode-edge expert groups: y: expert 3 is in no group\n"
    assert fuzz.reason(ours) == "mode-edge expert groups: y: expert 3 is in no group"
    assert fuzz.reason("llama_model_loader: loaded meta data\n") is None
    assert fuzz.verdict({"exit": 3}, "llama_model_loader: loaded meta data\n")[0] == "failure"
    assert fuzz.verdict({"signal": 11}, "")[1] == "crash: SIGSEGV"
    asan = "==1==ERROR: AddressSanitizer: heap-buffer-overflow on address 0x1\n"
    assert fuzz.verdict({"exit": 3}, ours + asan)[0] == "failure"
    assert fuzz.verdict({"exit": 0, "hung": True, "timeout": 5}, "")[0] == "failure"


def test_many_groups_run_on_the_fallback_path(tmp_path):
    """Found by the fuzz: the demo model with nine types per expert tensor (96 groups) overflowed
    the graph context on the masked fallback (GGML_ASSERT in build_moe_ffn); the node budget now
    grows with the groups. Each path loads it and decodes."""
    seed = fuzz.build_seed("demo", tmp_path)
    parsed = fuzz.gm.read_seed(seed, "demo")
    assert sum(len(ks) for ks in parsed.groups.values()) == 96
    for mode in fuzz.MODES:
        assert fuzz.main(["--replay", str(seed), "--mode", mode, "--work", str(tmp_path / mode)]) == 0, mode


def _replay_log(path: Path, work: Path) -> tuple[int, str]:
    rc = fuzz.main(["--replay", str(path), "--work", str(work)])
    return rc, (work / "replay.log").read_text(errors="replace")


def test_a_repeated_token_string_is_refused_not_an_abort(tmp_path):
    """Found by the fuzz (one flipped byte in tokenizer.ggml.tokens): llama.cpp asserted that
    token strings are distinct and aborted; patch 0010 refuses the file."""
    seed = fuzz.gm.read_seed(fuzz.build_seed("tiny", tmp_path), "tiny")
    kvs = []
    for kv in seed.kvs:
        if kv.name == "tokenizer.ggml.tokens":
            tokens = list(kv.value)
            tokens[5] = tokens[6]
            kv = fuzz.gm.KV(kv.name, tokens, kv.vtype, kv.sub)
        kvs.append(kv)
    bad = tmp_path / "dup.gguf"
    fuzz.gm.write(bad, seed, seed.tensors, kvs)
    rc, log = _replay_log(bad, tmp_path / "r")
    assert rc == 0 and "distinct token strings" in log, log[-2000:]


def test_an_out_of_range_type_field_is_refused_by_the_reader(tmp_path):
    """Patch 0008: the GGUF reader refuses a type field outside ggml's types before it becomes an
    enum (under UBSan the old order was undefined behaviour)."""
    import struct

    seed = fuzz.gm.read_seed(fuzz.build_seed("tiny", tmp_path), "tiny")
    buf = bytearray(seed.raw)
    struct.pack_into("<I", buf, seed.info["blk.0.ffn_up_exps.g0.weight"]["type"], 4000)
    bad = tmp_path / "type.gguf"
    bad.write_bytes(bytes(buf))
    rc, log = _replay_log(bad, tmp_path / "r")
    assert rc == 0 and "invalid ggml type 4000, should be in [0, " in log, log[-2000:]


def test_corrupt_expert_counts_are_refused_not_an_abort(tmp_path):
    """Found by the fuzz (a flipped byte in expert_used_count): llama.cpp asserted the expert
    counts and aborted; patch 0010 refuses the file."""
    seed = fuzz.gm.read_seed(fuzz.build_seed("tiny", tmp_path), "tiny")
    key = f"{seed.arch}.expert_used_count"
    kvs = [fuzz.gm.KV(kv.name, 999, kv.vtype) if kv.name == key else kv for kv in seed.kvs]
    assert any(kv.name == key for kv in kvs)
    bad = tmp_path / "used.gguf"
    fuzz.gm.write(bad, seed, seed.tensors, kvs)
    rc, log = _replay_log(bad, tmp_path / "r")
    assert rc == 0 and "invalid expert counts in the file" in log, log[-2000:]
