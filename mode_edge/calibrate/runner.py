"""The layer-streaming calibration run.

Embed every sample once (token embedding + vision tower), then for each decoder layer: load
only that layer's weights, run every sample's hidden state through it while hooks record the
router's real top-k, the MoE input and the attention queries/keys, free the layer, go on.
After each layer its statistics and the hidden states leaving it are written to
STATS_DIR/.partial, so an interrupted run resumes from the last finished layer.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mode_edge.arch import Architecture, open_architecture
from mode_edge.calibrate.activations import Activations, choose_mode
from mode_edge.calibrate.gamma import measure_gamma
from mode_edge.errors import UserError
from mode_edge.files import atomic_path, write_json_atomic
from mode_edge.formats.quant_types import LADDER
from mode_edge.formats.samples import data_hash, load_image, read_samples
from mode_edge.formats.stats import (
    IMATRIX_FILE,
    KEY,
    MODALITIES,
    RED,
    SENS_MODALITIES,
    TEXT,
    ExpertStats,
    save_arrays_atomic,
)
from mode_edge.formats.stats import VERSION as STATS_VERSION
from mode_edge.quantize import default_threads
from mode_edge.signals import (
    GAMMA_REPORTED,
    IMPORTANCES,
    AttentionRecorder,
    DenseFFNRecorder,
    LayerRecorder,
    SharedExpertRecorder,
    key_scores,
    method_imatrix,
    newline_ids,
    query_positions,
    select_key_tokens,
)

PARTIAL = ".partial"


@dataclass
class CalibrationOptions:
    samples: int = 128
    seed: int = 0
    max_length: int = 4096
    rho: float = 0.2
    cap: int = 512
    probes: int = 16
    gamma: float | None = None  # VEQ's gamma; None: measured on `gamma_samples` image samples
    gamma_samples: int = 8
    count_samples: int | None = None  # more samples for the routing counts only (MODE: 512 vs 128)
    types: list[str] = field(default_factory=lambda: [t.name for t in LADDER])
    skip_bad: bool = False
    device: str = "cpu"  # where layers run; statistics and the quantizer stay on the CPU
    offload: str = "auto"  # where hidden states wait between layers: auto, memory or disk

    def key(self) -> dict:
        """What the results depend on (resume only continues a run with the same key)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("skip_bad", "offload")}


@dataclass
class Progress:
    """Callbacks for a UI; all optional."""

    on_start: Callable[[int, int], None] | None = None  # n_layers, n_samples
    on_sample: Callable[[int, int], None] | None = None  # layer, tokens in that sample
    on_layer_done: Callable[[int], None] | None = None
    on_warning: Callable[[str], None] | None = None


def _render_all(cal, opts: CalibrationOptions, data_dir: Path, warn) -> tuple[list, list]:
    samples = read_samples(data_dir, max(opts.samples, opts.count_samples or 0), opts.seed)
    rendered, kept = [], []
    for s in samples:
        image = None
        if s.image is not None:
            try:
                image = load_image(s.image)
            except UserError as e:
                if not opts.skip_bad:
                    raise
                warn(f"skipped: {e.message}")
                continue
        r = cal.render(s, image)
        if len(r.input_ids) > opts.max_length:
            warn(f"skipped a sample of {len(r.input_ids)} tokens (> --max-length {opts.max_length})")
            continue
        rendered.append(r)
        kept.append(s)
    if not rendered:
        raise UserError("no calibration sample is usable", "check the images and --max-length")
    return rendered, kept


def _modalities(
    cal,
    r,
    layer_attn_inputs,
    attn,
    special: set[int],
    newline_ids: set[int],
    im_start,
    rho: float,
    chunk=None,
) -> torch.Tensor:
    ids = torch.from_numpy(r.input_ids)
    image_mask = cal.image_mask(ids)
    mod = torch.full(ids.shape, TEXT, dtype=torch.long)
    if not bool(image_mask.any()):
        return mod
    mod[image_mask] = RED
    img_pos = torch.nonzero(image_mask).flatten()
    queries = query_positions(ids, image_mask, special, newline_ids, im_start)
    if queries.numel() == 0:  # nothing reads the image: no evidence to denoise with
        mod[img_pos] = KEY
        return mod
    x, pe = layer_attn_inputs
    with torch.no_grad():
        q, k, scaling = cal.attention_qk(attn, x, pe)
        scores = key_scores(q, k, scaling, queries.to(q.device), image_mask.to(q.device), chunk).cpu()
    if not bool(scores.any()):  # chunked attention: no query shares a chunk with the image
        mod[img_pos] = KEY
        return mod
    mod[img_pos[select_key_tokens(scores, rho)]] = KEY
    return mod


