"""`mode-edge runtime build`: llama-cpp-python 0.3.36 from the package index, our patch, a wheel.

The source release is fetched with pip (never committed here), the patch series
vendor/patches/0001-*.patch, 0002-*, … is applied in order to its bundled llama.cpp (a patch
that no longer applies is reported, not forced), and the wheel is built with pip and installed
into the running environment. The series is package data (installed as
mode_edge.runtime.patches), so this works from a wheel or sdist as well as from a checkout.
Wheels are cached under $MODE_EDGE_CACHE (default ~/.cache/mode-edge) by (version, hash of the
whole series, build flags), so a reinstall is a copy.
"""

from __future__ import annotations

import collections
import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mode_edge.errors import UserError

VERSION = "0.3.36"
PACKAGE = "llama-cpp-python"


def patch_series() -> list[Path]:
    """The patches in the order they apply ($MODE_EDGE_PATCHES: another folder of them)."""
    env = os.environ.get("MODE_EDGE_PATCHES")
    checkout = Path(__file__).resolve().parents[2] / "vendor" / "patches"
    if env:
        folder = Path(env)
    elif checkout.is_dir():  # a source checkout, also before mode-edge is installed
        folder = checkout
    else:  # an installed wheel: the series is package data
        from importlib.resources import files

        folder = Path(str(files("mode_edge.runtime.patches")))
    series = sorted(folder.glob("[0-9][0-9][0-9][0-9]-*.patch"))
    if not series:
        raise UserError(
            f"no runtime patches (NNNN-*.patch) in {folder}",
            "reinstall mode-edge: its package data is incomplete",
        )
    return series


def series_bytes(series: list[Path]) -> bytes:
    """What the cache key hashes: every patch's name and bytes, in order."""
    return b"".join(p.name.encode() + b"\0" + p.read_bytes() for p in series)


#: AddressSanitizer + UBSan in llama.cpp and ggml (benchmarks/fuzz_loader.py). Such a library
#: needs the sanitizer runtimes preloaded into Python (sanitizer_env), so it is never installed.
SANITIZE_FLAGS = [
    f"-D{lib}_SANITIZE_{kind}=ON" for lib in ("LLAMA", "GGML") for kind in ("ADDRESS", "UNDEFINED")
]


def cmake_flags(cuda: bool, metal: bool, sanitize: bool = False) -> list[str]:
    flags = []
    if cuda:
        flags.append("-DGGML_CUDA=on")
    if metal:
        flags.append("-DGGML_METAL=on")
    if sanitize:
        flags += SANITIZE_FLAGS
    return flags


#: UBSan reports the one check it should not: ggml-cpu's x86 kernels read packed quant blocks of
#: 18, 50 or 98 bytes (Q1_0, IQ1_S, IQ3_XXS …) with unaligned 32-bit loads on purpose, which
#: x86-64 allows, so every valid file of those types "fails" it and it says nothing about hostile
#: input. It is suppressed there only; alignment elsewhere, and every other check, still report.
UBSAN_SUPPRESSIONS = "alignment:*/ggml-cpu/*\n"


def sanitizer_env() -> dict[str, str]:
    """What a Python process needs to load a --sanitize build: the compiler's ASan and UBSan
    runtimes preloaded (Python itself is not instrumented), leak checks off (Python's own
    allocations would all be reported), UBSAN_SUPPRESSIONS, and the first report ending the
    process."""
    libs = []
    for name in ("libasan.so", "libubsan.so"):
        out = subprocess.run(["cc", f"-print-file-name={name}"], capture_output=True, text=True)
        path = out.stdout.strip()
        if out.returncode != 0 or not os.path.isabs(path):
            raise UserError(
                f"the C compiler has no {name}", "install gcc's sanitizer runtimes (libasan, libubsan)"
            )
        libs.append(path)
    supp = cache_root() / "ubsan-suppressions.txt"
    if not supp.is_file() or supp.read_text() != UBSAN_SUPPRESSIONS:
        supp.parent.mkdir(parents=True, exist_ok=True)
        supp.write_text(UBSAN_SUPPRESSIONS)
    return {
        "LD_PRELOAD": " ".join(libs),
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:exitcode=86:allocator_may_return_null=1",
        "UBSAN_OPTIONS": f"print_stacktrace=1:halt_on_error=1:exitcode=87:suppressions={supp}",
    }


