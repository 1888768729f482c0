"""Measure what the 64-expert testbed's card reports, and write the card.

    python -m testbed.report_large measure [--model DIR] --gguf-dir /tmp/t64-f32 -o report.json
    python -m testbed.report_large card report.json [--quality quality.txt] [--notes notes.md]
        [--quality-notes q.md] -o examples/testbed-64e/README.md

measure: the F32 GGUF through llama.cpp (`mode-edge eval`, hard-test) and the checkpoint through
transformers (greedy generation, sample by sample, and teacher-forced accuracy); routing by
modality on hard-calibration for the testbed and for the demo model it was upcycled from.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from testbed.build_large import DEMO, RECIPE, default_dir


def hf_greedy(model, enc, examples, max_new: int = 16) -> list[str]:
    """transformers' own greedy generation, one sample at a time (no padding), answer text only."""
    import torch

    stop = [enc.end_id, enc.pad_id]
    outs = []
    for ex in examples:
        ids, kw = enc.single(ex)
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=enc.pad_id,
                **kw,
            )
        outs.append(enc.tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True).strip())
    return outs


HIST_BINS = [0, 0.1, 0.25, 0.5, 0.75, 1.0001]


def _shares(c: np.ndarray) -> np.ndarray:
    return c / max(1, c.sum())


def routing_stats(counts: np.ndarray, siblings: int = 1) -> dict:
    """counts [L, E, 2] (0 text, 1 vision) -> per layer: how uneven the routing is (coefficient of
    variation of the experts' selection shares, overall and per modality; the busiest 8's share;
    never-selected experts), how modality-specific (text share per expert; experts preferring
    one modality: share of the layer's vision selections >= 2x its share of the text ones, or the
    reverse) and, for an upcycled model, how far an old expert's `siblings` parts have diverged."""
    L, E, _ = counts.shape
    layers = []
    for l in range(L):
        c = counts[l].astype(np.float64)
        tot, txt, vis = _shares(c.sum(-1)), _shares(c[:, 0]), _shares(c[:, 1])
        text_share = c[:, 0] / np.maximum(1, c.sum(-1))
        ratio = (vis + 1e-12) / (txt + 1e-12)
        d = {
            "cv": float(tot.std() / tot.mean()),
            "cv_vision": float(vis.std() / vis.mean()),
            "cv_text": float(txt.std() / txt.mean()),
            "busiest8_share": float(np.sort(tot)[::-1][:8].sum()),
            "never": int((c.sum(-1) == 0).sum()),
            "mostly_text": int((text_share > 0.5).sum()),
            "vision_preferring": int(((ratio >= 2) & (c.sum(-1) > 0)).sum()),
            "text_preferring": int(((ratio <= 0.5) & (c.sum(-1) > 0)).sum()),
            "text_share_of_layer": float(c[:, 0].sum() / max(1, c.sum())),
            # over the experts selected at all
            "text_share_hist": np.histogram(text_share[c.sum(-1) > 0], bins=HIST_BINS)[0].tolist(),
        }
        if siblings > 1:
            g = tot.reshape(-1, siblings)
            ts = text_share.reshape(-1, siblings)
            d["sibling_cv"] = float(np.mean(g.std(1) / np.maximum(g.mean(1), 1e-12)))
            d["sibling_text_range"] = float(np.mean(ts.max(1) - ts.min(1)))
        layers.append(d)
    return {
        "layers": layers,
        "vision_share": float(counts[..., 1].sum() / max(1, counts.sum())),
        "mostly_text_experts": int(sum(d["mostly_text"] for d in layers)),
        "experts": L * E,
    }


def held_out(model, enc, start: int, n: int) -> dict:
    """Accuracy on a hard-test slice that no choice was made on (the rule: choices are judged on
    slices from 100000 on, never on the reported first samples), with its sample counts."""
    from collections import Counter

    from mode_edge.evaluate import tasks
    from testbed.train import evaluate_hf

    ex = tasks.split_examples("hard-test", n, start=start)
    counts = Counter([e.task for e in ex] + [e.family for e in ex])
    return {"start": start, "n": n, "accuracy": evaluate_hf(model, enc, ex), "samples": dict(counts)}


