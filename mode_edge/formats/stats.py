"""ExpertStats: what calibration measured, the file every allocation method reads.

    STATS_DIR/manifest.json           schema, version, model, data hash, options, shapes, names
    STATS_DIR/expert_stats.safetensors
        layer.{l}.counts        int64   [3, E]            top-k selections by modality
        layer.{l}.weight_sums   float64 [3, E]            summed routing weights by modality (renormalised)
        layer.{l}.prob_sums     float64 [3, E]            summed router probabilities before renormalisation
        layer.{l}.in_sq         float32 [3, 2, E, H]      sum x^2 of gate/up inputs (plain, weighted)
        layer.{l}.mid_sq        float32 [3, 2, E, I]      sum x^2 of down inputs (plain, weighted)
        layer.{l}.sensitivity   float64 [n_imp, E, 4, n_types, 3] MSE per importance matrix
                                                          (manifest importances) x (all/gate/up/down
                                                          quantized) x (text, vision_key, all routed)
        layer.{l}.hessian_trace float64 [E, 3]            Hutchinson tr(H) of the output error (data)
        layer.{l}.hessian_norm  float64 [E, 3]            MoPEQ's Hutchinson tr(H) of ||W||_F (no data)
        layer.{l}.key_tokens    int64   [2]               key image tokens, all image tokens
        layer.{l}.attn_tokens   int64   [3]               tokens by modality
        layer.{l}.attn_in_sq    float32 [3, H]            sum x^2 of the attention input by modality
        layer.{l}.o_in_sq       float32 [3, D]            sum x^2 of o_proj's input by modality
        layer.{l}.attn_sensitivity float64 [n_attn, n_types, 3]  expected output error per matrix
                                                          (manifest attn_tensors: names, inputs)
        layer.{l}.shexp_tokens, shexp_in_sq [3, H], shexp_mid_sq [3, Is], shexp_sensitivity
                                [3, n_types, 3]   the same for the shared expert's gate, up and
                                                  down, where the model has one (manifest
                                                  shared_tensors)
        layer.{l}.dense_tokens, dense_in_sq [3, H], dense_mid_sq [3, I], dense_sensitivity
                                [3, n_types, 3]   the same for a dense (non-MoE) layer's FFN
                                                  (manifest dense_tensors)

Routed-expert arrays (counts ... hessian_norm, key_tokens) exist only for the MoE layers
(manifest moe_layers, all layers when absent); a dense layer has the attention and dense_ ones.
    STATS_DIR/imatrix.gguf            plain importance matrix (llama.cpp format) for pack

Modalities are ("text", "vision_key", "vision_red"); vision = key + redundant. The manifest
also records gamma (VEQ's text/vision gradient-norm ratio, mode_edge.signals.gamma) and where it
came from (measured / given / reported).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mode_edge.errors import UserError
from mode_edge.files import atomic_path, read_json, write_json_atomic

SCHEMA = "mode-edge/expert-stats"
VERSION = 3
MODALITIES = ("text", "vision_key", "vision_red")
TEXT, KEY, RED = 0, 1, 2  # first axis of counts / weight_sums / in_sq
S_TEXT, S_KEY, S_ALL = 0, 1, 2  # last axis of sensitivity: text, key vision, all routed tokens
# names of that axis (manifest sensitivity_modalities): MODE uses text and key vision; pooled
# methods (MC-MoE, VEQ) use all routed tokens
SENS_MODALITIES = ("text", "vision_key", "all")
ARRAYS_FILE = "expert_stats.safetensors"
MANIFEST_FILE = "manifest.json"
IMATRIX_FILE = "imatrix.gguf"


def save_arrays_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in sorted(arrays.items())}, str(tmp))


@dataclass
class ExpertStats:
    manifest: dict[str, Any]
    layers: dict[int, dict[str, np.ndarray]]

    @property
    def types(self) -> list[str]:
        return self.manifest["types"]

    @property
    def moe_layers(self) -> list[int]:
        """The decoder layers with routed experts (every layer unless the manifest lists them)."""
        listed = self.manifest.get("moe_layers")
        return sorted(self.layers) if listed is None else [int(x) for x in listed]

    def sensitivity(self, layer: int, importance: str) -> np.ndarray:
        """[E, 4, n_types, 3] the experts' errors when quantized with `importance`."""
        kinds = self.manifest["importances"]
        if importance not in kinds:
            raise UserError(
                f"these statistics have no sensitivity under the {importance} importance "
                f"(they have {', '.join(kinds)})",
                "re-run `mode-edge calibrate`",
            )
        return self.layers[layer]["sensitivity"][kinds.index(importance)]

    def save(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        arrays = {f"layer.{l}.{k}": v for l, d in self.layers.items() for k, v in d.items()}
        save_arrays_atomic(out_dir / ARRAYS_FILE, arrays)
        write_json_atomic(out_dir / MANIFEST_FILE, {"schema": SCHEMA, "version": VERSION, **self.manifest})

    @classmethod
    def load(cls, stats_dir: Path) -> ExpertStats:
        from safetensors.numpy import load_file

        stats_dir = Path(stats_dir)
        mpath = stats_dir / MANIFEST_FILE
        if not mpath.is_file() or not (stats_dir / ARRAYS_FILE).is_file():
            raise UserError(
                f"{stats_dir} holds no finished expert statistics",
                "run `mode-edge calibrate` (an interrupted run resumes when rerun)",
            )
        manifest = read_json(mpath, "re-run `mode-edge calibrate`")
        if manifest.get("schema") != SCHEMA or manifest.get("version") != VERSION:
            raise UserError(f"{mpath} is not expert-stats version {VERSION}", "re-run `mode-edge calibrate`")
        from safetensors import SafetensorError

        bad = UserError(f"{stats_dir / ARRAYS_FILE} is truncated or corrupt", "re-run `mode-edge calibrate`")
        layers: dict[int, dict[str, np.ndarray]] = {}
        try:
            for key, arr in load_file(str(stats_dir / ARRAYS_FILE)).items():
                _, l, name = key.split(".", 2)
                layers.setdefault(int(l), {})[name] = arr
        except (SafetensorError, OSError, ValueError):
            raise bad from None
        manifest = {k: v for k, v in manifest.items() if k not in ("schema", "version")}
        _check(manifest, layers, mpath)
        return cls(manifest, dict(sorted(layers.items())))


def _check(manifest: dict, layers: dict[int, dict[str, np.ndarray]], mpath: Path) -> None:
    """The manifest and the arrays must describe each other (an edited manifest is refused)."""

    def refuse(what: str) -> UserError:
        return UserError(
            f"{mpath} does not match the arrays beside it ({what})", "re-run `mode-edge calibrate`"
        )

    need = ("n_layers", "n_experts", "types", "gguf_names", "hidden", "expert_ff", "top_k", "tokens")
    missing = [k for k in need if k not in manifest]
    if missing:
        raise refuse(f"no {missing[0]}")
    try:
        n_layers, n_exp, n_types = (
            int(manifest["n_layers"]),
            int(manifest["n_experts"]),
            len(manifest["types"]),
        )
    except (TypeError, ValueError):
        raise refuse("a count is not a number") from None
    moe = manifest.get("moe_layers", list(range(n_layers)))
    if not isinstance(moe, list) or not all(isinstance(x, int) and 0 <= x < n_layers for x in moe):
        raise refuse("moe_layers is not a list of layer numbers")
    if not moe:
        raise refuse("no MoE layer listed")
    if sorted(layers) != list(range(n_layers)) or sorted(manifest["gguf_names"]) != sorted(map(str, moe)):
        raise refuse(f"{n_layers} layers listed, {len(layers)} stored")
    # dense items (attention, shared experts, dense FFNs): every listed matrix has its arrays
    for key, prefix in (("attn_tensors", "attn"), ("shared_tensors", "shexp"), ("dense_tensors", "dense")):
        listed = manifest.get(key) or {}
        try:
            items = [(int(il), [(str(n), str(src)) for n, src in entries]) for il, entries in listed.items()]
        except (AttributeError, TypeError, ValueError):
            raise refuse(f"{key} is not a list of (tensor, input) per layer") from None
        for il, entries in items:
            d = layers.get(il, {})
            need = [f"{prefix}_sensitivity", f"{prefix}_tokens", *(f"{src}_sq" for _, src in entries)]
            if any(k not in d for k in need) or d[f"{prefix}_sensitivity"].shape[:1] != (len(entries),):
                raise refuse(f"layer {il}'s {key} have no matching arrays")
    for il in moe:
        d = layers[il]
        if "counts" not in d or "sensitivity" not in d or d["counts"].shape != (3, n_exp):
            raise refuse(f"layer {il}'s counts are not [3, {n_exp}]")
        if d["sensitivity"].shape[1] != n_exp or d["sensitivity"].shape[3] != n_types:
            raise refuse(
                f"layer {il}'s sensitivity has {d['sensitivity'].shape[3]} types, the manifest {n_types}"
            )
