"""OUT_DIR/README.md: the output folder of `convert` as a Hugging Face model card.

Front matter (base_model, tags, quantization), what each file holds (bytes, types, experts per
type), the exact command that made it, how to run it, and -- once `mode-edge eval OUT_DIR` has
written OUT_DIR/eval.json -- the measured quality. Everything is read back from the written
files (gguf-py) and report.json, so the card says what is on disk.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from mode_edge.files import atomic_path, write_json_atomic

CARD = "README.md"
EVAL_FILE = "eval.json"
SOURCE_FILE = "card.json"  # what the card was made from, so `eval` can rewrite it


ARGV: list[str] | None = None  # set by the CLI's main (in-process callers pass their own argv)


def command_line() -> str:
    return "mode-edge " + shlex.join(sys.argv[1:] if ARGV is None else ARGV)


def _yaml_list(items: list[str]) -> str:
    return "\n".join(f"  - {x}" for x in items)


def write_card(out_dir: Path, text_path: Path, mmproj_path: Path, model_dir: Path, command: str) -> Path:
    from mode_edge.gguf import summarize

    out_dir = Path(out_dir)
    text, mm = summarize(text_path), summarize(mmproj_path)
    report = _read_json(out_dir / "report.json")
    grouped = bool(text.get("expert_groups"))
    base = Path(model_dir).resolve().name
    quant = (
        report.get("method")
        and f"{report['method']} at {report['budget']}"
        or ", ".join(list(text["types"])[:3])
    )
    tags = [
        "gguf",
        "mode-edge",
        "mixture-of-experts",
        "image-text-to-text",
        "llama.cpp",
        *(["mixed-precision-experts"] if grouped else []),
    ]
    lines = [
        "---",
        f"base_model: {base}",
        "tags:",
        _yaml_list(tags),
        f"quantization: {json.dumps(quant)}",
        "library_name: gguf",
        "---",
        "",
        f"# {base} — GGUF by mode-edge ({quant})",
        "",
    ]
    if report:
        lines += [
            f"{report['routed_expert_bpw']:.3f} bits per routed-expert weight, {report['total_bytes']:,} bytes "
            f"in both files; method `{report['method']}` ({report.get('importance') or 'plain'} importance). "
            "Details: [report.md](report.md), [report.json](report.json), the plan: [plan.json](plan.json), "
            "[plan.png](plan.png).",
            "",
        ]
    lines += ["## Files", "", "| file | bytes | types |", "|---|---:|---|"]
    for info in (text, mm):
        types = ", ".join(f"{k} ×{v['tensors']}" for k, v in info["types"].items())
        lines.append(f"| `{Path(info['path']).name}` | {info['file_bytes']:,} | {types} |")
    if text["experts"]:
        lines += ["", "Routed experts per type:", "", "| tensor | experts by type |", "|---|---|"]
        for name, counts in text["experts"].items():
            lines.append(f"| `{name}` | " + ", ".join(f"{t} ×{n}" for t, n in sorted(counts.items())) + " |")
    lines += [
        "",
        "## Made with",
        "",
        "```bash",
        command,
        "```",
        "",
        "## Run it",
        "",
        "```bash",
        f"mode-edge chat {out_dir.name}/ --image photo.jpg",
        f"mode-edge serve {out_dir.name}/      # OpenAI-compatible API on http://127.0.0.1:8080/v1",
        "```",
        "",
    ]
    if grouped:
        lines += [
            "The experts of one tensor have different types (mode-edge's expert groups, "
            "`mode_edge.expert_groups` in the header): the file runs in mode-edge's patched llama.cpp "
            "(`mode-edge runtime build`), not in a stock llama.cpp. `--granularity tensor` files run anywhere.",
            "",
        ]
    else:
        lines += [
            "One type per tensor: a stock GGUF that any llama.cpp with this architecture runs "
            f"(`llama-mtmd-cli -m {text_path.name} --mmproj {mmproj_path.name}`).",
            "",
        ]
    ev = _read_json(out_dir / EVAL_FILE)
    if ev:
        lines += [
            "## Measured quality",
            "",
            f"`mode-edge eval` on {ev['samples']} samples of `{ev['tasks']}`"
            + (f", KL against `{Path(ev['reference']).name}`" if ev.get("reference") else "")
            + ":",
            "",
            "| family | samples | exact match | KL (nats/token) |",
            "|---|---:|---:|---:|",
        ]
        for fam, d in ev["families"].items():
            kl = f"{d['kl']:.2e}" if d.get("kl") is not None else "—"
            lines.append(f"| {fam} | {d['n']} | {100 * d['accuracy']:.1f}% | {kl} |")
        lines.append("")
    else:
        lines += [
            "Quality not measured yet: `mode-edge eval "
            + f"{out_dir.name}/ --reference F32.gguf` adds it here.",
            "",
        ]
    path = out_dir / CARD
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))
    write_json_atomic(
        out_dir / SOURCE_FILE,
        {
            "text": Path(text_path).name,
            "mmproj": Path(mmproj_path).name,
            "model_dir": str(Path(model_dir).resolve()),
            "command": command,
        },
    )
    return path


def record_eval(out_dir: Path, result: dict) -> Path | None:
    """Save an evaluation of the folder's files and rewrite its card (None: no card there)."""
    src = _read_json(Path(out_dir) / SOURCE_FILE)
    if not src:
        return None
    keep = {k: result[k] for k in ("tasks", "samples", "reference", "families", "kl_mean", "top1_agreement")}
    write_json_atomic(Path(out_dir) / EVAL_FILE, keep)
    return write_card(
        out_dir,
        Path(out_dir) / src["text"],
        Path(out_dir) / src["mmproj"],
        Path(src["model_dir"]),
        src["command"],
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
