"""3D Slicer markups (``.mrk.json``) import and export for landmarks (manual override).

Slicer's point-list files (markups schema v1.0.x) carry ``coordinateSystem`` "LPS" or "RAS";
we write LPS (Slicer's own default for files) and read either, converting RAS points with
:func:`orthonav.core.transforms.lps_from_ras_points` (the one LPS/RAS boundary). A control
point's ``label`` is the landmark key (docs/anatomy.md); its ``description`` carries the bone.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from orthonav.core.atomic import write_json
from orthonav.core.errors import SchemaError
from orthonav.core.schema import read_json_file
from orthonav.core.transforms import lps_from_ras_points, ras_from_lps_points

from .schema import Landmark

MARKUPS_SCHEMA = "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#"


def export_markups(landmarks: Mapping[str, Landmark], path: str | Path, *, coordinate_system: str = "LPS", name: str = "OrthoNav landmarks") -> Path:
    """Write landmarks as one Slicer point list (``coordinate_system`` 'LPS' or 'RAS')."""
    if coordinate_system not in ("LPS", "RAS"):
        raise SchemaError(path, f"coordinate_system must be 'LPS' or 'RAS', got {coordinate_system!r}")
    names = list(landmarks)
    p_lps = np.array([landmarks[n].position_lps_mm for n in names], dtype=float).reshape(-1, 3)
    p = p_lps if coordinate_system == "LPS" else ras_from_lps_points(p_lps)
    # Slicer stores each point's orientation (identity in RAS) in the file's coordinate system.
    orientation = [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0] if coordinate_system == "LPS" else [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    points = [
        {
            "id": str(i + 1),
            "label": n,
            "description": f"{landmarks[n].bone}; {landmarks[n].method}",
            "associatedNodeID": "",
            "position": [float(x) for x in p[i]],
            "orientation": orientation,
            "selected": True,
            "locked": False,
            "visibility": True,
            "positionStatus": "defined",
        }
        for i, n in enumerate(names)
    ]
    doc = {
        "@schema": MARKUPS_SCHEMA,
        "markups": [
            {
                "type": "Fiducial",
                "coordinateSystem": coordinate_system,
                "coordinateUnits": "mm",
                "locked": False,
                "fixedNumberOfControlPoints": False,
                "labelFormat": "%N-%d",
                "lastUsedControlPointNumber": len(points),
                "controlPoints": points,
                "display": {"visibility": True, "glyphScale": 2.0, "textScale": 2.0},
                "name": name,
            }
        ],
    }
    return write_json(path, doc)


def import_markups(path: str | Path, *, default_bone: str = "unknown") -> dict[str, Landmark]:
    """Read every control point of every point list in a Slicer ``.mrk.json`` as a landmark
    (LPS mm, method 'markups import'). Raises SchemaError naming the file on any problem."""
    p = Path(path)
    doc = read_json_file(p, "markups file")
    if not isinstance(doc, dict) or not isinstance(doc.get("markups"), list):
        raise SchemaError(p, "not a Slicer markups file (no 'markups' list)")
    out: dict[str, Landmark] = {}
    for mi, mk in enumerate(doc["markups"]):
        if not isinstance(mk, dict):
            raise SchemaError(p, f"markups[{mi}] is not an object")
        cs = mk.get("coordinateSystem", "LPS")
        if cs not in ("LPS", "RAS"):
            raise SchemaError(p, f"markups[{mi}] has coordinateSystem {cs!r}; expected 'LPS' or 'RAS'")
        units = mk.get("coordinateUnits", "mm")
        if units != "mm":
            raise SchemaError(p, f"markups[{mi}] uses units {units!r}; only mm is supported")
        for ci, cp in enumerate(mk.get("controlPoints", [])):
            label = cp.get("label") if isinstance(cp, dict) else None
            pos = cp.get("position") if isinstance(cp, dict) else None
            if not isinstance(label, str) or not label:
                raise SchemaError(p, f"markups[{mi}].controlPoints[{ci}] has no label")
            if cp.get("positionStatus", "defined") != "defined":
                continue  # placeholder ("preview" / "undefined"): Slicer may store no usable position
            try:
                xyz = np.asarray(pos, dtype=float)
            except (TypeError, ValueError) as e:
                raise SchemaError(p, f"control point {label!r} has a non-numeric position") from e
            if xyz.shape != (3,) or not np.all(np.isfinite(xyz)):
                raise SchemaError(p, f"control point {label!r} needs 3 finite coordinates, got {pos!r}")
            lps = xyz if cs == "LPS" else lps_from_ras_points(xyz)
            desc = cp.get("description", "")
            bone = desc.split(";")[0].strip() if isinstance(desc, str) and desc.strip() else default_bone
            if label in out:
                raise SchemaError(p, f"landmark {label!r} appears twice")
            out[label] = Landmark(position_lps_mm=tuple(float(x) for x in lps), bone=bone, method="markups import")
    return out


__all__ = ["export_markups", "import_markups"]


def import_markups_into_case(case_dir: str | Path, path: str | Path) -> list[str]:
    """Override the case plan's landmarks with those in a Slicer markups file; axes, angles,
    cuts and metrics are recomputed and ``plan.json`` is saved atomically. Returns the names set."""
    from orthonav.core.case import Case
    from orthonav.core.errors import InputError

    from .auto import load_case_meshes, session_for
    from .schema import load_plan

    case = Case(case_dir)
    imported = import_markups(path)
    plan = load_plan(case.require(case.plan, "orthonav plan CASE --auto"))
    unknown = sorted(set(imported) - set(plan.landmarks))
    if unknown:  # e.g. Slicer's default labels 'F-1': refuse rather than add meaningless landmarks
        raise InputError(path, f"landmarks {unknown} are not in the plan; rename them to one of {sorted(plan.landmarks)}")
    session = session_for(plan, load_case_meshes(case_dir, plan.procedure))
    for name, lm in imported.items():
        known = name in session.plan.landmarks
        session.set_landmark(name, lm.position_lps_mm, method="markups import", bone=None if known or lm.bone == "unknown" else lm.bone)
    session.save(case.plan)
    return sorted(imported)