#: ggml's AMX kernels (Sapphire Rapids and later) crashed (SIGSEGV / SIGILL in
#: ggml_backend_amx_mul_mat, stock Q4_K_M files included) on the Xeon machines this project builds
#: and tests on; mode-edge's expert kernels do not use them. GCC and clang let an explicit -mno-*
#: win over -march=native whatever the order, so these switch AMX off and keep the rest native.
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def compile_env(amx: bool = False, sanitize: bool = False) -> dict[str, str]:
    """CFLAGS/CXXFLAGS for the build (CMake reads them at configure): without AMX on x86-64
    unless amx=True. A sanitizer build is compiled at -O1 with debug symbols (the usual setting
    for ASan: reports name lines) and NDEBUG, so its code paths are the release build's."""
    extra = []
    if not (amx or sys.platform == "win32" or platform.machine().lower() not in ("x86_64", "amd64")):
        extra.append(NO_AMX)
    if sanitize:
        extra.append("-O1 -g -DNDEBUG")
    if not extra:
        return {}
    return {k: " ".join(filter(None, [os.environ.get(k, ""), *extra])) for k in ("CFLAGS", "CXXFLAGS")}


def _sanitized(flags: list[str]) -> bool:
    return any(f in flags for f in SANITIZE_FLAGS)


def cache_root() -> Path:
    return Path(os.environ.get("MODE_EDGE_CACHE") or Path.home() / ".cache" / "mode-edge")


def cache_dir(flags: list[str], stock: bool = False, amx: bool = False) -> Path:
    root = cache_root()
    patch = b"" if stock else series_bytes(patch_series())
    cflags = " ".join(f"{k}={v}" for k, v in sorted(compile_env(amx, _sanitized(flags)).items()))
    key = hashlib.sha256(patch + f"{VERSION}|{' '.join(flags)}|{cflags}".encode()).hexdigest()[:16]
    return root / "runtime" / f"{VERSION}-{'stock-' if stock else ''}{key}"


_UNIT = re.compile(r"\[(\d+)/(\d+)\]")


def _run_with_progress(
    cmd: list[str], log: Callable[[str], None], say: Callable[[str], None], every: float = 10.0, **kw
) -> None:
    """Run cmd, streaming its output: every line to `log`, and to `say` a progress line at most
    every `every` seconds (ninja's [done/total] units when the build prints them, else elapsed
    time). A failure raises with the last 30 lines."""
    log("$ " + " ".join(cmd))
    t0 = last = time.monotonic()
    tail: collections.deque[str] = collections.deque(maxlen=30)
    units = None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, **kw)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail.append(line)
        log(line)
        m = _UNIT.search(line)
        if m:
            units = (int(m.group(1)), int(m.group(2)))
        now = time.monotonic()
        if now - last >= every:
            last = now
            done = f"{units[0]}/{units[1]} compiled units, " if units else ""
            say(f"  compiling: {done}{_elapsed(now - t0)}")
    if proc.wait() != 0:
        raise UserError(
            f"`{' '.join(cmd[:4])} …` failed (exit {proc.returncode}):\n" + "\n".join(tail),
            "see the output above; network access to the package index is needed",
        )


