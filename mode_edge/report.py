"""One plan report, three renderings from the same data: report.json, report.md and the terminal
tables that `plan` and `convert --budget` print."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mode_edge.allocate import Allocation, Budget, histogram, parts
from mode_edge.files import atomic_path, write_json_atomic


@dataclass
class PlanReport:
    model: str
    method: str
    budget: Budget
    parts: list[tuple[str, int]]
    types: list[tuple[str, int, int]]  # (type, expert tensors, bytes), smallest first
    total_bytes: int
    expert_bpw: float
    status: str
    gap: float | None
    seconds: float  # the allocation's own
    notes: list[str]
    extra: dict  # the plan's granularity, solver, importance, per-layer bits
    stages: dict[str, float] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    shared: dict[str, int] = field(default_factory=dict)  # shared-expert tensors the ILP typed, by type
    dense: dict[str, int] = field(default_factory=dict)  # dense-layer FFN tensors the ILP typed, by type

    @classmethod
    def of(
        cls,
        alloc: Allocation,
        budget: Budget,
        stages: dict[str, float] | None = None,
        files: list[Path] | None = None,
    ) -> PlanReport:
        return cls(
            alloc.plan.model,
            alloc.plan.method,
            budget,
            parts(alloc),
            histogram(alloc),
            alloc.total_bytes,
            alloc.expert_bpw,
            alloc.status,
            alloc.gap,
            alloc.seconds,
            list(alloc.notes),
            dict(alloc.plan.extra),
            dict(stages or {}),
            {p.name: p.stat().st_size for p in files or []},
            dict(Counter(t.name for t in alloc.shared_types.values())),
            dict(Counter(t.name for t in alloc.dense_types.values())),
        )

    def to_json(self) -> dict:
        x = self.extra
        return {
            "budget": str(self.budget),
            "method": self.method,
            "granularity": x.get("granularity"),
            "files": self.files,
            "total_bytes": self.total_bytes,
            "routed_expert_bpw": round(self.expert_bpw, 4),
            "parts": dict(self.parts),
            "experts_by_type": {t: {"expert_tensors": u, "bytes": b} for t, u, b in self.types},
            **({"shared_experts_by_type": self.shared} if self.shared else {}),
            **({"dense_ffns_by_type": self.dense} if self.dense else {}),
            "seconds": {k: round(v, 2) for k, v in self.stages.items()},
            "solver": x.get("solver"),
            "importance": x.get("importance"),
            "per_layer_bits": x.get("per_layer_bits"),
            "notes": self.notes,
        }

    def markdown(self) -> str:
        lines = [
            f"# {self.model}: {self.method} at {self.budget}",
            "",
            f"{self.expert_bpw:.3f} bits per routed-expert weight; {self.total_bytes:,} bytes in all.",
            "",
            *[f"- {n}" for n in self.notes],
            *([""] if self.notes else []),
            "| part | bytes |",
            "|---|---:|",
            *[f"| {k} | {v:,} |" for k, v in self.parts],
            "",
            "| type | expert tensors | bytes |",
            "|---|---:|---:|",
            *[f"| {t} | {u:,} | {b:,} |" for t, u, b in self.types],
            "",
            *[f"{line}\n" for line in self._by_type_lines()],
            "| stage | seconds |",
            "|---|---:|",
            *[f"| {k} | {v:.1f} |" for k, v in self.stages.items()],
            "",
            "Files: " + ", ".join(f"`{n}` ({b:,} bytes)" for n, b in self.files.items()),
            "",
        ]
        return "\n".join(lines)

    def _by_type_lines(self) -> list[str]:
        """The ILP's types of shared experts and dense-layer FFNs, a line each."""
        return [
            f"{what} tensors by type: " + ", ".join(f"{t} {n}" for t, n in d.items())
            for what, d in (("Shared-expert", self.shared), ("Dense-layer FFN", self.dense))
            if d
        ]

    def write(self, out_dir: Path) -> None:
        """OUT/report.json and OUT/report.md."""
        write_json_atomic(Path(out_dir) / "report.json", self.to_json())
        with atomic_path(Path(out_dir) / "report.md") as tmp:
            tmp.write_text(self.markdown())

    def print(self, out) -> None:
        """The terminal tables (rich) on console `out`."""
        from rich.table import Table

        table = Table("part", "bytes", "share", title=f"plan: {self.method}, budget {self.budget}")
        for name, b in self.parts:
            table.add_row(name, f"{b:,}", f"{100 * b / max(1, self.total_bytes):.1f}%")
        table.add_row(
            "[bold]total[/bold]",
            f"[bold]{self.total_bytes:,}[/bold]",
            ""
            if self.budget.bytes is None
            else f"{100 * self.total_bytes / self.budget.bytes:.2f}% of budget",
        )
        out.print(table)
        types = Table("type", "expert tensors", "bytes", title="routed experts by type")
        for t, units, b in self.types:
            types.add_row(t, f"{units:,}", f"{b:,}")
        out.print(types)
        for line in self._by_type_lines():
            out.print(line)
        gap = "" if self.gap is None else f", gap {100 * self.gap:.3f}%"
        out.print(
            f"{self.expert_bpw:.3f} bits per routed-expert weight; solver {self.status}{gap}; {self.seconds:.1f} s"
        )
        for n in self.notes:
            out.print(f"note: {n}")
