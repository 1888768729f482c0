"""Hostile inputs for every file mode-edge reads besides GGUF models: each mutation is run through
the real command in a fresh process, and must end with exit code 2, one line on stderr, no
traceback, no new file in the output folder and nothing that existed there changed.

    python benchmarks/mutate_inputs.py [--only plan,stats,...] [--work DIR]

Inputs and the command that reads them: plan.json (pack --plan), the stats folder (plan
--stats), imatrix GGUFs (pack --imatrix), prompts.jsonl and its images (calibrate --data),
config.json and safetensors headers (convert). Prints the mutation table and exits 1 if any
case fails. tests/test_hostile_inputs.py runs a sample of it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class Case:
    kind: str  # which input
    name: str
    mutate: Callable[[Path], None]  # edits the fixture copy in place
    argv: Callable[[Path], list[str]]  # the command, given the copy and the output folder


# -- the valid fixture ----------------------------------------------------------------------


def build_fixture(root: Path) -> Path:
    """A tiny Qwen3-VL-MoE model, calibration data, its statistics and a plan (minutes once)."""
    from testbed.tiny_qwen3_vl_moe import build_tiny_model
    from tests.helpers import make_data

    root.mkdir(parents=True, exist_ok=True)
    if (root / "plan.json").is_file():
        return root
    build_tiny_model(root / "model")
    make_data(root / "data", n_images=2)
    _cli(
        "calibrate",
        root / "model",
        "--data",
        root / "data",
        "-o",
        root / "stats",
        "--types",
        "Q2_K,Q4_K",
        "--hessian-probes",
        "2",
        "-q",
    )
    _cli("plan", "--stats", root / "stats", "--budget", "6.5MB", "-o", root / "plan.json")
    return root


def _cli(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "mode_edge.cli", *map(str, args)], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise RuntimeError(f"fixture step {args[0]} failed: {proc.stderr[-2000:]}")
    return proc


# -- mutations ------------------------------------------------------------------------------


def _edit_json(path_of: Callable[[Path], Path], edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def run(root: Path) -> None:
        p = path_of(root)
        d = json.loads(p.read_text())
        edit(d)
        p.write_text(json.dumps(d))

    return run


def _write(path_of: Callable[[Path], Path], data: bytes | str) -> Callable[[Path], None]:
    def run(root: Path) -> None:
        p = path_of(root)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)

    return run


def _truncate(path_of: Callable[[Path], Path], keep: float) -> Callable[[Path], None]:
    def run(root: Path) -> None:
        p = path_of(root)
        b = p.read_bytes()
        p.write_bytes(b[: int(len(b) * keep)])

    return run


def _png_header(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels (a decompression bomb's first bytes)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _prompts(lines: list) -> Callable[[Path], None]:
    return _write(
        lambda r: r / "data" / "prompts.jsonl",
        "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines),
    )


def _first_shard(root: Path) -> Path:
    return sorted((root / "model").glob("*.safetensors"))[0]


def _safetensors_header(
    edit: Callable[[dict], None] | None = None, raw: bytes | None = None
) -> Callable[[Path], None]:
    def run(root: Path) -> None:
        p = _first_shard(root)
        b = p.read_bytes()
        n = struct.unpack("<Q", b[:8])[0]
        body = b[8 + n :]
        if raw is not None:
            p.write_bytes(raw + body)
            return
        header = json.loads(b[8 : 8 + n])
        edit(header)
        h = json.dumps(header).encode()
        p.write_bytes(struct.pack("<Q", len(h)) + h + body)

    return run


def _first_tensor(edit: Callable[[dict], None]) -> Callable[[dict], None]:
    def run(header: dict) -> None:
        name = next(k for k in header if k != "__metadata__")
        edit(header[name])

    return run


def cases() -> list[Case]:
    def pack(r: Path, o: Path) -> list[str]:
        return ["pack", str(r / "model"), "--plan", str(r / "plan.json"), "-o", str(o)]

    def pack_im(r: Path, o: Path) -> list[str]:
        return [*pack(r, o), "--imatrix", str(r / "stats" / "imatrix.gguf")]

    def plan(r: Path, o: Path) -> list[str]:
        return ["plan", "--stats", str(r / "stats"), "--budget", "6.5MB", "-o", str(o / "plan.json")]

    def calibrate(r: Path, o: Path) -> list[str]:
        return [
            "calibrate",
            str(r / "model"),
            "--data",
            str(r / "data"),
            "-o",
            str(o),
            "--types",
            "Q4_K",
            "-q",
        ]

    def convert(r: Path, o: Path) -> list[str]:
        return ["convert", str(r / "model"), "--precision", "q8_0", "-o", str(o)]

    plan_json = lambda r: r / "plan.json"  # noqa: E731
    manifest = lambda r: r / "stats" / "manifest.json"  # noqa: E731
    stats_st = lambda r: r / "stats" / "expert_stats.safetensors"  # noqa: E731
    imatrix = lambda r: r / "stats" / "imatrix.gguf"  # noqa: E731
    config = lambda r: r / "model" / "config.json"  # noqa: E731

    def expert_types(d: dict, value) -> None:
        name = next(k for k, v in d["tensors"].items() if isinstance(v, list))
        d["tensors"][name] = value

    def one_tensor(d: dict, value) -> None:
        d["tensors"][next(iter(d["tensors"]))] = value

    out = [
        Case("plan.json", "not JSON", _truncate(plan_json, 0.5), pack),
        Case("plan.json", "empty", _write(plan_json, ""), pack),
        Case("plan.json", "a list", _write(plan_json, "[1, 2]"), pack),
        Case("plan.json", "wrong schema", _edit_json(plan_json, lambda d: d.update(schema="other")), pack),
        Case("plan.json", "wrong version", _edit_json(plan_json, lambda d: d.update(version=99)), pack),
        Case("plan.json", "unknown type", _edit_json(plan_json, lambda d: one_tensor(d, "Q9_K")), pack),
        Case("plan.json", "type a number", _edit_json(plan_json, lambda d: one_tensor(d, 7)), pack),
        Case(
            "plan.json",
            "too few expert types",
            _edit_json(plan_json, lambda d: expert_types(d, ["Q4_K", "Q2_K"])),
            pack,
        ),
        Case(
            "plan.json",
            "per-expert types on a dense tensor",
            _edit_json(plan_json, lambda d: d["tensors"].update({"token_embd.weight": ["Q4_K"] * 8})),
            pack,
        ),
        Case(
            "plan.json",
            "tensor the model lacks",
            _edit_json(plan_json, lambda d: d["tensors"].update({"blk.99.ffn_up_exps.weight": "Q4_K"})),
            pack,
        ),
        Case(
            "plan.json",
            "IQ type without imatrix",
            lambda r: (
                _edit_json(plan_json, lambda d: (d.pop("extra", None), one_tensor(d, "IQ2_XXS")))(r),
                (r / "plan.imatrix.gguf").unlink(),
            ),
            pack,
        ),
        Case("plan.json", "unknown default", _edit_json(plan_json, lambda d: d.update(default="F99")), pack),
        Case("stats", "manifest not JSON", _truncate(manifest, 0.3), plan),
        Case("stats", "manifest missing", lambda r: manifest(r).unlink(), plan),
        Case("stats", "manifest version", _edit_json(manifest, lambda d: d.update(version=1)), plan),
        Case(
            "stats", "manifest n_experts edited", _edit_json(manifest, lambda d: d.update(n_experts=16)), plan
        ),
        Case(
            "stats", "manifest types edited", _edit_json(manifest, lambda d: d.update(types=["Q2_K"])), plan
        ),
        Case("stats", "manifest layer names gone", _edit_json(manifest, lambda d: d.pop("gguf_names")), plan),
        Case(
            "stats",
            "model of another shape",
            _edit_json(manifest, lambda d: d.update(gguf_names={"0": ["blk.0.a", "blk.0.b", "blk.0.c"]})),
            plan,
        ),
        Case(
            "stats",
            "model folder gone",
            _edit_json(manifest, lambda d: d.update(model="/nonexistent/model")),
            plan,
        ),
        Case("stats", "safetensors truncated", _truncate(stats_st, 0.5), plan),
        Case("stats", "safetensors missing", lambda r: stats_st(r).unlink(), plan),
        Case("stats", "safetensors not safetensors", _write(stats_st, b"\x00" * 64), plan),
        Case("imatrix", "not a GGUF", _write(imatrix, b"not a gguf at all" * 10), pack_im),
        Case("imatrix", "empty", _write(imatrix, b""), pack_im),
        Case("imatrix", "truncated", _truncate(imatrix, 0.5), pack_im),
        Case("imatrix", "missing", lambda r: imatrix(r).unlink(), pack_im),
        Case("prompts.jsonl", "bad JSON line", _prompts(['{"prompt": "hi"', {"prompt": "ok"}]), calibrate),
        Case("prompts.jsonl", "empty", _prompts([]), calibrate),
        Case("prompts.jsonl", "not an object", _prompts(["[1, 2]"]), calibrate),
        Case("prompts.jsonl", "no prompt", _prompts([{"image": "images/0.png"}]), calibrate),
        Case("prompts.jsonl", "prompt a number", _prompts([{"prompt": 5}]), calibrate),
        Case(
            "prompts.jsonl",
            "missing image",
            _prompts([{"image": "images/none.png", "prompt": "x"}]),
            calibrate,
        ),
        Case(
            "prompts.jsonl",
            "path escapes the folder (an image there)",
            lambda r: (
                shutil.copy(r / "data" / "images" / "0.png", r / "outside.png"),
                _prompts([{"image": "../outside.png", "prompt": "x"}])(r),
            ),
            calibrate,
        ),
        Case(
            "prompts.jsonl",
            "absolute path (an image there)",
            lambda r: (
                shutil.copy(r / "data" / "images" / "0.png", r / "outside.png"),
                _prompts([{"image": str(r / "outside.png"), "prompt": "x"}])(r),
            ),
            calibrate,
        ),
        Case(
            "prompts.jsonl",
            "30000x30000 PNG",
            lambda r: (
                _write(lambda q: q / "data" / "images" / "bomb.png", _png_header(30000, 30000))(r),
                _prompts([{"image": "images/bomb.png", "prompt": "x"}])(r),
            ),
            calibrate,
        ),
        Case(
            "prompts.jsonl",
            "not an image",
            lambda r: (
                _write(lambda q: q / "data" / "images" / "t.png", "hello")(r),
                _prompts([{"image": "images/t.png", "prompt": "x"}])(r),
            ),
            calibrate,
        ),
        Case("prompts.jsonl", "file missing", lambda r: (r / "data" / "prompts.jsonl").unlink(), calibrate),
        Case("config.json", "not JSON", _truncate(config, 0.5), convert),
        Case("config.json", "a list", _write(config, "[]"), convert),
        Case("config.json", "no text_config", _edit_json(config, lambda d: d.pop("text_config")), convert),
        Case(
            "config.json",
            "layers a string",
            _edit_json(config, lambda d: d["text_config"].update(num_hidden_layers="three")),
            convert,
        ),
        Case(
            "config.json",
            "zero experts",
            _edit_json(config, lambda d: d["text_config"].update(num_local_experts=0)),
            convert,
        ),
        Case(
            "config.json",
            "hidden size not the weights'",
            _edit_json(config, lambda d: d["text_config"].update(hidden_size=512)),
            convert,
        ),
        Case(
            "config.json",
            "more layers than weights",
            _edit_json(config, lambda d: d["text_config"].update(num_hidden_layers=9)),
            convert,
        ),
        Case(
            "config.json",
            "unknown model_type",
            _edit_json(config, lambda d: d.update(model_type="nope", architectures=["X"])),
            convert,
        ),
        Case(
            "config.json",
            "vision depth missing",
            _edit_json(config, lambda d: d["vision_config"].pop("depth")),
            convert,
        ),
        Case(
            "safetensors", "header length huge", _safetensors_header(raw=struct.pack("<Q", 1 << 40)), convert
        ),
        Case(
            "safetensors",
            "header not JSON",
            _safetensors_header(raw=struct.pack("<Q", 8) + b"{notjson"),
            convert,
        ),
        Case(
            "safetensors",
            "unknown dtype",
            _safetensors_header(_first_tensor(lambda t: t.update(dtype="Q99"))),
            convert,
        ),
        Case(
            "safetensors",
            "offsets past the end",
            _safetensors_header(_first_tensor(lambda t: t.update(data_offsets=[0, 1 << 34]))),
            convert,
        ),
        Case(
            "safetensors",
            "shape not the data's",
            _safetensors_header(
                _first_tensor(lambda t: t.update(shape=[t["shape"][0] + 1, *t["shape"][1:]]))
            ),
            convert,
        ),
        Case("safetensors", "truncated", lambda r: _truncate(lambda q: _first_shard(q), 0.6)(r), convert),
    ]
    return out


# -- running --------------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_case(case: Case, fixture: Path, work: Path) -> tuple[bool, str]:
    """(passed, what happened) for one mutation on a fresh copy of the fixture."""
    copy = work / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(fixture, copy)
    case.mutate(copy)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    (out / "keep.txt").write_text("a file the user had here")
    before = _snapshot(out)
    proc = subprocess.run(
        [sys.executable, "-m", "mode_edge.cli", *case.argv(copy, out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    problems = []
    if proc.returncode != 2:
        problems.append(f"exit {proc.returncode}")
    if "Traceback" in proc.stderr:
        problems.append("traceback")
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines")
    if _snapshot(out) != before:
        problems.append("output folder changed")
    detail = lines[-1] if lines else "(no stderr)"
    return not problems, (", ".join(problems) + ": " if problems else "") + detail[:160]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated input kinds")
    ap.add_argument("--work", type=Path, help="fixture cache folder (default: a temporary one)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="mode-edge-mutate-"))
    t0 = time.perf_counter()
    fixture = build_fixture(work / "fixture")
    kinds = set(args.only.split(",")) if args.only else None
    rows, failed = [], 0
    for case in cases():
        if kinds and case.kind not in kinds:
            continue
        ok, what = run_case(case, fixture, work / "run")
        failed += not ok
        rows.append((case.kind, case.name, "ok" if ok else "FAIL", what))
        print(f"{case.kind:14} {case.name:36} {'ok' if ok else 'FAIL':4} {what}", flush=True)
    print(
        f"\n{len(rows)} cases, {len(rows) - failed} exit 2 with one line, {failed} failed, {time.perf_counter() - t0:.0f} s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
