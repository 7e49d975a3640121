"""The typed stub ``_core.pyi`` is the core's contract: it names exactly what the
C module exports, and ``Core()``'s keyword names are the ones the C accepts.

Modelled on msgspec's typing tests: parse the stub with ``ast`` and compare it
with the compiled module.
"""
from __future__ import annotations

import ast
import inspect
import mmap
import pathlib

import pytest

from shmdict.backends.shm import _core

STUB = pathlib.Path(_core.__file__).with_name("_core.pyi")


def _stub() -> ast.Module:
    return ast.parse(STUB.read_text())


def _public(names):
    return {n for n in names if not n.startswith("_")}


def stub_module_names():
    names = set()
    for node in _stub().body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return _public(names)


def stub_class(name: str) -> ast.ClassDef:
    return next(n for n in _stub().body if isinstance(n, ast.ClassDef) and n.name == name)


def test_module_names_match_the_stub():
    assert stub_module_names() == _public(vars(_core))


def test_core_methods_match_the_stub():
    in_stub = _public(n.name for n in stub_class("Core").body if isinstance(n, ast.FunctionDef))
    assert in_stub == _public(vars(_core.Core))


def stub_init_keywords():
    init = next(n for n in stub_class("Core").body
                if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    assert [a.arg for a in init.args.args] == ["self", "buffer"]
    assert not init.args.defaults and not any(init.args.kw_defaults)
    return [a.arg for a in init.args.kwonlyargs]


def test_core_init_signature_matches_the_stub():
    params = inspect.signature(_core.Core).parameters
    assert list(params)[0] == "buffer"
    assert params["buffer"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    keywords = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert keywords == stub_init_keywords()
    assert len(keywords) == len(params) - 1


@pytest.mark.parametrize("missing", stub_init_keywords())
def test_core_requires_every_keyword_of_the_stub(missing):
    # What the C parser actually demands, not only what its docstring says.
    kwargs = {k: None for k in stub_init_keywords() if k != missing}
    with mmap.mmap(-1, 4096) as m:
        with pytest.raises(TypeError, match=f"'{missing}'"):
            _core.Core(m, **kwargs)


def test_core_takes_no_other_positional_argument():
    kwargs = {k: None for k in stub_init_keywords()}
    with mmap.mmap(-1, 4096) as m:
        with pytest.raises(TypeError):
            _core.Core(m, 1, **kwargs)
        with pytest.raises(TypeError):
            _core.Core(m, unknown=1, **kwargs)


def test_exception_classes_match_the_stub():
    from shmdict.errors import CorruptSegment
    assert issubclass(_core.CorruptGeometry, CorruptSegment)
    assert issubclass(_core.CorruptGeometry, ValueError)
    assert not issubclass(_core.TornRecord, (CorruptSegment, OSError))
    bases = [ast.unparse(b) for b in stub_class("CorruptGeometry").bases]
    assert bases == ["CorruptSegment", "ValueError"]