def _attention_seen(cal, layer) -> tuple[Any, dict, Any]:
    """(attention module, what its hook records, the hook) for one loaded layer."""
    attn = cal.parts(layer).attention
    seen: dict = {}
    hook = attn.register_forward_pre_hook(
        lambda m, a, kw, seen=seen: seen.__setitem__("attn", cal.attention_inputs(a, kw)), with_kwargs=True
    )
    return attn, seen, hook


def _look_ahead(cal, acts: Activations, rendered, states, start: int, key_fn) -> tuple[int, list]:
    """Key-token modalities of the first softmax-attention layer at or after `start`, for the
    layers before it that have none (linear attention): runs those layers once more, forward only."""
    first = next(il for il in range(start, cal.n_layers) if cal.softmax_attention(il))
    # a second copy of every hidden state: on disk unless both copies fit where one was allowed
    n_tokens = sum(len(r.input_ids) for r in rendered)
    mode = "disk" if acts.mode == "disk" else choose_mode("auto", 2 * n_tokens, cal.hidden)
    ahead = Activations(mode, acts.partial / "lookahead", len(rendered), resumable=False)
    src = acts
    for il in range(start, first):
        layer = cal.load_layer(il)
        ahead.begin_layer()
        for i, s in enumerate(states):
            s["hidden"] = src.get(i)
            ahead.put(i, cal.run_layer(layer, il, s).cpu())
            del s["hidden"]
        ahead.end_layer()
        src = ahead
        del layer
    layer = cal.load_layer(first)
    attn, seen, hook = _attention_seen(cal, layer)
    mods = []
    for i, (r, s) in enumerate(zip(rendered, states)):
        s["hidden"] = src.get(i)
        cal.run_layer(layer, first, s)
        mods.append(key_fn(r, seen["attn"], attn, first))
        del s["hidden"]
    hook.remove()
    shutil.rmtree(acts.partial / "lookahead", ignore_errors=True)
    return first, mods


def _ffn_add(rec, weights, x: torch.Tensor, mod: torch.Tensor) -> None:
    """A shared expert's or dense FFN's inputs of one sample: what gate/up read (x) and what down
    reads. weights: (gate, up, down, activation)."""
    wg, wu, _, act = weights
    with torch.no_grad():
        mid = act(x @ wg.T.float()) * (x @ wu.T.float())
    rec.add(rec.inputs[0], x, mod)
    rec.add(rec.inputs[1], mid, mod)


def _ffn_finish(rec, weights, names, types) -> dict:
    """Its sensitivity arrays (a function, so no reference to its weights outlives the layer)."""
    wg, wu, wd, _ = weights
    inp, mid = rec.inputs
    return rec.finish([(names[0], wg, inp), (names[1], wu, inp), (names[2], wd, mid)], types)


def _finished_with(out_dir: Path, identity: dict) -> bool:
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (
        (out_dir / "expert_stats.safetensors").is_file()
        and manifest.get("version") == STATS_VERSION
        and all(manifest.get(k) == v for k, v in identity.items())
    )


def _cpu_copy(experts):
    import copy

    return copy.deepcopy(experts).to("cpu")


