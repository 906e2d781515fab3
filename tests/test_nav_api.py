"""The public API of ``orthonav.navigation``: every name importable from the package, none
private, and importing the package loads no renderer (the overlay and Slicer stream are
imported from their own modules)."""

from __future__ import annotations

from public_api import check_public_api


def test_navigation_public_api_is_complete_and_cheap_to_import():
    check_public_api("orthonav.navigation", ("pyvista", "vtk", "scipy", "pydantic"))


def test_navigation_never_imports_phantoms():
    """Navigation takes no ground truth: running and replaying a session loads no phantom code."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import orthonav.navigation.navigate, orthonav.navigation.replay, orthonav.navigation.inputs\n"
            "print(sorted(m for m in sys.modules if m.startswith('orthonav.phantoms')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
