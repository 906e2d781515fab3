"""The case folder: one folder per patient or phantom, each file owned by one stage.

Layout (a contract: later stages and external checks rely on these names)::

    CASE/
      ct.nii.gz                 CT in HU (int16), LPS geometry          (import / phantom)
      labels.nii.gz             per-bone label map (uint8)               (segment)
      labels.json               label value -> bone name                 (segment)
      confidence.nii.gz         optional per-voxel confidence 0..1       (segment)
      meshes/<bone>.stl|.vtp    bone surfaces, LPS mm                    (segment / mesh)
      plan.json                 landmarks, angles, implants, cuts        (plan)
      registration.json         ct_from_reference, FRE, predicted TRE    (navigate)
      sessions/<timestamp>/     recorded navigation sessions             (navigate / track)
      report/                   HTML reports and screenshots             (demo / report)
      guides/<bone>_guide.stl   patient-specific cutting guides          (plan)
      truth/                    phantom ground truth                     (phantom)
      print/phantom_*.stl       printable phantom parts                  (phantom)
      validation/               accuracy protocol results                (validate)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pydantic import Field

from .errors import InputError, SchemaError
from .schema import Versioned, load_model, save_model


@dataclass(frozen=True)
class Case:
    """Paths inside a case folder. Creating a :class:`Case` touches nothing on disk."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def ct(self) -> Path:
        return self.root / "ct.nii.gz"

    @property
    def labels(self) -> Path:
        return self.root / "labels.nii.gz"

    @property
    def labels_json(self) -> Path:
        return self.root / "labels.json"

    @property
    def confidence(self) -> Path:
        return self.root / "confidence.nii.gz"

    @property
    def meshes_dir(self) -> Path:
        return self.root / "meshes"

    def mesh(self, bone: str, ext: str = ".stl") -> Path:
        """Path of the mesh of ``bone`` with ending ``ext`` (".stl", ".vtp", ".ply", ".obj")."""
        return self.meshes_dir / f"{bone}{ext}"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def registration(self) -> Path:
        return self.root / "registration.json"

    @property
    def sessions_dir(self) -> Path:
        return self.root / "sessions"

    def new_session_dir(self) -> Path:
        """A new, empty ``sessions/<UTC timestamp>/`` folder."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        d = self.sessions_dir / stamp
        d.mkdir(parents=True, exist_ok=False)
        return d

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def guides_dir(self) -> Path:
        return self.root / "guides"

    @property
    def truth_dir(self) -> Path:
        return self.root / "truth"

    @property
    def print_dir(self) -> Path:
        return self.root / "print"

    @property
    def validation_dir(self) -> Path:
        return self.root / "validation"

    def require(self, path: Path, made_by: str) -> Path:
        """Return ``path`` if it exists, else raise an InputError saying which step makes it."""
        if not path.exists():
            raise InputError(path, f"missing from case {self.root}; run '{made_by}' first")
        return path


class LabelTable(Versioned):
    """``labels.json``: which label value is which bone.

    Bone names follow TotalSegmentator's class names (``femur``, ``tibia``, ``fibula``,
    ``patella``, ``hip``, ``sacrum``), with ``_left`` / ``_right`` when both sides are present.
    """

    SCHEMA_VERSION = 1
    labels: dict[int, str] = Field(description="label value -> bone name; 0 is background and absent")
    backend: str = Field(default="", description="segmentation backend that wrote the labels")
    side: str | None = Field(default=None, description="'left', 'right' or None when both or unknown")

    def value_of(self, bone: str) -> int:
        for v, name in self.labels.items():
            if name == bone:
                return v
        raise KeyError(bone)


def read_labels_table(path: str | Path) -> LabelTable:
    """Load ``labels.json`` (clear error if missing, corrupt or newer)."""
    table = load_model(path, LabelTable)
    if 0 in table.labels:
        raise SchemaError(path, "label value 0 is background and cannot name a bone")
    return table


def write_labels_table(path: str | Path, table: LabelTable) -> Path:
    """Atomically write ``labels.json``."""
    return save_model(path, table)
