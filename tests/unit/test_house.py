"""The house rules of the README's design section, checked on the code with an ``ast`` walk:
folders that own their parts, no module over 600 lines, no import cycle, boto3 only in ``aws/``
(and the emulator and the demo that seeds it), pyfuse3 only in the adapter."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "glacierfs"
MAX_LINES = 600
MAX_TOP_LEVEL = 12
# folder → packages of glacierfs it must not import (the README's folder table)
FORBIDDEN = {
    "catalog": {"fuse", "jobs", "commands", "sim"},
    "jobs": {"fuse", "commands", "sim"},
    "cache": {"jobs", "catalog", "fuse", "commands", "sim"},
    "aws": {"fuse", "jobs", "catalog", "cache", "commands", "sim"},
    "fuse": {"commands", "sim"},
    # commands talk to a mount through its xattrs; only glaciersrc.py (a mount without a kernel,
    # for glacier:// sources) assembles the engine, with the attribute and status views of fuse/
    "commands": {"fuse.operations", "fuse.readahead", "fuse.callers"},
}
BOTO_ALLOWED = ("aws.", "sim.", "commands.demo")
PYFUSE_ALLOWED = ("fuse.", "mount")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module name this file imports (at any depth: lazy imports count too)."""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[:len(base) - node.level + 1] + [node.module or ""]).rstrip(".")
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _internal(name: str) -> set[str]:
    deps = {m for m in IMPORTS[name] if m in MODULES and m != name}
    if MODULES[name].name == "__init__.py":   # a package's own submodules are not a cycle
        deps = {m for m in deps if not m.startswith(name + ".")}
    return deps


def test_no_module_is_over_600_lines() -> None:
    long = {name: n for name, path in MODULES.items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_few_modules_at_the_top_and_every_folder_says_what_it_owns() -> None:
    top = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert len(top) <= MAX_TOP_LEVEL, sorted(top)
    for folder in [d for d in PACKAGE.rglob("*") if d.is_dir() and any(d.glob("*.py"))]:
        init = folder / "__init__.py"
        assert init.exists(), folder
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc) >= 40, f"{folder}: its __init__.py must say what it owns"


def test_no_import_cycle() -> None:
    graph = {name: _internal(name) for name in MODULES}
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_folder_imports_follow_the_design(folder: str) -> None:
    bad = []
    for name in MODULES:
        if not name.startswith(f"glacierfs.{folder}"):
            continue
        for dep in _internal(name):
            inside = dep.removeprefix("glacierfs.")
            if any(inside == f or inside.startswith(f + ".") for f in FORBIDDEN[folder]):
                bad.append(f"{name} imports {dep}")
    assert not bad, bad


def test_only_aws_talks_to_aws_and_only_the_adapter_knows_the_kernel() -> None:
    for name in MODULES:
        short = name.removeprefix("glacierfs.")
        roots = {m.split(".")[0] for m in IMPORTS[name]}
        if roots & {"boto3", "botocore"}:
            assert short.startswith(BOTO_ALLOWED), f"{name} imports boto3/botocore"
        if "pyfuse3" in roots:
            assert short.startswith(PYFUSE_ALLOWED), f"{name} imports pyfuse3"


def test_the_emulator_shares_only_pure_code_with_the_client() -> None:
    for name in MODULES:
        if name.startswith("glacierfs.sim"):
            client = {d for d in _internal(name) if not d.startswith("glacierfs.sim")}
            assert client <= {"glacierfs", "glacierfs.treehash"}, (name, client)


def test_every_import_of_the_package_names_a_module_that_exists() -> None:
    """Lazy imports inside functions run only on their code path: a moved module must not
    leave one behind that fails there."""
    missing = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and \
                    (node.module or "").startswith("glacierfs"):
                if node.module not in MODULES:
                    missing.append(f"{name}: from {node.module} import …")
                elif MODULES[node.module].name == "__init__.py":
                    package = ast.parse(MODULES[node.module].read_text())
                    defined = {t.id for n in package.body if isinstance(n, ast.Assign)
                               for t in n.targets if isinstance(t, ast.Name)}
                    missing += [f"{name}: from {node.module} import {a.name}" for a in node.names
                                if f"{node.module}.{a.name}" not in MODULES
                                and a.name not in defined]
            elif isinstance(node, ast.Import):
                missing += [f"{name}: import {a.name}" for a in node.names
                            if a.name.startswith("glacierfs") and a.name not in MODULES]
    assert not missing, missing
