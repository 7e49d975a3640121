"""The package's import graph: layers that import only downward, and no cycle.

Every ``import`` in every module of ``shmdict`` counts, at the top of a file
or inside a function, since a cycle through a function-level import still
means two modules that cannot be understood apart.  The layers, bottom to top,
are those the README's "Layout of the repository" draws.
"""
from __future__ import annotations

import ast
import os
from typing import Dict, Iterator, List, Set

import pytest

import shmdict

PACKAGE_DIR = os.path.dirname(os.path.abspath(shmdict.__file__))

#: Bottom to top.  A module may import modules of its own layer or below.
LAYERS: List[List[str]] = [
    ["shmdict.errors", "shmdict.validate"],
    ["shmdict.keys"],
    ["shmdict.layouts"],
    ["shmdict.aio"],
    ["shmdict.records", "shmdict.handles", "shmdict.report"],
    ["shmdict.verbs", "shmdict.views"],
    ["shmdict.table", "shmdict.snapshot"],
    ["shmdict.backends", "shmdict.backends.shm.*", "shmdict.backends.redis.*"],
    ["shmdict.api"],
    ["shmdict.stripes", "shmdict.ratelimit.*", "shmdict.limits_storage",
     "shmdict.prometheus.*"],
    ["shmdict.text"],
    ["shmdict.bench", "shmdict.demo", "shmdict.top", "shmdict.cli", "shmdict.__main__",
     "shmdict"],
]


def module_files() -> Dict[str, str]:
    """Every module of the package: dotted name -> file."""
    out = {}
    for root, _, files in os.walk(PACKAGE_DIR):
        for f in files:
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(root, f), os.path.dirname(PACKAGE_DIR))
            parts = rel[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = os.path.join(root, f)
    return out


MODULES = module_files()


def layer_of(module: str) -> int:
    for depth, members in enumerate(LAYERS):
        for member in members:
            if member == module or (member.endswith(".*")
                                    and (module + ".").startswith(member[:-1])):
                return depth
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and the README)")


def imports_of(module: str) -> Iterator[str]:
    """The package modules ``module`` imports, anywhere in its file."""
    path = MODULES[module]
    is_package = path.endswith("__init__.py")
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "shmdict":
                    yield nearest_module(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "shmdict":
                continue
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                yield candidate if candidate in MODULES else nearest_module(source)


def nearest_module(dotted: str) -> str:
    """``dotted`` if it is a module of the package, else its nearest parent that
    is (an extension module such as ``_core`` counts as its package's leaf)."""
    parts = dotted.split(".")
    while parts and ".".join(parts) not in MODULES:
        parts.pop()
    return ".".join(parts)


GRAPH: Dict[str, Set[str]] = {m: set(imports_of(m)) - {m} for m in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_only_downward(module):
    mine = layer_of(module)
    upward = sorted(dep for dep in GRAPH[module] if layer_of(dep) > mine)
    assert not upward, f"{module} (layer {mine}) imports {upward} from above it"


def test_no_import_cycle():
    done: Set[str] = set()
    path: List[str] = []

    def visit(module: str) -> None:
        if module in path:
            cycle = path[path.index(module):] + [module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        path.append(module)
        for dep in sorted(GRAPH[module]):
            # A package's __init__ is imported before its submodules anyway;
            # the edge from a submodule up to its own package is not a cycle
            # of understanding (the package only re-exports it).
            if module.startswith(dep + "."):
                continue
            visit(dep)
        path.pop()
        done.add(module)

    for module in sorted(MODULES):
        visit(module)


@pytest.mark.parametrize("one, other", [("shmdict.backends.redis", "shmdict.backends.shm"),
                                         ("shmdict.backends.shm", "shmdict.backends.redis")])
def test_the_backends_are_peers(one, other):
    for module, deps in GRAPH.items():
        if module == one or module.startswith(one + "."):
            crossing = sorted(d for d in deps if d == other or d.startswith(other + "."))
            assert not crossing, f"{module} imports {crossing} of the other backend"


def test_only_api_knows_both_backends():
    both = sorted(m for m, deps in GRAPH.items()
                  if any(d.startswith("shmdict.backends.shm") for d in deps)
                  and any(d.startswith("shmdict.backends.redis") for d in deps))
    assert both == ["shmdict.api"]


def test_the_checker_sees_cycles_and_upward_imports():
    """The graph above is read right: a known downward edge and a known
    function-level import are found."""
    assert "shmdict.errors" in GRAPH["shmdict.keys"]
    assert "shmdict.backends.redis" in GRAPH["shmdict.api"]     # inside a function
    assert layer_of("shmdict.backends.shm.segment") > layer_of("shmdict.layouts")


def test_a_source_tree_without_its_core_says_what_to_do(tmp_path):
    """Python run from a source root whose core is not built (a non-editable
    install elsewhere) imports the source tree: the error must say what to do."""
    import shutil
    import subprocess
    import sys
    copy = tmp_path / "shmdict"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    run = subprocess.run([sys.executable, "-c", "import shmdict\n"
                          "shmdict.open('layering.x', shmdict.Counter())"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "C core is not built" in run.stderr and "pip install -e ." in run.stderr
    assert "partially initialized" not in run.stderr
