"""Measure what the demo model's card reports: accuracy per task family through llama.cpp (F32
GGUF, `mode-edge eval`) and through transformers, and how often each modality picks each
expert on the calibration split.

    python examples/demo_model/report.py examples/demo-model --gguf-dir /tmp/demo-f32 -o report.json
    python examples/demo_model/report.py --card examples/demo-model/README.md --from report.json \
        --training examples/demo-model/training.json [--training stage2.json] --command "..." …

The second form writes the model card from a report and the trainer's records.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's testbed/


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, nargs="?")
    ap.add_argument("--card", type=Path, help="write the model card here (with --from and --training)")
    ap.add_argument("--from", dest="from_", type=Path)
    ap.add_argument("--training", type=Path, action="append", default=[])
    ap.add_argument("--command", action="append", default=[])
    ap.add_argument("--note", type=Path, help="markdown appended to the card (limits, what worked)")
    ap.add_argument("--gguf-dir", type=Path, help="where the F32 GGUF goes (converted if missing)")
    ap.add_argument("--test", type=int, default=520, help="test samples (families alternate)")
    ap.add_argument("--calibration", type=int, default=256, help="calibration samples for routing statistics")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("-o", "--output", type=Path)
    a = ap.parse_args()
    if a.card:
        a.card.write_text(
            card(json.loads(a.from_.read_text()), [json.loads(p.read_text()) for p in a.training], a.command)
            + (a.note.read_text() if a.note else "")
        )
        return

    import torch
    from transformers import Qwen3VLMoeForConditionalGeneration

    from mode_edge.evaluate import evaluate, tasks
    from mode_edge.gguf.export import export_model
    from testbed.train import Encoder, evaluate_hf, routing_counts, routing_summary

    if a.threads:
        torch.set_num_threads(a.threads)
    if not any(a.gguf_dir.glob("*-f32.gguf")):
        export_model(a.model, a.gguf_dir, "f32")
    t = time.perf_counter()
    lc = evaluate(a.gguf_dir, tasks="test", limit=a.test, threads=a.threads)
    lc_seconds = time.perf_counter() - t
    model = Qwen3VLMoeForConditionalGeneration.from_pretrained(a.model, dtype=torch.float32).eval()
    enc = Encoder.from_dir(a.model)
    hf = evaluate_hf(model, enc, tasks.split_examples("test", a.test))
    counts = routing_counts(model, enc, tasks.split_examples("calibration", a.calibration))
    summary = routing_summary(counts)
    text_share = counts[..., 0] / np.maximum(1, counts.sum(-1))
    report = {
        "llama_cpp": {
            "families": lc.families,
            "by_task": lc.by_task,
            "seconds": lc_seconds,
            "samples": lc.samples,
        },
        "transformers": hf,
        "routing": {
            **summary,
            "counts": counts.tolist(),
            "text_share": text_share.round(4).tolist(),
            "samples": a.calibration,
        },
        "safetensors_bytes": sum(p.stat().st_size for p in a.model.glob("*.safetensors")),
    }
    a.output.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("transformers",)}, indent=1))
    print(
        json.dumps(
            {
                "llama_cpp": lc.families,
                "vision_share": summary["vision_share"],
                "mostly_text_experts": summary["mostly_text_experts"],
            },
            indent=1,
        )
    )


def _weights(w: dict | None) -> str:
    return "uniform" if not w else ", ".join(f"{k} {v:g}" for k, v in w.items())


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def card(rep: dict, stages: list[dict], commands: list[str]) -> str:
    from mode_edge.evaluate import tasks

    c = stages[0]["config"]
    v = stages[-1]["config"]  # the model as trained last (its vision tower may have grown: --grow-vision)
    lc, hf, ro = rep["llama_cpp"], rep["transformers"], rep["routing"]
    counts = np.array(ro["counts"])  # [L, E, 2]
    L, E = counts.shape[:2]
    lines = [
        "# demo-model: a small Qwen3-VL-MoE trained on synthetic image+text tasks",
        "",
        "The bundled model of mode-edge: a `Qwen3VLMoeForConditionalGeneration` trained from scratch here,",
        "offline, on the tasks of `mode_edge/evaluate/tasks.py`, so that the project can show what",
        "per-expert mixed precision does on a real MoE-VLM without downloading one. Its pictures are",
        f"{tasks.IMAGE_SIZE}x{tasks.IMAGE_SIZE} px and mostly plain background, so image tokens "
        "dominate every prompt, as in real VLM use.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| decoder | {c['n_layers']} layers, all MoE: {c['n_experts']} routed experts, top-{c['top_k']}, "
        f"hidden {c['hidden']}, expert width {c['expert_ff']} (multiples of 256: K-quants apply) |",
        f"| vision tower | {v['vision_depth']} blocks, width {v['vision_hidden']}, MLP width "
        f"{v.get('vision_ff') or 2 * v['vision_hidden']}, patch 16, merge 2x2, "
        f"deepstack; a {tasks.IMAGE_SIZE} px picture is {(tasks.IMAGE_SIZE // 32) ** 2} tokens |",
        f"| tokenizer | byte-level BPE, {c['vocab_size']} tokens, Qwen's pre-tokenizer and special tokens, "
        "trained on the generator's text; Qwen's chat template |",
        f"| weights | bfloat16 safetensors, {rep['safetensors_bytes'] / 1e6:.1f} MB |",
        "| training | loss on answer tokens (and their `<|im_end|>`) only; router load-balancing loss "
        f"(coefficient {c['router_aux_loss_coef']}) on |",
        "",
        "## How it was made",
        "",
        "```bash",
        *commands,
        "```",
        "",
        "| stage | seed | steps | rows per step | task weights | learning rate | wall time | threads |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, st in enumerate(stages):
        sc = st["config"]
        lines.append(
            f"| {i + 1} | {sc['seed']} | {sc['steps']} (data from step {sc.get('data_offset', 0)}) | "
            f"{sc['vision_rows']} picture + {sc['text_rows']}x{sc['text_turns']}-turn text | "
            f"{_weights(sc.get('task_weights'))}{'; curriculum' if sc.get('curriculum') else ''} | {sc['lr']:g} peak, warmup {sc['warmup']}, cosine | {st['train_seconds'] / 60:.1f} min | "
            f"{st['torch_threads']} |"
        )
    lines += [
        f"\nStage {i + 1}: {st['config']['note']}." for i, st in enumerate(stages) if st["config"].get("note")
    ]
    lines += [
        "",
        "CPU only (2 cores, shared with other work in stages 1-2). Given the seed, the thread "
        "count and this repository, the run is deterministic (a test checks this on a small model).",
        "Each step's data is a fixed function of the step (`testbed.train.training_rows`).",
        "",
        "## Accuracy (held-out test split, greedy, exact match)",
        "",
        f"F32 GGUF (`mode-edge convert examples/demo-model -o out --precision f32`) evaluated through "
        f"llama.cpp with its mmproj (`mode-edge eval out/demo-model-f32.gguf --limit {lc['samples']}`):",
        "",
        "| family / task | samples | llama.cpp F32 | transformers |",
        "|---|---|---|---|",
    ]
    for fam in ("vision", "text"):
        d = lc["families"][fam]
        lines.append(f"| **{fam}** | {d['n']} | **{_pct(d['accuracy'])}** | {_pct(hf[fam])} |")
        for t, v in lc["by_task"].items():
            if v["family"] == fam:
                lines.append(f"| {t} | {v['n']} | {_pct(v['accuracy'])} | {_pct(hf[t])} |")
    text_share = counts[..., 0] / np.maximum(1, counts.sum(-1))
    mostly = ro["mostly_text"]
    lines += [
        "",
        "transformers: the same test samples through `Qwen3VLMoeForConditionalGeneration` (bf16 weights "
        "run in f32), greedy decoding decided by teacher forcing.",
        "",
        "## Routing: how often each modality picks each expert",
        "",
        f"Top-{c['top_k']} selections over the first {ro['samples']} samples of the calibration split "
        "(prompts as calibration renders them; every non-image token counts as text):",
        "",
        f"- vision share of all selections: **{_pct(ro['vision_share'])}**",
        f"- experts whose selections are mostly (> 50%) text: **{ro['mostly_text_experts']}** of {L * E}: "
        + ", ".join(f"layer {l} expert {e} ({_pct(s)} text)" for l, e, s in mostly),
        "",
        "Share of each expert's selections that are text tokens (rows: layers, columns: experts; "
        "in brackets, the expert's share of all the layer's selections):",
        "",
        "| layer | " + " | ".join(str(e) for e in range(E)) + " |",
        "|---|" + "---|" * E,
    ]
    for l in range(L):
        tot = counts[l].sum()
        cells = [f"{100 * text_share[l, e]:.0f}% ({100 * counts[l, e].sum() / tot:.0f}%)" for e in range(E)]
        lines.append(f"| {l} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Calibration data",
        "",
        "`examples/demo-model/calibration/` holds the first 128 samples of the calibration split "
        "(regenerate with `python examples/demo_model/make_data.py examples/demo-model/calibration "
        "--split calibration -n 128`):",
        "",
        "```bash",
        "mode-edge calibrate examples/demo-model --data examples/demo-model/calibration -o stats/",
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
