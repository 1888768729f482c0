"""A Hugging Face checkpoint directory, read lazily tensor by tensor.

Every shard is validated up front (present, header readable, data fully covered) so that a
bad download fails before any output is written. Tensors are read one at a time (or one
slice at a time) through safetensors' memory map, which is closed after each read, so
reading a model never holds more than the tensor asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mode_edge.errors import UserError
from mode_edge.files import read_json

INDEX_NAME = "model.safetensors.index.json"


class Checkpoint:
    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        if not self.dir.exists():
            raise UserError(
                f"model directory {self.dir} does not exist",
                "pass the folder that holds config.json and the *.safetensors files",
            )
        if not self.dir.is_dir():
            raise UserError(f"{self.dir} is not a directory", "pass the model folder, not a file inside it")
        cfg_path = self.dir / "config.json"
        if not cfg_path.is_file():
            raise UserError(
                f"no config.json in {self.dir}",
                "this does not look like a Hugging Face model folder; download the whole repository",
            )
        self.config: dict[str, Any] = read_json(cfg_path, "re-download config.json")
        if not isinstance(self.config, dict):
            raise UserError(f"{cfg_path} is not a JSON object", "re-download config.json")
        self._shard_of: dict[str, str] = {}
        self._shape: dict[str, tuple[int, ...]] = {}
        self._dtype: dict[str, str] = {}
        self._disk: dict[str, str] = {}  # name -> the name on disk, where rename_prefixes changed it
        self._scan_shards()

    def rename_prefixes(self, prefixes: dict[str, str]) -> None:
        """Address tensors saved under other prefixes (old -> new) by the names the module tree
        uses, so one converter reads every save format; a name present in both forms is an error."""
        for name in list(self._shard_of):
            old = next((o for o in prefixes if name.startswith(o)), None)
            if old is None:
                continue
            new = prefixes[old] + name[len(old) :]
            if new in self._shard_of:
                raise UserError(
                    f"the checkpoint holds both {name} and {new}", "it mixes two save formats; re-download it"
                )
            for table in (self._shard_of, self._shape, self._dtype):
                table[new] = table.pop(name)
            self._disk[new] = self._disk.pop(name, name)

    # -- discovery and validation -------------------------------------------------------

    def _shard_names(self) -> list[str]:
        index = self.dir / INDEX_NAME
        if index.is_file():
            try:
                weight_map = read_json(index, "re-download the model index")["weight_map"]
            except (KeyError, TypeError) as e:
                raise UserError(
                    f"{index} is corrupt (no weight_map: {e})", "re-download the model index"
                ) from None
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not (self.dir / s).is_file()]
            if missing:
                raise UserError(
                    f"shard {missing[0]} named in {INDEX_NAME} is missing from {self.dir}"
                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                    "finish the download (all shards listed in the index are needed)",
                )
            return shards
        shards = sorted(p.name for p in self.dir.glob("*.safetensors"))
        if not shards:
            raise UserError(
                f"no *.safetensors weights in {self.dir}",
                "download the safetensors weights (.bin checkpoints are not supported)",
            )
        return shards

    def _scan_shards(self) -> None:
        from safetensors import SafetensorError, safe_open

        for shard in self._shard_names():
            path = self.dir / shard
            try:
                with safe_open(str(path), framework="pt") as f:
                    for name in f.keys():
                        sl = f.get_slice(name)
                        self._shard_of[name] = shard
                        self._shape[name] = tuple(int(d) for d in sl.get_shape())
                        self._dtype[name] = str(sl.get_dtype())
            except (SafetensorError, OSError, ValueError) as e:
                reason = str(e).splitlines()[0]
                raise UserError(
                    f"weights file {shard} is truncated or corrupt ({reason})", "re-download that shard"
                ) from None

    # -- access ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.dir.resolve().name

    def names(self) -> list[str]:
        return list(self._shard_of)

    def has(self, name: str) -> bool:
        return name in self._shard_of

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shape[name]

    def dtype(self, name: str) -> str:
        return self._dtype[name]

    def load(self, name: str, index: Any = None) -> np.ndarray:
        """Read one tensor (or `index`, a tuple of slices, of it) as float32 numpy."""
        import torch
        from safetensors import safe_open

        if name not in self._shard_of:
            raise KeyError(name)
        disk = self._disk.get(name, name)
        with safe_open(str(self.dir / self._shard_of[name]), framework="pt") as f:
            if index is None:
                t = f.get_tensor(disk)
            else:
                t = f.get_slice(disk)[index]
            # copy out of the memory map before it closes; bf16 has no numpy dtype
            return t.to(torch.float32).numpy().copy()

    def read_json(self, filename: str) -> dict[str, Any] | None:
        path = self.dir / filename
        return read_json(path, f"re-download {filename}") if path.is_file() else None