def calibrate(
    model: Path | Architecture,
    data_dir: Path,
    out_dir: Path,
    opts: CalibrationOptions | None = None,
    progress: Progress | None = None,
    stop_after_layer: int | None = None,
    attn_implementation: str = "sdpa",
) -> Path:
    """Run calibration; returns out_dir. stop_after_layer simulates an interruption (tests)."""
    opts = opts or CalibrationOptions()
    progress = progress or Progress()
    warn = progress.on_warning or (lambda msg: None)
    torch.manual_seed(opts.seed)
    from mode_edge.formats.quant_types import parse_type

    types = [parse_type(t) for t in opts.types]
    conv = open_architecture(model)
    cal = conv.calibration(attn_implementation=attn_implementation, device=opts.device)
    rendered, kept = _render_all(cal, opts, data_dir, warn)
    out_dir = Path(out_dir)
    partial = out_dir / PARTIAL
    identity = {
        "model": str(Path(conv.ckpt.dir).resolve()),
        "data": data_hash(kept),
        "options": opts.key(),
        "n_samples": len(rendered),
    }
    if _finished_with(out_dir, identity):
        warn(f"{out_dir} already holds statistics for this model, data and options; reusing them")
        return out_dir
    state_path = partial / "state.json"
    n_tokens = sum(len(r.input_ids) for r in rendered)
    acts = Activations(choose_mode(opts.offload, n_tokens, cal.hidden), partial, len(rendered))
    start = 0
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        if state.get("identity") == identity and acts.restore(state):
            start = state["next_layer"]
        else:
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)

    states = [cal.embed(r) for r in rendered]
    first_hidden = [s.pop("hidden") for s in states]
    if start == 0:
        acts.init(first_hidden)
    del first_hidden
    special = cal.special_ids()
    tok = cal.tokenizer
    newlines = newline_ids(tok)
    im_start = cal.turn_start_id()
    if progress.on_start:
        progress.on_start(cal.n_layers, len(rendered))

    t0 = time.perf_counter()
    gamma = _gamma(cal, rendered[: opts.samples], opts, partial, warn)

    def key_fn(r, attn_inputs, attn, il):
        chunk = cal.attention_chunk(il)
        return _modalities(cal, r, attn_inputs, attn, special, newlines, im_start, opts.rho, chunk)

    # key tokens of layers without softmax attention: the last softmax layer's (kept for resume)
    keys_path = partial / "key_tokens.pt"
    key_mods = torch.load(keys_path) if start > 0 and keys_path.is_file() else None
    for il in range(start, cal.n_layers):
        if key_mods is None and not cal.softmax_attention(il):
            _, key_mods = _look_ahead(cal, acts, rendered, states, il, key_fn)
        layer = cal.load_layer(il)
        attn, moe, router, experts, shared = cal.parts(layer)
        is_moe = cal.is_moe(il)  # a dense layer: `moe` is its FFN, measured like a shared expert
        softmax = cal.softmax_attention(il)
        attn, seen, attn_hook = _attention_seen(cal, layer)
        hooks = [  # each hook binds this layer's `seen` (the name is dropped after the layer)
            attn_hook,
            moe.register_forward_pre_hook(lambda m, a, seen=seen: seen.__setitem__("moe_in", a[0])),
            cal.attention_output(attn).register_forward_pre_hook(
                lambda m, a, seen=seen: seen.__setitem__("o_in", a[0])
            ),
        ]
        if is_moe:
            hooks.append(
                router.register_forward_hook(lambda m, a, o, seen=seen: seen.__setitem__("router", o))
            )
        arec = AttentionRecorder()
        srec = SharedExpertRecorder() if shared is not None else None
        drec = None if is_moe else DenseFFNRecorder()
        o_order = cal.o_in_order(il)
        rec = (
            LayerRecorder(
                cal.n_experts,
                cal.hidden,
                cal.expert_ff,
                opts.cap,
                seed=opts.seed * 100003 + il,
                input_scaled=cal.weights_scale_input,
            )
            if is_moe
            else None
        )

        def on_cpu(module):  # statistics are taken on the CPU: a copy when layers run elsewhere
            return None if module is None else (module if opts.device == "cpu" else _cpu_copy(module))

        cpu_experts = on_cpu(experts)
        cpu_shared = None if shared is None else cal.shared_expert_weights(on_cpu(shared))
        cpu_dense = None if is_moe else cal.dense_weights(on_cpu(moe))

        def experts_fn(e, experts=cpu_experts):
            return cal.expert_weights(experts, e)

        acts.begin_layer()
        new_mods = []
        for i, (r, s) in enumerate(zip(rendered, states)):
            s["hidden"] = acts.get(i)
            s_next = cal.run_layer(layer, il, s)
            mod = key_fn(r, seen["attn"], attn, il) if softmax else key_mods[i]
            new_mods.append(mod)
            x = seen["moe_in"].reshape(-1, cal.hidden).cpu()
            full = i < opts.samples  # the samples past --samples only count routing (--count-samples)
            if is_moe:
                indices, weights, probs = cal.routing(seen["router"])
                rec.add(x, indices.cpu(), weights.cpu(), mod, experts_fn, probs.cpu(), counts_only=not full)
            if full:
                arec.add("attn_in", seen["attn"][0], mod)
                o_in = seen["o_in"] if o_order is None else seen["o_in"][..., torch.from_numpy(o_order)]
                arec.add("o_in", o_in, mod)
                if srec is not None:
                    _ffn_add(srec, cpu_shared, x, mod)
                if drec is not None:
                    _ffn_add(drec, cpu_dense, x, mod)
                del o_in
            acts.put(i, s_next.cpu())
            del s["hidden"], s_next, x
            if progress.on_sample:
                progress.on_sample(il, len(r.input_ids))
        for h in hooks:
            h.remove()
        arrays = (
            rec.finish(experts_fn, types, opts.probes, default_threads(), gamma=gamma["gamma"])
            if is_moe
            else {}
        )
        arrays.update(arec.finish(cal.attention_matrices(attn, il), types))
        if srec is not None:
            arrays.update(_ffn_finish(srec, cpu_shared, cal.shared_expert_names(il), types))
        if drec is not None:
            arrays.update(_ffn_finish(drec, cpu_dense, cal.dense_names(il), types))
        save_arrays_atomic(partial / f"layer-{il:03d}.safetensors", arrays)
        if softmax:
            key_mods = new_mods
            with atomic_path(keys_path) as tmp:
                torch.save(key_mods, tmp)
        write_json_atomic(state_path, {"identity": identity, "next_layer": il + 1, **acts.end_layer()})
        # drop every reference to this layer before the next one loads (the closure and the
        # CPU copy of its experts would otherwise keep two layers resident)
        del layer, attn, moe, router, experts, shared, cpu_experts, cpu_shared, cpu_dense, experts_fn
        del rec, arec, srec, drec, seen, hooks, arrays
        if progress.on_layer_done:
            progress.on_layer_done(il)
        if stop_after_layer is not None and il >= stop_after_layer:
            return out_dir

    _finish(out_dir, partial, cal, conv, identity, rendered, types, gamma, time.perf_counter() - t0)
    return out_dir


