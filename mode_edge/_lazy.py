"""A package's public API, imported on first use (PEP 562): other packages import names from the
package itself, never from its modules, without paying for (or cycling through) all of them."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_api(package: str, api: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """api: exported name -> module (relative to package). Returns the package's __getattr__, __dir__."""

    def __getattr__(name: str) -> object:
        module = api.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return sorted(api)

    return __getattr__, __dir__
