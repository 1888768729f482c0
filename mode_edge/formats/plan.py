"""QuantPlan: which llama.cpp type each tensor (or each expert) is stored in. A file schema.

    {
      "schema": "mode-edge/quant-plan", "version": 1,
      "model": "Qwen3-VL-30B-A3B-Instruct", "method": "mode", "budget_bytes": 12000000000,
      "default": "Q8_0",            # matrices the plan does not name (optional; else F16)
      "mmproj": "F16",              # vision projector matrices
      "tensors": {
        "token_embd.weight": "Q6_K",
        "blk.0.ffn_up_exps.weight": ["Q4_K", "Q2_K", ...]   # one type per expert
      }
    }

Norms, biases and the MoE router are always F32 and need not be listed. pack reads only this
file, never the allocator's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGMLQuantizationType

from mode_edge.errors import UserError
from mode_edge.files import read_json, write_json_atomic
from mode_edge.formats.quant_types import parse_type

SCHEMA = "mode-edge/quant-plan"
VERSION = 1

TypeSpec = GGMLQuantizationType | list[GGMLQuantizationType]


@dataclass
class QuantPlan:
    tensors: dict[str, TypeSpec] = field(default_factory=dict)
    method: str = "manual"
    model: str | None = None
    budget_bytes: int | None = None
    default: GGMLQuantizationType | None = None
    mmproj: GGMLQuantizationType = GGMLQuantizationType.F16
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def enc(v: TypeSpec):
            return [t.name for t in v] if isinstance(v, list) else v.name

        return {
            "schema": SCHEMA,
            "version": VERSION,
            "model": self.model,
            "method": self.method,
            "budget_bytes": self.budget_bytes,
            "default": self.default.name if self.default is not None else None,
            "mmproj": self.mmproj.name,
            "tensors": {k: enc(v) for k, v in self.tensors.items()},
            **({"extra": self.extra} if self.extra else {}),
        }

    def save(self, path: Path) -> None:
        write_json_atomic(Path(path), self.to_json())

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "plan") -> QuantPlan:
        if not isinstance(data, dict) or not isinstance(data.get("tensors", {}), dict):
            raise UserError(
                f"{source} is not a mode-edge quant plan (not an object of tensors)",
                "write one with `mode-edge plan`",
            )
        if data.get("schema") != SCHEMA:
            raise UserError(
                f"{source} is not a mode-edge quant plan (schema {data.get('schema')!r})",
                "write one with `mode-edge plan`",
            )
        if data.get("version") != VERSION:
            raise UserError(
                f"{source} has plan version {data.get('version')}, this mode-edge reads {VERSION}",
                "re-run `mode-edge plan` with this version",
            )
        tensors: dict[str, TypeSpec] = {}
        for name, v in (data.get("tensors") or {}).items():
            tensors[name] = [parse_type(x) for x in v] if isinstance(v, list) else parse_type(v)
        return cls(
            tensors=tensors,
            method=data.get("method", "manual"),
            model=data.get("model"),
            budget_bytes=data.get("budget_bytes"),
            default=parse_type(data["default"]) if data.get("default") else None,
            mmproj=parse_type(data.get("mmproj") or "F16"),
            extra=data.get("extra") or {},
        )

    @classmethod
    def load(cls, path: Path) -> QuantPlan:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"plan {path} does not exist", "write one with `mode-edge plan`")
        return cls.from_json(read_json(path, "regenerate it with `mode-edge plan`"), str(path))