def measure(a) -> dict:
    import torch
    from transformers import Qwen3VLMoeForConditionalGeneration

    from mode_edge.evaluate import evaluate, tasks
    from mode_edge.gguf.export import export_model
    from testbed.train import Encoder, evaluate_hf, routing_counts

    if a.threads:
        torch.set_num_threads(a.threads)
    test = tasks.split_examples("hard-test", a.test)
    cal = tasks.split_examples("hard-calibration", a.calibration)
    if not any(a.gguf_dir.glob("*-f32.gguf")):
        export_model(a.model, a.gguf_dir, "f32")
    t = time.perf_counter()
    lc = evaluate(a.gguf_dir, tasks="hard-test", limit=a.test, threads=a.threads)
    lc_seconds = time.perf_counter() - t
    rep: dict = {"llama_cpp": {"families": lc.families, "by_task": lc.by_task, "seconds": lc_seconds}}
    for name, path in (("testbed", a.model), ("demo", DEMO)):
        model = Qwen3VLMoeForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
        enc = Encoder.from_dir(path)
        counts = routing_counts(model, enc, cal)
        rep[name] = {
            "teacher_forced": evaluate_hf(model, enc, test),
            "routing": routing_stats(counts, RECIPE["upcycle"] if name == "testbed" else 1),
            "counts": counts.tolist(),
        }
        if name == "testbed":
            rep[name]["held_out"] = held_out(model, enc, a.heldout_start, a.heldout)
            t = time.perf_counter()
            outs = hf_greedy(model, enc, test)
            lco = [p["output"].strip() for p in lc.predictions]
            rep["greedy"] = {
                "seconds": time.perf_counter() - t,
                "same": int(sum(x == y for x, y in zip(outs, lco))),
                "n": len(outs),
                "differ": [
                    {"i": i, "task": ex.task, "transformers": x, "llama_cpp": y, "answer": ex.answer}
                    for i, (ex, x, y) in enumerate(zip(test, outs, lco))
                    if x != y
                ],
                "transformers_correct": int(sum(x == ex.answer for x, ex in zip(outs, test))),
            }
        print(json.dumps({name: rep[name]["teacher_forced"]}), file=sys.stderr, flush=True)
    rep["safetensors_bytes"] = sum(p.stat().st_size for p in a.model.glob("*.safetensors"))
    rep["training"] = json.loads((a.model / "training.json").read_text())
    rep["samples"] = {"test": a.test, "calibration": a.calibration}
    return rep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--model", type=Path, default=None, help="default: build-large's cache folder")
    m.add_argument(
        "--gguf-dir", type=Path, required=True, help="where the F32 GGUF goes (converted if missing)"
    )
    m.add_argument("--test", type=int, default=400)
    m.add_argument("--calibration", type=int, default=256)
    m.add_argument("--threads", type=int, default=None)
    m.add_argument("--heldout-start", type=int, default=200000, help="first sample of the held-out slice")
    m.add_argument("--heldout", type=int, default=800, help="held-out samples (transformers)")
    m.add_argument("-o", "--output", type=Path, required=True)
    h = sub.add_parser("heldout", help="accuracy of a model on a held-out hard-test slice (transformers)")
    h.add_argument("--model", type=Path, required=True)
    h.add_argument("--start", type=int, default=200000)
    h.add_argument("--n", type=int, default=800)
    c = sub.add_parser("card")
    c.add_argument("report", type=Path)
    c.add_argument("--quality", type=Path, default=None, help="benchmarks/quality.py's quality.txt")
    c.add_argument("--notes", type=Path, default=None, help="markdown added after the routing section")
    c.add_argument("--quality-notes", type=Path, default=None, help="markdown added after the quality table")
    c.add_argument("-o", "--output", type=Path, required=True)
    a = ap.parse_args()
    if a.cmd == "measure":
        a.model = a.model or default_dir()
        a.output.write_text(json.dumps(measure(a), indent=1))
    elif a.cmd == "heldout":
        import torch
        from transformers import Qwen3VLMoeForConditionalGeneration

        from testbed.train import Encoder

        model = Qwen3VLMoeForConditionalGeneration.from_pretrained(a.model, dtype=torch.float32)
        r = held_out(model.eval(), Encoder.from_dir(a.model), a.start, a.n)
        print(json.dumps({k: round(100 * v, 1) for k, v in r["accuracy"].items()}))
    else:
        from testbed.card_large import card

        rep = json.loads(a.report.read_text())

        def read(f: Path | None) -> str | None:
            return f.read_text() if f else None

        a.output.write_text(card(rep, read(a.quality), read(a.notes), read(a.quality_notes)))


if __name__ == "__main__":
    main()
