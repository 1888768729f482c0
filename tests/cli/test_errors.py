"""Bad input: one line on stderr saying what is wrong and what to do, exit code 2, no files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mode_edge.errors import UserError
from mode_edge.gguf.export import atomic_outputs


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mode_edge.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def _assert_clean_failure(proc, out_dir: Path, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert not out_dir.exists() or not any(out_dir.iterdir()), list(out_dir.iterdir())


@pytest.fixture
def model_copy(tiny_models, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_models["transformers"], tmp_path / "model"))


def test_missing_directory(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("convert", tmp_path / "nope", "-o", out)
    _assert_clean_failure(proc, out, "does not exist")


def test_no_config(model_copy, tmp_path):
    (model_copy / "config.json").unlink()
    out = tmp_path / "out"
    _assert_clean_failure(run_cli("convert", model_copy, "-o", out), out, "no config.json")


def test_unsupported_architecture_lists_supported(model_copy, tmp_path):
    cfg = json.loads((model_copy / "config.json").read_text())
    cfg["model_type"] = "llama"
    cfg["architectures"] = ["LlamaForCausalLM"]
    (model_copy / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    _assert_clean_failure(
        run_cli("convert", model_copy, "-o", out), out, "'llama'", "supported:", "qwen3_vl_moe"
    )


def test_truncated_shard(model_copy, tmp_path):
    shard = sorted(model_copy.glob("*.safetensors"))[1]
    os.truncate(shard, shard.stat().st_size // 2)
    out = tmp_path / "out"
    _assert_clean_failure(run_cli("convert", model_copy, "-o", out), out, shard.name, "truncated or corrupt")


def test_corrupt_shard(model_copy, tmp_path):
    shard = sorted(model_copy.glob("*.safetensors"))[0]
    shard.write_bytes(os.urandom(4096))
    out = tmp_path / "out"
    _assert_clean_failure(run_cli("convert", model_copy, "-o", out), out, shard.name, "truncated or corrupt")


def test_shard_missing_from_index(model_copy, tmp_path):
    shard = sorted(model_copy.glob("*.safetensors"))[-1]
    shard.unlink()
    out = tmp_path / "out"
    _assert_clean_failure(run_cli("convert", model_copy, "-o", out), out, shard.name, "missing")


def test_existing_output_folder_keeps_only_its_own_files(model_copy, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (model_copy / "config.json").write_text("{not json")
    proc = run_cli("convert", model_copy, "-o", out)
    assert proc.returncode == 2
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_unknown_precision(model_copy, tmp_path):
    out = tmp_path / "out"
    _assert_clean_failure(run_cli("convert", model_copy, "-o", out, "--precision", "q3"), out, "q3", "f16")


def test_inspect_not_a_gguf(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf at all")
    proc = run_cli("inspect", bad)
    assert proc.returncode == 2 and "not a readable GGUF" in proc.stderr


def test_failure_mid_write_removes_partial_files(tmp_path):
    """A crash after the first file is half written leaves neither file nor the folder."""
    out = tmp_path / "new-out"
    finals = [out / "a.gguf", out / "b.gguf"]
    with pytest.raises(RuntimeError):
        with atomic_outputs(out, finals) as temps:
            temps[0].write_bytes(b"x" * 1000)
            raise RuntimeError("disk full")
    assert not out.exists()


def test_user_error_format():
    e = UserError("no config.json in /x", "download the whole repository")
    assert str(e) == "no config.json in /x: download the whole repository"
