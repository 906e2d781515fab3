"""``truth/truth.json``: the ground truth of a synthetic phantom (versioned, pydantic).

All points are LPS millimetres in the phantom CT's frame; ``ct_from_limb`` maps the limb
frame the phantom was built in (x medial for a right leg, y posterior, z superior, mm) into
that CT frame. Landmark keys and angle definitions follow ``docs/anatomy.md``.

Fiducial order (``fiducial_1..n``): by decreasing LPS z (most superior bead first). The rule
only needs the CT, so a bead detector can reproduce it; beads are placed >= 10 mm apart in z.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from orthonav.core.case import Case
from orthonav.core.schema import Versioned, load_model, save_model

Vec3 = tuple[float, float, float]


class PhantomTruth(Versioned):
    """Ground truth of one synthetic phantom."""

    SCHEMA_VERSION = 1
    kind: str = Field(description="'knee', 'hip' or 'long_bone'")
    seed: int
    parameters: dict[str, float | int | str | bool | list[float]] = Field(default_factory=dict)
    side: str = "right"
    bones: dict[str, int] = Field(description="bone name -> label value in truth/labels.nii.gz")
    fiducials_lps_mm: dict[str, Vec3] = Field(description="bead centres, fiducial_1..n, ordered by decreasing LPS z")
    fiducial_bones: dict[str, str] = Field(default_factory=dict, description="fiducial name -> bone it sits on")
    targets_lps_mm: dict[str, Vec3] = Field(description="points on the bones, away from the fiducials, for TRE")
    target_bones: dict[str, str] = Field(default_factory=dict, description="target name -> bone")
    landmarks_lps_mm: dict[str, Vec3] = Field(description="docs/anatomy.md landmark keys")
    angles_deg: dict[str, float] = Field(description="hka, ldfa, mpta, slope, femoral_rotation (docs/anatomy.md)")
    medial_plateau_ap_tangent_lps: Vec3 | None = Field(
        default=None, description="unit antero-posterior tangent of the medial plateau (towards posterior), used for 'slope'"
    )
    ct_from_limb: list[list[float]] = Field(description="4x4 rigid, limb frame -> CT LPS")
    reference_mount_lps_mm: Vec3 = Field(description="where a patient reference marker is screwed (femoral shaft surface)")
    reference_mount_normal_lps: Vec3 | None = Field(default=None, description="outward bone surface normal at the mount")
    bead_radius_mm: float
    bead_hu: float = 4000.0
    hu: dict[str, float] = Field(default_factory=dict, description="nominal HU of each material")
    gaps_mm: dict[str, float] = Field(default_factory=dict, description="measured minimum surface gaps between bones")

    def points(self, group: str) -> tuple[list[str], NDArray[np.float64]]:
        """Names and (n, 3) LPS mm array of ``'fiducials'``, ``'targets'`` or ``'landmarks'``."""
        d = {"fiducials": self.fiducials_lps_mm, "targets": self.targets_lps_mm, "landmarks": self.landmarks_lps_mm}[group]
        names = list(d)
        return names, np.array([d[n] for n in names], dtype=np.float64).reshape(-1, 3)

    def ct_from_limb_array(self) -> NDArray[np.float64]:
        """``ct_from_limb`` as a (4, 4) float64 array."""
        return np.asarray(self.ct_from_limb, dtype=np.float64)


def truth_path(case_dir: str | Path) -> Path:
    """``CASE/truth/truth.json``."""
    return Case(case_dir).truth_dir / "truth.json"


def read_truth(case_dir: str | Path) -> PhantomTruth:
    """Load ``CASE/truth/truth.json`` (InputError if missing, SchemaError if invalid)."""
    return load_model(truth_path(case_dir), PhantomTruth)


def write_truth(case_dir: str | Path, truth: PhantomTruth) -> Path:
    """Atomically write ``CASE/truth/truth.json``."""
    return save_model(truth_path(case_dir), truth)
