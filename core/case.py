"""The case folder: one folder per patient or phantom, each file owned by one stage.

Layout (a contract: later stages and external checks rely on these names)::

    CASE/
      ct.nii.gz                 CT in HU (int16), LPS geometry          (import / phantom)
      scanned.nii.gz            coverage mask of a multi-stack import    (import)
      import.json               the imported series / stacks and grid    (import)
      labels.nii.gz             per-bone label map (uint8)               (segment)
      labels.json               label value -> bone name, confidence, why (segment / name)
      confidence.nii.gz         optional per-voxel confidence 0..1       (segment)
      meshes/<bone>.stl|.vtp    bone surfaces, LPS mm                    (segment / mesh)
      plan.json                 landmarks, angles, implants, cuts        (plan)
      registration.json         ct_from_reference, FRE, predicted TRE    (navigate)
      sessions/<timestamp>/     recorded navigation sessions             (navigate / track)
      report/                   HTML reports and screenshots             (demo / report)
      guides/<bone>_guide.stl   patient-specific cutting guides          (plan)
      truth/                    phantom ground truth                     (phantom)
      print/phantom_*.stl       printable phantom parts                  (phantom)
      validation/<run>/         accuracy protocol results, one folder a run (validate)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from .errors import InputError, SchemaError
from .schema import Versioned, load_model, save_model

if TYPE_CHECKING:
    import pyvista as pv


#: A name that may become part of a file name inside a case (a bone, a screenshot, a tool):
#: letters, digits, '_', '-', '.', starting with a letter or digit, at most 128 characters.
#: No separators, no '..', no hidden names: nothing read from a file can write outside the case.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_name(name: str, what: str = "name", source: str | Path | None = None) -> str:
    """Return ``name`` if it is safe as (part of) a file name inside a case folder.

    Raises
    ------
    InputError
        Naming ``source`` (the file the name came from) and what is wrong: a path separator,
        "..", a leading "." or other character outside ``[A-Za-z0-9_.-]``, or an empty name.
    """
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise InputError(source, f"{what} {name!r} cannot be used in a file name: use letters, digits, '_', '-' or '.' "
                                 f"(no path separators, no '..', not starting with '.')")
    return name


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
        """Path of the mesh of ``bone`` with ending ``ext`` (".stl", ".vtp", ".ply", ".obj");
        InputError for a bone name that could leave the folder (:func:`check_name`)."""
        return self.meshes_dir / f"{check_name(bone, 'bone name')}{ext}"

    def mesh_path(self, bone: str) -> Path | None:
        """The first existing ``meshes/<bone><ext>`` over :data:`~orthonav.core.meshio.MESH_SUFFIXES`
        (.stl first), or None."""
        from .meshio import MESH_SUFFIXES

        for ext in MESH_SUFFIXES:
            p = self.mesh(bone, ext)
            if p.is_file():
                return p
        return None

    def mesh_paths(self) -> dict[str, Path]:
        """Bone name -> mesh file for every bone in ``meshes/`` (one file per bone, .stl preferred
        over the other endings). Hidden files (e.g. an unfinished atomic write) are never data."""
        from .meshio import MESH_SUFFIXES

        out: dict[str, Path] = {}
        if not self.meshes_dir.is_dir():
            return out
        for suffix in MESH_SUFFIXES:
            for p in sorted(self.meshes_dir.glob(f"*{suffix}")):
                if not p.name.startswith(".") and p.is_file():
                    out.setdefault(p.stem, p)
        return out

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


def read_case_meshes(case_dir: str | Path, bones: tuple[str, ...] | None = None) -> dict[str, "pv.PolyData"]:
    """Read the bone meshes of a case (LPS mm): every bone in ``meshes/`` (``bones`` None), or
    those of ``bones`` that are present, in that order. The one mesh reader for every stage.

    Raises
    ------
    InputError
        A mesh file that cannot be read (naming the file).
    """
    from .meshio import read_mesh

    case = Case(case_dir)
    paths = case.mesh_paths()
    names = list(paths) if bones is None else [b for b in bones if b in paths]
    return {b: read_mesh(paths[b]) for b in names}


class LabelTable(Versioned):
    """``labels.json``: which label value is which bone.

    Bone names follow TotalSegmentator's class names (``femur``, ``tibia``, ``fibula``,
    ``patella``, ``hip``, ``sacrum``), with ``_left`` / ``_right`` when both sides are present.
    """

    SCHEMA_VERSION = 2
    labels: dict[int, str] = Field(description="label value -> bone name; 0 is background and absent")
    backend: str = Field(default="", description="segmentation backend that wrote the labels")
    side: str | None = Field(default=None, description="'left', 'right' or None when both or unknown")
    # Schema 2 (version 1 files, without these, still read: empty = not recorded).
    confidence: dict[int, float] = Field(
        default_factory=dict,
        description="label value -> confidence in [0, 1] of the bone's name (1.0 when named by hand); "
        "a bone_<n> holds the confidence of the name that was withheld",
    )
    why: dict[int, str] = Field(default_factory=dict, description="label value -> what the name rests on, or why it was withheld")

    def value_of(self, bone: str) -> int:
        for v, name in self.labels.items():
            if name == bone:
                return v
        raise KeyError(bone)


def read_labels_table(path: str | Path) -> LabelTable:
    """Load ``labels.json`` (clear error if missing, corrupt or newer, or if a bone name could
    not be a file name inside the case: it names the meshes)."""
    table = load_model(path, LabelTable)
    if 0 in table.labels:
        raise SchemaError(path, "label value 0 is background and cannot name a bone")
    for name in table.labels.values():
        try:
            check_name(name, "bone name")
        except InputError as e:
            raise SchemaError(path, e.problem) from None
    return table


def write_labels_table(path: str | Path, table: LabelTable) -> Path:
    """Atomically write ``labels.json``."""
    return save_model(path, table)
