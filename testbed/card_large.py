"""The 64-expert testbed's card (examples/testbed-64e/README.md) from report_large's measurements."""

from __future__ import annotations


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _routing_rows(name: str, ro: dict) -> list[str]:
    out = []
    for l, d in enumerate(ro["layers"]):
        sib = f"{d['sibling_cv']:.2f} / {100 * d['sibling_text_range']:.0f} pt" if "sibling_cv" in d else "-"
        out.append(
            f"| {name} | {l} | {_pct(d['text_share_of_layer'])} | {d['cv']:.2f} | {d['cv_vision']:.2f} | "
            f"{d['cv_text']:.2f} | {_pct(d['busiest8_share'])} | {d['never']} | {d['mostly_text']} | "
            f"{d['vision_preferring']} / {d['text_preferring']} | "
            + " ".join(str(x) for x in d["text_share_hist"])
            + f" | {sib} |"
        )
    return out


def _build_time(tr: dict) -> str:
    """The build's time: one invocation's wall time when it resumed nothing, else the stages' sum."""
    b = tr.get("build")
    train = f"{tr['train_seconds'] / 60:.1f} min"
    tail = (
        " Trained with torch's deterministic kernels; a rebuild in another session came out close, not"
        " byte-identical (see the notes below)."
        if tr.get("deterministic_kernels")
        else " **Not reproducible to the byte:** trained before the trainer used torch's deterministic"
        " kernels, so a rebuild gives a slightly different model (see the notes below)."
    ) + " A build stopped between stages resumes from the last complete one (DIR.stageN)."
    if b and not b["resumed_stages"]:
        return (
            "**Time to build here from nothing, in one run** (`python -m testbed build-large`, 2 CPU"
            f" cores, the demo model in the repository): **{b['wall_seconds'] / 60:.1f} min** wall, of"
            f" which {train} training." + tail
        )
    how = (
        f"stage {', '.join(map(str, b['resumed_stages']))} came from an earlier invocation, so this is not"
        " one run's time"
        if b
        else "one run's wall time was not recorded"
    )
    return (
        f"**Time to build here from nothing** (2 CPU cores, the demo model in the repository): **{train}**"
        f" of training, the stages' wall times summed ({how}; loading and saving add seconds)." + tail
    )


def _stage_row(n: int, rec: dict) -> str:
    c = rec["config"]
    w = c.get("task_weights")
    weights = "uniform" if not w else ", ".join(f"{k} {v:g}" for k, v in w.items()) + " (others 1)"
    return (
        f"| {n} | {c['steps']} | {c.get('data_offset', 0)} | {c['vision_rows']} picture + "
        f"{c['text_rows']}x{c['text_turns']}-turn text | {weights} | {c['lr']:g} peak, warmup {c['warmup']}, "
        f"to {c['min_lr_ratio']:g}x | {rec['train_seconds'] / 60:.1f} min | {rec['torch_threads']} |"
    )


