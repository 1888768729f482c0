"""What the budget pays for: every tensor of both output files, from the model's shapes.

Routed-expert tensors are what the allocator decides; everything else (attention, shared
experts, embeddings, output, norms, router, the whole mmproj) has a type fixed by the user,
and its bytes, with the GGUF headers and alignment, are measured exactly by serialising the
real headers (mode_edge.gguf.export.planned_sizes), never estimated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gguf import GGMLQuantizationType

from mode_edge.arch import Architecture, open_architecture
from mode_edge.errors import UserError
from mode_edge.formats.plan import QuantPlan
from mode_edge.formats.quant_types import fallback, row_bytes
from mode_edge.formats.tensors import Role

T = GGMLQuantizationType


@dataclass(frozen=True)
class ExpertTensor:
    name: str
    layer: int
    proj: int  # 0 gate, 1 up, 2 down
    n_expert: int
    rows: int  # output rows per expert
    row_size: int  # input width (the quantizer's row length)

    def expert_bytes(self, t: T) -> int:
        """One expert's bytes when stored as t (after llama.cpp's fallback for its rows)."""
        return self.rows * row_bytes(fallback(t, self.row_size), self.row_size)

    @property
    def params(self) -> int:
        return self.rows * self.row_size


class ModelLayout:
    def __init__(self, model: Path | Architecture):
        self.conv = open_architecture(model)
        self.text_specs = self.conv.text_tensors()
        self.other_roles = {s.name: s.role for s in self.text_specs if s.role != Role.EXPERT}

    def expert_tensors(self, gguf_names: dict[str, list[str]]) -> dict[tuple[int, int], ExpertTensor]:
        """(layer, projection) -> tensor, checked against the names calibration recorded."""
        specs = {s.name: s for s in self.text_specs if s.role == Role.EXPERT}
        out = {}
        for layer, names in gguf_names.items():
            for proj, name in enumerate(names):
                spec = specs.get(name)
                if spec is None:
                    raise UserError(
                        f"the statistics name expert tensor {name}, which this model does not have",
                        "calibrate this model (the statistics belong to another one)",
                    )
                out[int(layer), proj] = ExpertTensor(
                    name, int(layer), proj, spec.n_expert, spec.shape[1], spec.shape[2]
                )
        missing = sorted(set(specs) - {t.name for t in out.values()})
        if missing:
            raise UserError(
                f"the statistics have no data for {missing[0]} ({len(missing)} expert tensors)",
                "re-run `mode-edge calibrate` on this model",
            )
        return out

    def file_bytes(self, plan: QuantPlan) -> tuple[int, int]:
        """Exact sizes of the text and mmproj files `pack` writes for this plan."""
        from mode_edge.gguf import planned_sizes

        return planned_sizes(self.conv, plan, check_imatrix=False)

    def part_bytes(self, plan: QuantPlan) -> dict[str, int]:
        """Tensor bytes of the text file by part (no headers), as pack stores them for `plan`."""
        from mode_edge.gguf import resolve_types, tensor_nbytes

        names = {
            Role.EXPERT: "routed experts",
            Role.SHARED: "shared experts",
            Role.FFN: "dense-layer FFNs",
            Role.ATTN: "attention",
            Role.EMBED: "token embedding",
            Role.OUTPUT: "output head",
        }
        out: dict[str, int] = {}
        for spec in self.text_specs:
            what = names.get(spec.role)
            if what is None:
                continue
            t = resolve_types(spec, plan)
            if isinstance(t, list):  # one type per expert: each expert is shape[1:]
                b = sum(tensor_nbytes(spec.shape[1:], x) for x in t)
            else:
                b = tensor_nbytes(spec.shape, t)
            out[what] = out.get(what, 0) + b
        return out

    def kv_cache_bytes(self, n_ctx: int) -> int:
        if n_ctx <= 0:
            return 0
        try:
            return self.conv.kv_cache_bytes(n_ctx)
        except NotImplementedError as e:
            raise UserError(str(e), "leave out --context") from None
