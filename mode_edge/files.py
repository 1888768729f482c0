"""Files every stage writes and reads: whole or not at all, and JSON errors a user can act on."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mode_edge.errors import UserError


def partial_path(final: Path) -> Path:
    """A hidden temporary name beside `final` (same filesystem, so the rename is atomic)."""
    return final.with_name(f".{final.name}.partial-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path; it becomes `final` if the block succeeds and is removed if not."""
    final = Path(final)
    tmp = partial_path(final)
    try:
        yield tmp
        tmp.replace(final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))


def read_json(path: Path, fix: str) -> Any:
    """Parse a JSON file; a corrupt one is a UserError that says `fix`."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e})", fix) from None
