"""Every public function and method of the package has type annotations.

Public: a ``def`` whose name does not start with ``_`` (``__init__`` counts as public), at module level
or in a class body, not nested inside another function. Each of its arguments except ``self``/``cls``
(``*args`` and ``**kwargs`` included) needs an annotation, and it needs a return annotation (except
``__init__``). Read with ``ast``, nothing is imported.

``PATHALIGN_TYPING_ROOT`` points the check at another copy of the package (to see it fail on old code).
"""
from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(os.environ.get("PATHALIGN_TYPING_ROOT") or Path(__file__).resolve().parents[1] / "src" / "pathalign")


def _is_public(name: str) -> bool:
    return not name.startswith("_") or name == "__init__"


def _public_functions(tree: ast.Module) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Functions at module level or in (possibly nested) class bodies; never those inside a function."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if _is_public(child.name):
                    yield child
            elif isinstance(child, ast.ClassDef):
                stack.append(child)
            elif not isinstance(child, ast.Lambda):
                stack.append(child)  # if/try blocks at module or class level


def _missing(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    a = fn.args
    args = [*a.posonlyargs, *a.args, *a.kwonlyargs]
    if a.vararg is not None:
        args.append(a.vararg)
    if a.kwarg is not None:
        args.append(a.kwarg)
    missing = [x.arg for x in args if x.annotation is None and x.arg not in ("self", "cls")]
    if fn.returns is None and fn.name != "__init__":
        missing.append("return")
    return missing


def unannotated(package: Path = PACKAGE) -> list[str]:
    """``file:line name (missing: ...)`` of every public function lacking an annotation."""
    out = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for fn in sorted(_public_functions(tree), key=lambda f: f.lineno):
            missing = _missing(fn)
            if missing:
                out.append(f"{path.relative_to(package.parent)}:{fn.lineno} {fn.name} (missing: {', '.join(missing)})")
    return out


def test_public_functions_are_annotated() -> None:
    assert PACKAGE.is_dir(), PACKAGE
    offenders = unannotated()
    assert not offenders, f"{len(offenders)} public function(s) without full type annotations:\n" + "\n".join(offenders)


def test_check_catches_a_missing_annotation(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text(
        "def ok(a: int, *args: int, **kw: str) -> None: ...\n"
        "def bad(a, b: int): ...\n"
        "def _private(a): ...\n"
        "class C:\n"
        "    def __init__(self, x): ...\n"
        "    def method(self) -> int:\n"
        "        def inner(y): ...\n"
        "        return 0\n"
        "    @classmethod\n"
        "    def make(cls, **kw) -> C: ...\n"
    )
    assert unannotated(pkg) == [
        "pkg/m.py:2 bad (missing: a, return)",
        "pkg/m.py:5 __init__ (missing: x)",
        "pkg/m.py:10 make (missing: kw)",
    ]