def card(
    rep: dict, quality: str | None = None, notes: str | None = None, quality_notes: str | None = None
) -> str:
    tr = rep["training"]
    c = tr["config"]
    lc, tb, demo, gr = rep["llama_cpp"], rep["testbed"], rep["demo"], rep["greedy"]
    ho = tb.get("held_out")  # reports before it was measured have no held-out column
    E = c["n_experts"]
    lines = [
        "# testbed-64e: a Qwen3-VL-MoE with 64 fine-grained experts, top-8, on harder tasks",
        "",
        "The second testbed (issue 19): the geometry of real MoE-VLMs (Qwen3-VL-30B-A3B routes 8 of 128",
        "experts per token) on tasks whose answers are not near-certain, so that quantization moves",
        "accuracy. Too big for the repository (about "
        f"{rep['safetensors_bytes'] / 1e6:.0f} MB in bf16): `python -m testbed build-large` builds it",
        "into `~/.cache/mode-edge/testbed-64e` (or `$MODE_EDGE_CACHE/testbed-64e`) from the bundled demo",
        "model with the fixed recipe below, and `benchmarks/quality.py --suite hard` takes it.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| decoder | {c['n_layers']} layers, all MoE: {E} routed experts, top-{c['top_k']}, hidden {c['hidden']}, "
        f"expert width {c['expert_ff']} (multiples of 256: K- and IQ-types apply to every expert matrix) |",
        f"| vision tower | the demo model's ({c['vision_depth']} blocks, width {c['vision_hidden']}, MLP "
        f"{c['vision_ff']}); a 320 px picture is 100 tokens |",
        "| tokenizer, chat template | the demo model's |",
        f"| router | load-balancing loss coefficient {c['router_aux_loss_coef']} (Qwen3-MoE's) |",
        "",
        "## How it was made",
        "",
        "```bash",
        "python -m testbed build-large            # --out DIR, --threads N",
        "```",
        "",
        f"1. **Upcycling** (`testbed/upcycle.py`, mode `{c['upcycle_mode']}`): each of the demo model's 16 experts "
        f"per layer becomes {c['upcycle']} experts. New expert j holds the old expert's units j, j+4, ... (a",
        "   quarter, its down projection x4) and fills the rest of its 256-wide FFN with fresh units whose",
        "   down projection is 0; the router row is copied for each (plus noise "
        f"{c['upcycle_router_noise']} x its std), top-k 2 -> 8. Without the router noise this is exactly the",
        "   demo model's function (tests/testbed/test_upcycle.py). Copies instead of parts hardly diverged:",
        "   in a 600-step trial (noise 0.01) the copies' routing stayed close together (issue 19's notes).",
        "2. **Training** on the hard suite (`mode_edge/evaluate/hard_tasks.py`, split hard-train), AdamW,",
        "   cosine schedule; each stage continues the last one's checkpoint and data stream:",
        "",
        "| stage | steps | data from step | rows per step | task weights | learning rate | wall time | threads |",
        "|---|---|---|---|---|---|---|---|",
        *(_stage_row(n, s) for n, s in enumerate(tr.get("stages", [tr]), 1)),
        "",
        _build_time(tr),
        "",
        "Held-out accuracy during training (transformers, hard-test samples from 100000 on):",
        "",
        "| step | vision | text |",
        "|---|---|---|",
        *(
            f"| {h['step']} | {_pct(h['held_out'].get('vision'))} | {_pct(h['held_out'].get('text'))} |"
            for h in tr["history"]
        ),
        "",
        "## Tasks (hard suite)",
        "",
        "Vision: count 1-7 shapes; count the shapes of one colour among two colours; name the colour of",
        "the circle/square/triangle among 2-3; which quadrant a named colour is in; which of three shapes",
        "is in the middle; which of three is biggest; read a two-digit number; read a word in a small font. Text:",
        "two-digit additions, three-term additions, reverse 4-7 letters, sort 4-7 digits (repeats",
        "allowed), the initial of a made-up capital, the letter k (1-4) after a letter. The test split",
        "alternates the families and cycles through each family's tasks.",
        "",
        f"## Accuracy (hard-test, first {rep['samples']['test']} samples, greedy, exact match)",
        "",
        "| family / task | samples | llama.cpp F32 | transformers | demo model (transformers) |"
        + (f" held-out {ho['start']}-{ho['start'] + ho['n'] - 1} (transformers) |" if ho else ""),
        "|---|---|---|---|---|" + ("---|" if ho else ""),
    ]

    def row(key: str, n: int, acc: float, bold: bool) -> str:
        b = "**" if bold else ""
        r = (
            f"| {b}{key}{b} | {n} | {b}{_pct(acc)}{b} | {_pct(tb['teacher_forced'][key])} | "
            f"{_pct(demo['teacher_forced'][key])} |"
        )
        return r + (f" {_pct(ho['accuracy'][key])} ({ho['samples'][key]}) |" if ho else "")

    for fam in ("vision", "text"):
        d = lc["families"][fam]
        lines.append(row(fam, d["n"], d["accuracy"], True))
        for t, v in lc["by_task"].items():
            if v["family"] == fam:
                lines.append(row(t, v["n"], v["accuracy"], False))
    one = 100 / min(lc["families"][f]["n"] for f in ("vision", "text"))
    lines += [
        "",
        f"One sample is {one:.2f} points of a family. llama.cpp: `mode-edge convert DIR -o out --precision f32`,",
        "`mode-edge eval out/ --tasks hard-test --limit 400`. transformers: the checkpoint in f32 through",
        "`Qwen3VLMoeForConditionalGeneration`, teacher-forced exact match; and its own greedy `generate`",
        f"sample by sample: **{gr['same']} of {gr['n']} answers are the same string as llama.cpp's**"
        + (
            "."
            if not gr["differ"]
            else "; where not: "
            + "; ".join(
                f"#{d['i']} {d['task']}: transformers {d['transformers']!r}, llama.cpp {d['llama_cpp']!r} (answer {d['answer']!r})"
                for d in gr["differ"][:10]
            )
            + "."
        ),
        "",
        "## Routing by modality",
        "",
        f"Top-k selections over the first {rep['samples']['calibration']} samples of hard-calibration "
        f"(every non-image token counts as text). Vision share of all selections: testbed "
        f"**{_pct(tb['routing']['vision_share'])}**, demo model {_pct(demo['routing']['vision_share'])}. "
        f"Experts mostly (> 50 %) text: testbed **{tb['routing']['mostly_text_experts']} of "
        f"{tb['routing']['experts']}**, demo model {demo['routing']['mostly_text_experts']} of "
        f"{demo['routing']['experts']}.",
        "",
        "Per layer: CV = coefficient of variation of the experts' selection shares (0 = uniform), over all",
        "tokens / vision / text; busiest 8 = the share of the layer's selections taken by its 8 most",
        "selected experts (uniform: 8/E); v/t-preferring = experts whose share of the layer's vision",
        "selections is at least twice their share of its text selections, or the reverse; text-share",
        "histogram = selected experts whose selections are 0-10 / 10-25 / 25-50 / 50-75 / 75-100 % text;",
        "siblings = for the 4 parts of one demo expert, the CV of their frequencies and the range of",
        "their text shares (mean over the 16 groups) -- how far the parts have diverged.",
        "",
        "| model | layer | text share | CV | CV vision | CV text | busiest 8 | never | mostly text | "
        "v / t-preferring | text-share histogram | siblings CV / text range |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *_routing_rows(f"testbed ({E} experts)", tb["routing"]),
        *_routing_rows("demo (16 experts)", demo["routing"]),
        "",
    ]
    if notes:
        lines += [notes.rstrip(), ""]
    if quality:
        lines += [
            "## Quality at equal bytes (benchmarks/quality.py --suite hard)",
            "",
            "```",
            quality.rstrip(),
            "```",
            "",
        ]
    if quality_notes:
        lines += [quality_notes.rstrip(), ""]
    return "\n".join(lines)
