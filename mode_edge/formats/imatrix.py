"""Importance matrices in llama.cpp's GGUF imatrix format (what llama-imatrix writes).

Per weight tensor `<name>`: `<name>.in_sum2` F32 [n_expert, n_in] (sum of x^2 per input
channel over the tokens each expert saw) and `<name>.counts` F32 [n_expert, 1] (how many
tokens). The quantizer uses in_sum2 / counts per expert, and 1.0 where an expert saw none,
exactly as llama-quantize does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter

from mode_edge.errors import UserError
from mode_edge.files import atomic_path


@dataclass
class ImatrixEntry:
    in_sum2: np.ndarray  # [n_expert, n_in]
    counts: np.ndarray  # [n_expert]

    def importance(self) -> np.ndarray:
        """[n_expert, n_in] mean x^2 per channel (1.0 for experts with no tokens)."""
        out = np.ones_like(self.in_sum2, dtype=np.float32)
        seen = self.counts > 0
        out[seen] = self.in_sum2[seen] / self.counts[seen, None].astype(np.float32)
        return out


@dataclass
class Imatrix:
    entries: dict[str, ImatrixEntry] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0

    def for_tensor(self, name: str, n_expert: int, n_in: int) -> np.ndarray | None:
        """[n_expert, n_in] importance for a tensor, or None if the matrix lacks it."""
        e = self.entries.get(name)
        if e is None:
            return None
        if e.in_sum2.shape != (n_expert, n_in):
            raise UserError(
                f"imatrix entry {name} has shape {e.in_sum2.shape}, the model needs {(n_expert, n_in)}",
                "the importance matrix was made for another model",
            )
        return e.importance()

    def save(self, path: Path) -> None:
        with atomic_path(Path(path)) as tmp:
            self._write(tmp)

    def _write(self, tmp: Path) -> None:
        w = GGUFWriter(tmp, "imatrix")
        w.add_type("imatrix")
        w.add_array("imatrix.datasets", self.datasets or ["mode-edge"])
        w.add_uint32("imatrix.chunk_count", self.chunk_count)
        w.add_uint32("imatrix.chunk_size", self.chunk_size)
        for name in sorted(self.entries):  # llama-imatrix writes names sorted too
            e = self.entries[name]
            w.add_tensor(f"{name}.in_sum2", np.ascontiguousarray(e.in_sum2, dtype=np.float32))
            w.add_tensor(f"{name}.counts", np.ascontiguousarray(e.counts, dtype=np.float32).reshape(-1, 1))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    @classmethod
    def load(cls, path: Path) -> Imatrix:
        path = Path(path)
        if not path.is_file():
            raise UserError(
                f"imatrix {path} does not exist",
                "pass a file written by llama-imatrix or mode-edge calibrate",
            )
        try:
            r = GGUFReader(path)
        except Exception as e:
            raise UserError(
                f"{path} is not a GGUF imatrix ({e})",
                "only the GGUF imatrix format is read (llama-imatrix --output-format gguf)",
            ) from None

        def field_value(key, default):
            f = r.get_field(key)
            return f.contents() if f is not None else default

        sums, counts = {}, {}
        for t in r.tensors:
            arr = np.asarray(t.data, dtype=np.float32)
            if t.name.endswith(".in_sum2"):
                sums[t.name[: -len(".in_sum2")]] = arr.reshape(-1, int(t.shape[0]))
            elif t.name.endswith(".counts"):
                counts[t.name[: -len(".counts")]] = arr.reshape(-1)
        if not sums or sums.keys() != counts.keys():
            raise UserError(
                f"{path} has no matching .in_sum2/.counts pairs", "it is not an importance matrix"
            )
        entries = {n: ImatrixEntry(sums[n], counts[n]) for n in sums}
        return cls(
            entries,
            list(field_value("imatrix.datasets", [])),
            int(field_value("imatrix.chunk_count", 0)),
            int(field_value("imatrix.chunk_size", 0)),
        )
