"""Where the hidden states of all calibration samples live between layers: RAM or disk.

"disk" keeps one .npy per sample in two alternating folders (inputs of the current layer are
read from one, outputs written to the other), so an interrupted layer never mixes states of
two layers, and the folder that holds the next layer's inputs is what resume reads. "memory"
keeps tensors in RAM and saves them once per layer for resume. "auto" picks disk when the
states would take more than half of the memory available now.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from mode_edge.files import atomic_path


def available_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62  # not Linux: assume it fits


def choose_mode(mode: str, n_tokens: int, hidden: int) -> str:
    if mode != "auto":
        return mode
    return "disk" if n_tokens * hidden * 4 > available_memory() // 2 else "memory"


class Activations:
    def __init__(self, mode: str, partial: Path, n: int, resumable: bool = True):
        self.mode, self.partial, self.n = mode, partial, n
        self.resumable = resumable  # memory mode: save each layer's outputs for resume
        self.mem: list[torch.Tensor | None] = [None] * n
        self.read_slot = 0

    def _dir(self, slot: int) -> Path:
        return self.partial / f"act-{slot}"

    def init(self, hidden: list[torch.Tensor]) -> None:
        if self.mode == "memory":
            self.mem = list(hidden)
            return
        d = self._dir(0)
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        for i, h in enumerate(hidden):
            np.save(d / f"{i}.npy", h.numpy())
        self.read_slot = 0

    def get(self, i: int) -> torch.Tensor:
        if self.mode == "memory":
            return self.mem[i]
        return torch.from_numpy(np.load(self._dir(self.read_slot) / f"{i}.npy"))

    def begin_layer(self) -> None:
        if self.mode == "disk":
            d = self._dir(1 - self.read_slot)
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)

    def put(self, i: int, h: torch.Tensor) -> None:
        if self.mode == "memory":
            self.mem[i] = h
        else:
            np.save(self._dir(1 - self.read_slot) / f"{i}.npy", h.numpy())

    def end_layer(self) -> dict:
        """Make this layer's outputs the next inputs; returns what resume needs to know."""
        if self.mode == "memory":
            if self.resumable:
                with atomic_path(self.partial / "hidden.pt") as tmp:
                    torch.save(self.mem, tmp)
            return {"activations": "memory"}
        self.read_slot = 1 - self.read_slot
        return {"activations": "disk", "slot": self.read_slot}

    def restore(self, state: dict) -> bool:
        """Load the inputs of the next layer after an interruption; False if they are gone."""
        if state.get("activations") == "disk" and self.mode == "disk":
            self.read_slot = state["slot"]
            return all((self._dir(self.read_slot) / f"{i}.npy").is_file() for i in range(self.n))
        if state.get("activations") == "memory" and self.mode == "memory":
            path = self.partial / "hidden.pt"
            if not path.is_file():
                return False
            self.mem = torch.load(path)
            return len(self.mem) == self.n
        return False
