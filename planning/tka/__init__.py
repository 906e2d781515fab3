"""Total knee arthroplasty (TKA) planning from femur and tibia meshes.

Landmarks, axes and angles follow docs/anatomy.md; all positions are LPS mm in the CT frame.

Modules, one step each, the same shape as :mod:`orthonav.planning.tha`:

* :mod:`.landmarks`: knee landmarks from the bone surfaces (:func:`find_landmarks`; a tibia
  without a femur: :func:`find_tibial_landmarks`; partial CT stacks say what they lack);
* :mod:`.alignment`: limb frames, mechanical axes, alignment angles (HKA, LDFA, MPTA, slope,
  femoral rotation) and the components' alignment;
* :mod:`.cuts`: mechanical and kinematic cut planes;
* :mod:`.placement`: component sizing and poses, the cuts implied by implant poses;
* :mod:`.outcomes`: resected bone, removed volume, coverage, overhang, bone density;
* :mod:`.plan`: the automatic plan (:func:`build_tka_plan`) and the case's knee meshes;
* :mod:`.session`: the editing session (:class:`TkaSession`).
"""

from .alignment import LimbFrames, component_alignment, compute_angles, compute_axes, knee_centre, limb_frames
from .cuts import kinematic_cuts, mechanical_cuts
from .landmarks import KNEE_BONES, REQUIRED_BONES, find_landmarks, find_tibial_landmarks, infer_side
from .outcomes import BoneSolids, compute_metrics, resect, update_plan_outcomes
from .placement import cuts_from_implants, place_tka
from .plan import anatomical_axes, build_tka_plan, is_knee_case, load_knee_meshes
from .session import TkaSession, refresh_depths

__all__ = [
    "KNEE_BONES",
    "REQUIRED_BONES",
    "BoneSolids",
    "LimbFrames",
    "TkaSession",
    "anatomical_axes",
    "build_tka_plan",
    "component_alignment",
    "compute_angles",
    "compute_axes",
    "compute_metrics",
    "cuts_from_implants",
    "find_landmarks",
    "find_tibial_landmarks",
    "infer_side",
    "is_knee_case",
    "kinematic_cuts",
    "knee_centre",
    "limb_frames",
    "load_knee_meshes",
    "mechanical_cuts",
    "place_tka",
    "refresh_depths",
    "resect",
    "update_plan_outcomes",
]
