"""Checks of a package's public API (its ``__init__``), shared by the per-package test files.

A plain helper module (no tests). The package ``__init__`` files give their names lazily
(``orthonav.core.lazy_exports``); these checks run the import in a fresh interpreter, since
the test process has long imported every heavy dependency.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path


def names_for_type_checkers(package: str) -> set[str]:
    """Names the package's ``__init__`` imports under ``if TYPE_CHECKING:`` (what IDEs see)."""
    init = Path(importlib.import_module(package).__file__)
    names: set[str] = set()
    for node in ast.walk(ast.parse(init.read_text(encoding="utf-8"))):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom):
                    names.update(a.asname or a.name for a in stmt.names)
    return names


def check_public_api(package: str, heavy: tuple[str, ...], *, extra: frozenset[str] | set[str] = frozenset()) -> None:
    """Assert that ``package``'s ``__all__`` names all resolve, none is private, the names
    static tools see are the same (plus ``extra``, names defined in the ``__init__`` itself),
    and that importing the package in a fresh interpreter imports none of the ``heavy``
    top-level modules."""
    mod = importlib.import_module(package)
    public = set(mod.__all__)
    assert public, package
    assert not [n for n in public if n.startswith("_")], package
    for name in sorted(public):
        assert getattr(mod, name) is not None, name
    assert names_for_type_checkers(package) | set(extra) == public, package
    code = f"import sys, json, {package}; print(json.dumps(sorted(m for m in {list(heavy)!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [], (package, out.stdout)
