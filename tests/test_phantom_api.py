"""The public API of ``orthonav.phantoms`` and the phantom modules' import direction."""

from __future__ import annotations

import ast
from pathlib import Path

from public_api import check_public_api

PHANTOMS = Path(__file__).resolve().parents[1] / "phantoms"


def test_phantoms_public_api_is_complete_and_cheap_to_import():
    check_public_api("orthonav.phantoms", ("pyvista", "vtk", "manifold3d", "scipy", "SimpleITK"))


def _relative_imports(module: str) -> set[str]:
    tree = ast.parse((PHANTOMS / f"{module}.py").read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out |= {node.module} if node.module else {a.name for a in node.names}
    return out


def test_phantom_factories_import_downward_only():
    # dispatcher -> anatomies -> recipe -> engine / probes (never back up)
    layers = [
        {"synthetic"},
        {"long_bone"},
        {"knee", "hip", "printed_ct"},
        {"printable"},
        {"recipe"},
        {"probes"},
        {"render"},
        {"sdf", "truth", "angles"},
    ]
    level = {m: i for i, ms in enumerate(layers) for m in ms}
    for module, i in level.items():
        for target in _relative_imports(module):
            assert level.get(target, len(layers)) > i, f"phantoms/{module}.py imports .{target} (same or higher layer)"
