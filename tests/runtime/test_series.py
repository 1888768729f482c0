"""The runtime patch as a series: applied in order, refused by name when one no longer applies,
hashed whole for the cache key, and shipped inside the wheel as package data."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import mode_edge.runtime.build as rb
from mode_edge.errors import UserError
from tests.helpers import ROOT


def _diff(path: str, old: str, new: str) -> str:
    return f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n-{old}\n+{new}\n"


def _series(tmp_path, *bodies: str):
    d = tmp_path / "patches"
    d.mkdir()
    for i, body in enumerate(bodies, 1):
        (d / f"{i:04d}-step-{i}.patch").write_text(f"Subject: step {i}\n\nwhy it changes\n\n{body}")
    return d


def test_series_applies_in_order(tmp_path, monkeypatch):
    tree = tmp_path / "llama.cpp"
    tree.mkdir()
    (tree / "a.c").write_text("one\n")
    # the second patch only applies on top of the first
    monkeypatch.setenv(
        "MODE_EDGE_PATCHES", str(_series(tmp_path, _diff("a.c", "one", "two"), _diff("a.c", "two", "three")))
    )
    series = rb.patch_series()
    assert [p.name for p in series] == ["0001-step-1.patch", "0002-step-2.patch"]
    rb.apply_series(tree, series, lambda m: None)
    assert (tree / "a.c").read_text() == "three\n"


def test_a_patch_that_no_longer_applies_is_named(tmp_path, monkeypatch):
    tree = tmp_path / "llama.cpp"
    tree.mkdir()
    (tree / "a.c").write_text("one\n")
    monkeypatch.setenv(
        "MODE_EDGE_PATCHES", str(_series(tmp_path, _diff("a.c", "one", "two"), _diff("a.c", "zzz", "three")))
    )
    with pytest.raises(UserError, match="0002-step-2.patch no longer applies"):
        rb.apply_series(tree, rb.patch_series(), lambda m: None)
    assert (tree / "a.c").read_text() == "two\n"  # the failing patch changed nothing


def test_cache_key_hashes_the_whole_series(tmp_path, monkeypatch):
    d = _series(tmp_path, _diff("a.c", "one", "two"), _diff("a.c", "two", "three"))
    monkeypatch.setenv("MODE_EDGE_PATCHES", str(d))
    monkeypatch.setenv("MODE_EDGE_CACHE", str(tmp_path / "cache"))
    key = rb.cache_dir([]).name
    (d / "0002-step-2.patch").write_text((d / "0002-step-2.patch").read_text() + "\n")
    assert rb.cache_dir([]).name != key
    edited = rb.cache_dir([]).name
    (d / "0002-step-2.patch").rename(d / "0002-renamed.patch")  # same bytes, another name
    assert rb.cache_dir([]).name not in (key, edited)
    assert rb.cache_dir([], stock=True).name.startswith(f"{rb.VERSION}-stock-")


def test_no_series_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("MODE_EDGE_PATCHES", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="no runtime patches"):
        rb.patch_series()


def test_the_series_is_numbered_and_headed():
    """Numbered 0001.. without gaps, each with a header before its diff (the build applying them is
    the check that they apply: CI builds the runtime from this series)."""
    series = sorted((ROOT / "vendor" / "patches").glob("*.patch"))
    assert [p.name[:4] for p in series] == [f"{i:04d}" for i in range(1, len(series) + 1)]
    for p in series:
        text = p.read_text()
        head = text[: text.index("diff --git")]
        assert head.startswith("Subject: ") and len(head.splitlines()) >= 3, p.name


def test_the_wheel_carries_the_series_and_not_the_testbed(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("mode_edge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(
        n.rsplit("/", 1)[1]
        for n in names
        if n.startswith("mode_edge/runtime/patches/") and n.endswith(".patch")
    )
    assert shipped == sorted(p.name for p in (ROOT / "vendor" / "patches").glob("*.patch"))
    assert not [n for n in names if n.startswith(("testbed/", "tests/", "mode_edge/testbed/"))]
    assert any(n.endswith("LICENSE") for n in names)


def test_amx_is_left_out_unless_asked(monkeypatch, tmp_path):
    monkeypatch.setattr(rb.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(rb.sys, "platform", "linux")
    monkeypatch.setenv("CFLAGS", "-O3")
    monkeypatch.delenv("CXXFLAGS", raising=False)
    env = rb.compile_env()
    assert env == {"CFLAGS": "-O3 " + rb.NO_AMX, "CXXFLAGS": rb.NO_AMX}
    assert rb.compile_env(amx=True) == {}
    monkeypatch.setattr(rb.platform, "machine", lambda: "arm64")
    assert rb.compile_env() == {}  # no such flags on Apple silicon / ARM
    monkeypatch.setattr(rb.platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("MODE_EDGE_CACHE", str(tmp_path))
    assert rb.cache_dir([]).name != rb.cache_dir([], amx=True).name


def test_a_sanitizer_build_has_its_own_key_and_is_never_installed(monkeypatch, tmp_path):
    monkeypatch.setenv("MODE_EDGE_CACHE", str(tmp_path))
    flags = rb.cmake_flags(False, False, sanitize=True)
    assert "-DLLAMA_SANITIZE_ADDRESS=ON" in flags and "-DGGML_SANITIZE_UNDEFINED=ON" in flags
    assert rb.cache_dir(flags).name != rb.cache_dir(rb.cmake_flags(False, False)).name
    env = rb.compile_env(sanitize=True)
    assert env and all("-O1 -g -DNDEBUG" in v for v in env.values())
    calls = []
    monkeypatch.setattr(rb, "_build_wheel", lambda cache, *a, **k: calls.append(cache) or tmp_path / "x.whl")
    monkeypatch.setattr(rb, "_run", lambda cmd, log, **k: calls.append(cmd))
    rb.build_runtime(sanitize=True, install=True)
    assert len(calls) == 1  # built, and no pip install of it followed


def test_the_sanitizer_runtimes_are_found(monkeypatch, tmp_path):
    monkeypatch.setenv("MODE_EDGE_CACHE", str(tmp_path))
    env = rb.sanitizer_env()
    assert f"suppressions={tmp_path / 'ubsan-suppressions.txt'}" in env["UBSAN_OPTIONS"]
    assert (tmp_path / "ubsan-suppressions.txt").read_text() == "alignment:*/ggml-cpu/*\n"
    libs = env["LD_PRELOAD"].split()
    assert [Path(x).name.split(".so")[0] for x in libs] == ["libasan", "libubsan"]
    assert all(Path(x).exists() for x in libs)
    assert "detect_leaks=0" in env["ASAN_OPTIONS"] and "halt_on_error=1" in env["UBSAN_OPTIONS"]


def test_gcc_lets_no_amx_win_over_march():
    """The reason NO_AMX works with llama.cpp's -march=native, which comes after CFLAGS: an explicit
    -mno-* wins whatever the order. -march=sapphirerapids (AMX on any host) is the control."""
    import shutil

    gcc = shutil.which("gcc")
    assert gcc, "the runtime build needs a C compiler"

    def macros(*flags: str) -> str:
        cmd = [gcc, *flags, "-dM", "-E", "-x", "c", "-"]
        return subprocess.run(cmd, input="", capture_output=True, text=True, check=True).stdout

    assert "__AMX_INT8__" in macros("-march=sapphirerapids")
    without = macros(*rb.NO_AMX.split(), "-march=sapphirerapids")
    assert "__AMX_INT8__" not in without and "__AMX_TILE__" not in without and "__AVX512F__" in without


@pytest.mark.runtime
def test_the_installed_runtime_has_no_amx_kernels():
    import ctypes

    from mode_edge.quantize import lib_dir

    cpu = ctypes.CDLL(str(next(lib_dir().glob("libggml-cpu.so*"))))
    assert hasattr(cpu, "ggml_backend_cpu_init")  # the lookup works
    assert not hasattr(cpu, "_Z28ggml_backend_amx_buffer_typev")  # ggml's AMX buffer type (C++)
