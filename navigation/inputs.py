"""What a case gives navigation: the plan, its fiducials and check points, the bone meshes,
the planned cuts as guidance frames, and (for display) the CT and the implant ghosts.

Every position is CT LPS millimetres. The plan is asked through :mod:`orthonav.planning.query`
(fiducials, medial directions, check points); meshes come from the one case mesh reader
:func:`orthonav.core.case.read_case_meshes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from orthonav.core.case import Case, read_case_meshes
from orthonav.core.errors import InputError
from orthonav.planning import query
from orthonav.planning.schema import Plan, load_plan
from orthonav.tracking.tools import ToolSet, default_toolset

from .alignment import knee_frames
from .gaps import gap_geometry
from .guidance import BoneSurface, CutFrame, cut_frame
from .session import file_sha256
from .state import KneeInputs, NavigationContext


@dataclass(frozen=True)
class CaseNavigationInputs:
    """What a case provides for navigation.

    Attributes
    ----------
    plan
        The plan read from ``plan.json``.
    context
        The navigation context without registration (tools, cut frames, trajectories, surfaces).
    fiducial_names, fiducials_ct_mm
        The plan's fiducials in touch order and their (n, 3) CT LPS positions (mm).
    bones
        Bone name -> mesh (CT LPS mm).
    ct
        The CT (:class:`~orthonav.core.volume.Volume`) for reslices, if asked for and present.
    implants
        ``'<family>_<i>'`` -> implant ghost mesh in CT LPS (display only).
    plan_sha256
        sha256 (hex) of the ``plan.json`` bytes read.
    bone_fiducials
        One array per bone: bone -> (fiducial names, (n, 3) CT LPS mm) of the fiducials on
        that bone (the landmark's ``bone``), each bone registered to its own array; empty for
        a one-array tool set.
    landmark_bones
        Landmark name -> the bone it lies on (from the plan), e.g. to verify a touch against
        the right bone's registration.
    """

    plan: Plan
    context: NavigationContext
    fiducial_names: list[str]
    fiducials_ct_mm: NDArray[np.float64]
    bones: dict[str, Any]
    ct: Any = None
    implants: dict[str, Any] = field(default_factory=dict)
    plan_sha256: str = ""
    bone_fiducials: dict[str, tuple[list[str], NDArray[np.float64]]] = field(default_factory=dict)
    landmark_bones: dict[str, str] = field(default_factory=dict)


def knee_bones(references: dict[str, str]) -> tuple[str, str] | None:
    """(femur, tibia): the bones of a knee's two arrays (bones named ``femur*`` / ``tibia*``), or None."""
    femur = next((b for b in references if b.startswith("femur")), None)
    tibia = next((b for b in references if b.startswith("tibia")), None)
    return None if femur is None or tibia is None else (femur, tibia)


def hip_array(references: dict[str, str]) -> str | None:
    """The pelvis array of a knee tool set: the reference fixed to a bone named ``pelvis*`` when
    the tool set also has a femur and a tibia array (None otherwise). It frames the kinematic
    hip centre (:class:`~orthonav.navigation.state.KneeInputs`) and is not registered: a knee
    CT has no pelvis. (With no tibia array, e.g. a hip, a pelvis array is registered as usual.)"""
    if knee_bones(references) is None:
        return None
    return next((ref for b, ref in references.items() if b.startswith("pelvis")), None)


def knee_inputs(plan: Plan, references: dict[str, str], bones: dict[str, Any], *, pelvis_reference: str | None = None) -> KneeInputs | None:
    """What live alignment and gaps need, when the tool set has an array on a femur and one on a
    tibia (bones named ``femur*`` / ``tibia*``); None otherwise. When the plan cannot give them,
    the reason is kept (``alignment_reason``: e.g. no femoral head in the CT; ``gaps_reason``:
    e.g. no planned femoral cuts, and the gap geometry is None) for the panel and the events."""
    pair = knee_bones(references)
    if pair is None:
        return None
    femur, tibia = pair
    landmarks = {k: np.asarray(v.position_lps_mm, dtype=np.float64) for k, v in plan.landmarks.items()}
    geometry, gaps_reason, alignment_reason = None, "", ""
    try:
        geometry = gap_geometry(plan, bones, femur=femur, tibia=tibia)
    except InputError as e:
        gaps_reason = f"no gaps: {e.problem}"
    try:
        knee_frames(landmarks)
    except InputError as e:
        alignment_reason = f"no alignment: {e.problem}"
    return KneeInputs(femur, tibia, landmarks, geometry, alignment_reason=alignment_reason, gaps_reason=gaps_reason,
                      pelvis_reference=pelvis_reference)


def plan_cut_frames(plan: Plan) -> dict[str, CutFrame]:
    """Every planned cut as a :class:`CutFrame`, its medial axis from
    :func:`orthonav.planning.query.medial_direction` of the cut's bone."""
    return {name: cut_frame(c.point_lps_mm, c.normal_lps, query.medial_direction(plan, c.bone)) for name, c in plan.cuts.items()}


def implant_ghosts(plan: Plan) -> dict[str, Any]:
    """Every planned implant's mesh placed in the CT (``ct_from_implant``, LPS mm), for display."""
    from orthonav.planning.implants import implant_model

    out: dict[str, Any] = {}
    for i, imp in enumerate(plan.implants):
        mesh = implant_model(imp.family, imp.size).mesh()
        out[f"{imp.family}_{i}"] = mesh.transform(np.asarray(imp.ct_from_implant, dtype=np.float64), inplace=False)
    return out


def default_check_points(plan: Plan) -> dict[str, NDArray[np.float64]]:
    """The verification points of a run when the caller names none: every plan landmark that
    is not a fiducial (CT LPS mm), :func:`orthonav.planning.query.anatomical_points`."""
    return query.anatomical_points(plan)


def load_navigation_inputs(case_dir: str | Path, toolset: ToolSet | None = None, *, surfaces: bool = True,
                           ct: bool = False) -> CaseNavigationInputs:
    """Read ``plan.json`` and ``meshes/`` of a case and build the navigation context.

    Parameters
    ----------
    case_dir
        The case folder.
    toolset
        The tools (default: :func:`~orthonav.tracking.tools.default_toolset`). A tool set with
        one reference array per bone (``ToolDefinition.bone``) gives a per-bone context: each
        bone needs at least 3 plan fiducials on it (a knee's pelvis array, :func:`hip_array`,
        is not registered: it frames the kinematic hip centre).
    surfaces
        Build a :class:`BoneSurface` per bone (tip-to-bone distance, remaining depth).
    ct
        Also read the CT and the implant ghosts (for the overlay).

    Raises
    ------
    InputError
        No plan, fewer than 3 plan fiducials (per bone with one array per bone), a plan that
        changed while read, or a mesh that cannot be read.
    """
    case = Case(case_dir)
    plan_path = case.require(case.plan, "orthonav plan")
    plan_hash = file_sha256(plan_path)
    plan = load_plan(plan_path)
    if file_sha256(plan_path) != plan_hash:
        raise InputError(plan_path, "changed while it was being read; try again")
    names, pts = query.fiducials(plan)
    if len(names) < 3:
        raise InputError(case.plan, f"has {len(names)} fiducial landmarks (fiducial_1..); registration needs at least 3")
    toolset = toolset or default_toolset()
    references = toolset.bone_references()
    pelvis = hip_array(references)
    if pelvis is not None:  # frames the kinematic hip centre only: never registered
        references = {b: r for b, r in references.items() if r != pelvis}
    by_bone: dict[str, tuple[list[str], NDArray[np.float64]]] = {}
    for bone in references:
        by_bone[bone] = query.fiducials(plan, bone)
        if len(by_bone[bone][0]) < 3:
            raise InputError(case.plan, f"has {len(by_bone[bone][0])} fiducial landmarks on {bone} (the bone of tool "
                                        f"'{references[bone]}'); registering each bone to its own array needs at least 3 per bone")
    bones = read_case_meshes(case_dir)
    surf = {b: BoneSurface(m, b) for b, m in bones.items()} if surfaces else {}
    ctx = NavigationContext(
        toolset=toolset,
        cuts=plan_cut_frames(plan),
        cut_bones={k: c.bone for k, c in plan.cuts.items()},
        trajectories={k: (np.asarray(t.entry_lps_mm, float), np.asarray(t.target_lps_mm, float)) for k, t in plan.trajectories.items()},
        surfaces=surf,
        references=references,
        trajectory_bones={k: t.bone for k, t in plan.trajectories.items()},
        knee=knee_inputs(plan, references, bones, pelvis_reference=pelvis) if references else None,
    )
    implants = implant_ghosts(plan) if ct else {}
    volume = None
    if ct and case.ct.is_file():
        from orthonav.core.volume import read_volume

        volume = read_volume(case.ct)
    return CaseNavigationInputs(plan, ctx, names, pts, bones, volume, implants, plan_hash, by_bone,
                                {k: lm.bone for k, lm in plan.landmarks.items()})


__all__ = ["CaseNavigationInputs", "default_check_points", "hip_array", "implant_ghosts", "knee_bones", "knee_inputs", "load_navigation_inputs",
           "plan_cut_frames"]
