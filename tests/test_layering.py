"""The package structure docs/design.md promises: formats under the stages, one contract per
architecture in arch/, stages talking through each other's public API, no import cycles."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

from tests.helpers import ROOT

PKG = ROOT / "mode_edge"
#: modules every package may import freely (shared schemas and tiny utilities)
FOUNDATION = {"formats", "errors", "files", "_lazy"}
PACKAGES = sorted(p.parent.relative_to(ROOT).as_posix().replace("/", ".") for p in PKG.rglob("__init__.py"))


def _unit(path: Path) -> str:
    """The top-level unit of mode_edge a file belongs to: its package, or the module itself."""
    rel = path.relative_to(PKG).parts
    return rel[0] if len(rel) > 1 else rel[0][: -len(".py")]


def _imports(path: Path) -> list[str]:
    """Every absolute mode_edge import in a file, function-local ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
    return [m for m in out if m == "mode_edge" or m.startswith("mode_edge.")]


def _graph() -> dict[str, set[str]]:
    deps: dict[str, set[str]] = defaultdict(set)
    for f in PKG.rglob("*.py"):
        unit = _unit(f)
        for m in _imports(f):
            parts = m.split(".")
            if len(parts) > 1 and parts[1] != unit:
                deps[unit].add(parts[1])
    return deps


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_alone(package):
    proc = subprocess.run(
        [sys.executable, "-c", f"import {package}"], capture_output=True, text=True, cwd="/"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_stages_use_each_others_public_api_only():
    bad = []
    for f in PKG.rglob("*.py"):
        unit = _unit(f)
        for m in _imports(f):
            parts = m.split(".")
            if len(parts) > 2 and parts[1] != unit and parts[1] not in FOUNDATION:
                bad.append(f"{f.relative_to(ROOT)} imports {m}")
    assert not bad, "import the package, not its modules:\n" + "\n".join(sorted(bad))


def test_no_import_cycles_between_packages():
    deps = _graph()
    state: dict[str, int] = {}

    def visit(u: str, path: list[str]) -> None:
        state[u] = 1
        for v in sorted(deps.get(u, ())):
            if state.get(v) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(v) :] + [v]))
            if v not in state:
                visit(v, path + [v])
        state[u] = 2

    for u in sorted(deps):
        if u not in state:
            visit(u, [u])


def test_formats_and_arch_sit_under_the_stages():
    deps = _graph()
    assert deps["formats"] <= {"errors", "files"}, deps["formats"]
    assert deps["arch"] <= FOUNDATION, deps["arch"]


# HF module attributes and chat-template tokens: an architecture's own vocabulary
ARCH_WORDS = re.compile(
    r"\.self_attn\b|\.mlp\b|language_model|\.visual\b|<\|im_(start|end)\|>|<\|vision_|image_pad"
)


def test_only_arch_knows_an_architectures_names():
    bad = []
    for f in PKG.rglob("*.py"):
        if f.is_relative_to(PKG / "arch"):
            continue
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if ARCH_WORDS.search(line):
                bad.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_every_package_is_in_the_wheel():
    """pyproject lists packages explicitly (the patch series is mapped in from vendor/)."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(cfg["packages"]) == set(PACKAGES) | {"mode_edge.runtime.patches"}
    assert cfg["package-dir"]["mode_edge.runtime.patches"] == "vendor/patches"
    assert sorted((ROOT / "vendor" / "patches").glob("*.patch"))


@pytest.mark.parametrize("package", PACKAGES)
def test_no_exported_name_is_also_a_submodule(package):
    """`from pkg import X` where X is both an exported name and a submodule gives the module once
    the submodule has been imported anywhere (the package attribute wins over __getattr__)."""
    import importlib
    import pkgutil

    pkg = importlib.import_module(package)
    subs = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
    clash = sorted(set(getattr(pkg, "__all__", ())) & subs)
    assert not clash, f"{package} exports {clash}, which are also its submodules"
