"""Measure what the demo model's card reports: accuracy per task family through llama.cpp (F32
GGUF, `mode-edge eval`) and through transformers, and how often each modality picks each
expert on the calibration split.

    python examples/demo_model/report.py examples/demo-model --gguf-dir /tmp/demo-f32 -o report.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--gguf-dir", type=Path, required=True, help="where the F32 GGUF goes (converted if missing)")
    ap.add_argument("--test", type=int, default=520, help="test samples (families alternate)")
    ap.add_argument("--calibration", type=int, default=256, help="calibration samples for routing statistics")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("-o", "--output", type=Path, required=True)
    a = ap.parse_args()

    import torch
    from transformers import Qwen3VLMoeForConditionalGeneration

    from mode_edge.evaluate import evaluate
    from mode_edge.gguf.export import export_model
    from mode_edge.testbed import tasks
    from mode_edge.testbed.train import Encoder, evaluate_hf, routing_counts, routing_summary

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
        "llama_cpp": {"families": lc.families, "by_task": lc.by_task, "seconds": lc_seconds, "samples": lc.samples},
        "transformers": hf,
        "routing": {**summary, "counts": counts.tolist(), "text_share": text_share.round(4).tolist(),
                    "samples": a.calibration},
        "safetensors_bytes": sum(p.stat().st_size for p in a.model.glob("*.safetensors")),
    }
    a.output.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("transformers",)}, indent=1))
    print(json.dumps({"llama_cpp": lc.families, "vision_share": summary["vision_share"],
                      "mostly_text_experts": summary["mostly_text_experts"]}, indent=1))


if __name__ == "__main__":
    main()