def _elapsed(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _run(cmd: list[str], log: Callable[[str], None], **kw) -> None:
    log("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-30:])
        raise UserError(
            f"`{' '.join(cmd[:4])} …` failed (exit {proc.returncode}):\n{tail}",
            "see the output above; network access to the package index is needed",
        )


def apply_series(llama: Path, series: list[Path], log: Callable[[str], None]) -> None:
    """Apply each patch to the llama.cpp tree `llama` in order; each is dry-run first, so a
    patch that no longer applies stops the build before it changes anything of its own."""
    for patch in series:
        check = subprocess.run(
            ["patch", "-p1", "--dry-run", "--forward", "-i", str(patch)],
            cwd=llama,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if check.returncode != 0:
            first = next(
                (line for line in check.stdout.splitlines() if "FAILED" in line or "can't find" in line),
                check.stdout.strip().splitlines()[-1] if check.stdout.strip() else "unknown reason",
            )
            raise UserError(
                f"runtime patch {patch.name} no longer applies to {PACKAGE} {VERSION}: {first}",
                "update the series against this release (see vendor/README.md)",
            )
        _run(["patch", "-p1", "--forward", "-i", str(patch)], log, cwd=llama)


def build_runtime(
    cuda: bool = False,
    metal: bool = False,
    force: bool = False,
    jobs: int | None = None,
    install: bool = True,
    log: Callable[[str], None] = print,
    stock: bool = False,
    say: Callable[[str], None] = lambda m: None,
    amx: bool = False,
    sanitize: bool = False,
) -> Path:
    """Build (or take from the cache) the patched wheel; install it unless install=False.

    log gets every command and output line (--verbose), say the stages and progress.
    stock=True builds the same release with the same flags but without our patch (the
    reference that benchmarks/stock_identity.py compares against). amx=True keeps ggml's AMX
    kernels (left out by default: see NO_AMX). sanitize=True builds with ASan + UBSan and is
    never installed (it needs sanitizer_env(); benchmarks/fuzz_loader.py unpacks it)."""
    flags = cmake_flags(cuda, metal, sanitize)
    install = install and not sanitize
    cache = cache_dir(flags, stock, amx)
    wheels = sorted(cache.glob("*.whl"))
    t0 = time.monotonic()
    if force or not wheels:
        say(
            f"building llama-cpp-python {VERSION}{'' if stock else ' with mode-edge patch'} once "
            f"(6-15 min on 2 cores; cached in {cache.parent})"
        )
        wheels = [_build_wheel(cache, flags, jobs, log, stock, say, amx)]
        say(f"built in {_elapsed(time.monotonic() - t0)}")
    else:
        say(f"using the cached runtime {wheels[0].name} ({cache})")
        log(f"using the cached wheel {wheels[0]}")
    if install:
        say("installing it into this environment")
        _run([sys.executable, "-m", "pip", "install", "--force-reinstall", "--no-deps", str(wheels[0])], log)
        _run([sys.executable, "-m", "pip", "install", str(wheels[0])], log)  # its dependencies, if missing
    return wheels[0]


def _build_wheel(
    cache: Path,
    flags: list[str],
    jobs: int | None,
    log: Callable[[str], None],
    stock: bool = False,
    say: Callable[[str], None] = lambda m: None,
    amx: bool = False,
) -> Path:
    series = [] if stock else patch_series()
    with tempfile.TemporaryDirectory(prefix="mode-edge-runtime-") as tmp:
        tmp = Path(tmp)
        say(f"[1/4] downloading the {PACKAGE} {VERSION} source release")
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"{PACKAGE}=={VERSION}",
                "-d",
                str(tmp / "dl"),
            ],
            log,
        )
        archive = next((tmp / "dl").glob("*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(tmp / "src", filter="data")
        src = next((tmp / "src").iterdir())
        if not stock:
            say(
                f"[2/4] applying {len(series)} patches to its llama.cpp ({series[0].name} … {series[-1].name})"
            )
            apply_series(src / "vendor" / "llama.cpp", series, log)
        env = dict(
            os.environ,
            **compile_env(amx, _sanitized(flags)),
            CMAKE_ARGS=" ".join(flags),
            # Debug adds only -g, so compile_env's -O1 is the optimisation level
            **({"SKBUILD_CMAKE_BUILD_TYPE": "Debug"} if _sanitized(flags) else {}),
            CMAKE_BUILD_PARALLEL_LEVEL=str(jobs or os.cpu_count() or 2),
        )
        out = tmp / "wheel"
        say(
            f"[3/4] compiling llama.cpp with {env['CMAKE_BUILD_PARALLEL_LEVEL']} jobs"
            + (f" ({' '.join(flags)})" if flags else " (CPU)")
            + ("" if amx or not compile_env() else ", without ggml's AMX kernels (--amx keeps them)")
        )
        _run_with_progress(
            [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(out), str(src)],
            log,
            say,
            env=env,
        )
        say("[4/4] caching the wheel")
        wheel = next(out.glob("*.whl"))
        partial = cache.with_name(cache.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        shutil.copy2(wheel, partial / wheel.name)
        shutil.rmtree(cache, ignore_errors=True)
        partial.rename(cache)
        return cache / wheel.name


def capabilities() -> int:
    """The installed llama.cpp's mode-edge capability bits; 0 for a stock build."""
    from llama_cpp import llama_cpp as lib

    fn = getattr(lib._lib, "llama_mode_edge_capabilities", None)
    if fn is None:
        return 0
    fn.restype = ctypes.c_int32
    fn.argtypes = []
    return int(fn())


CPU_SKIP = 1
GROUPS = 2


def main(argv: list[str] | None = None) -> int:
    """`python -m mode_edge.runtime.build` works before mode-edge is installed (stdlib only), so a
    fresh install builds llama-cpp-python once, patched, and `pip install -e .` finds it there."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mode_edge.runtime.build", description=__doc__)
    ap.add_argument("--cuda", action="store_true")
    ap.add_argument("--metal", action="store_true")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--no-install", action="store_true")
    ap.add_argument("--stock", action="store_true", help="build without the patch (implies --no-install)")
    ap.add_argument("--amx", action="store_true", help="keep ggml's AMX kernels (off by default)")
    ap.add_argument(
        "--sanitize",
        action="store_true",
        help="AddressSanitizer + UBSan build for fuzzing (implies --no-install)",
    )
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    try:
        wheel = build_runtime(
            args.cuda,
            args.metal,
            args.force,
            install=not (args.no_install or args.stock or args.sanitize),
            log=(lambda m: print(m, flush=True)) if args.verbose else (lambda m: None),
            stock=args.stock,
            say=lambda m: print(m, flush=True),
            amx=args.amx,
            sanitize=args.sanitize,
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"{'built' if args.no_install or args.stock or args.sanitize else 'installed'} {wheel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