def _gamma(cal, rendered, opts: CalibrationOptions, partial: Path, warn) -> dict:
    """VEQ's gamma: given, else measured (kept in .partial so a resumed run reuses it), else the
    value VEQ reports for Qwen3-VL."""
    if opts.gamma is not None:
        return {"gamma": float(opts.gamma), "source": "given"}
    path = partial / "gamma.json"
    if path.is_file():
        return json.loads(path.read_text())
    measured = measure_gamma(cal, rendered, opts.gamma_samples) if opts.gamma_samples > 0 else None
    if measured is None:
        warn(
            f"VEQ's gamma not measured (no image sample or --gamma-samples 0); using the reported {GAMMA_REPORTED}"
        )
        out = {"gamma": GAMMA_REPORTED, "source": "reported (VEQ, Qwen3-VL)"}
    else:
        out = {**measured, "source": "measured"}
    write_json_atomic(path, out)
    return out


def _finish(
    out_dir: Path, partial: Path, cal, conv, identity: dict, rendered, types, gamma: dict, seconds: float
) -> None:
    from safetensors.numpy import load_file

    layers = {il: load_file(str(partial / f"layer-{il:03d}.safetensors")) for il in range(cal.n_layers)}
    moe = [il for il in range(cal.n_layers) if cal.is_moe(il)]
    n_img = sum(int(cal.image_mask(r.input_ids).sum()) for r in rendered)
    n_tok = sum(len(r.input_ids) for r in rendered)
    manifest = {
        "model_type": conv.ckpt.config.get("model_type"),
        "arch": conv.arch,
        "model_name": conv.model_name,
        **identity,
        "n_layers": cal.n_layers,
        "n_experts": cal.n_experts,
        "top_k": cal.top_k,
        "hidden": cal.hidden,
        "expert_ff": cal.expert_ff,
        "modalities": list(MODALITIES),
        "types": [t.name for t in types],
        "sensitivity_axes": ["all", "gate", "up", "down"],
        "sensitivity_modalities": list(SENS_MODALITIES),
        "importances": list(IMPORTANCES),
        "gamma": gamma["gamma"],
        "gamma_info": gamma,
        "tokens": {"total": n_tok, "image": n_img, "text": n_tok - n_img},
        "moe_layers": moe,
        "gguf_names": {str(il): list(cal.gguf_expert_names(il)) for il in moe},
        "attn_tensors": {str(il): [list(x) for x in cal.attention_names(il)] for il in range(cal.n_layers)},
    }
    for key, prefix, names in (
        ("shared_tensors", "shexp", cal.shared_expert_names),
        ("dense_tensors", "dense", cal.dense_names),
    ):
        inputs = (f"{prefix}_in", f"{prefix}_in", f"{prefix}_mid")
        listed = {
            str(il): [[n, k] for n, k in zip(names(il), inputs)]
            for il in range(cal.n_layers)
            if f"{prefix}_sensitivity" in layers[il]
        }
        if listed:
            manifest[key] = listed
    stats = ExpertStats(manifest, layers)
    stats.save(out_dir)
    method_imatrix(stats, "plain").save(out_dir / IMATRIX_FILE)
    write_json_atomic(out_dir / "run.json", {"seconds": round(seconds, 2), "tokens": n_tok})
    shutil.rmtree(partial)
