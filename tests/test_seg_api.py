"""The public API of ``orthonav.segmentation``: every name importable from the package, and
importing it stays cheap (torch only with the U-Net names)."""

from __future__ import annotations

import subprocess
import sys

from public_api import check_public_api


def test_segmentation_public_api_is_complete_and_cheap_to_import():
    check_public_api("orthonav.segmentation", ("torch", "SimpleITK", "vtk", "pyvista", "scipy"))


def test_the_classical_chain_does_not_import_torch():
    """Import, classical segmentation, meshing and evaluation never load torch (only the U-Net
    names, from ``orthonav.segmentation.unet``, do)."""
    code = (
        "import sys\n"
        "from orthonav.segmentation import evaluate_segmentation, import_source, label_meshes, segment_case, segment_classical\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split()[-1:] == ["False"], out.stdout
