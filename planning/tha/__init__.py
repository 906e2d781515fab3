"""Total hip arthroplasty (THA) planning from pelvis and proximal femur meshes.

Bones use TotalSegmentator class names: ``hip_left``, ``hip_right``, ``sacrum`` (optional),
``femur_left``, ``femur_right``. Landmarks, the anterior pelvic plane (APP) and the angles
follow docs/anatomy.md ("Hip"); all positions are LPS mm in the CT frame.

Modules, one step each, the same shape as :mod:`orthonav.planning.tka`:

* :mod:`.landmarks`: femoral head and acetabulum centres, acetabular axis, ASIS and pubic
  tubercles, shaft and neck axes, native measures (:func:`find_hip_landmarks`);
* :mod:`.proximal_femur`: the femoral head, neck, lesser trochanter and proximal shaft of
  one femur, and what a short femur cannot give (:func:`analyse_proximal_femur`);
* :mod:`.alignment`: the APP and the radiographic inclination / anteversion (Murray 1993);
* :mod:`.placement`: cup and stem sizing and poses, the neck cut a stem implies;
* :mod:`.outcomes`: angles, leg length, offsets, reaming, coverage (:func:`tha_outcomes`);
* :mod:`.trajectories`: the planned cup axes as reamer / impactor trajectories
  (:func:`cup_trajectories`), stored in the plan for navigation;
* :mod:`.plan`: the automatic plan (:func:`build_tha_plan`) and the case's hip meshes;
* :mod:`.session`: the editing session (:class:`ThaSession`).
"""

from .alignment import SIDES, acetabular_angles, app_frame, cup_axis
from .landmarks import HIP_BONES, find_hip_landmarks, pelvic_landmarks, rim_plane_axis, socket_axis, socket_sphere
from .outcomes import cup_coverage, stem_clearance, tha_outcomes
from .placement import choose_cup_size, choose_stem_size, cup_pose, neck_cut_from_stem, stem_pose
from .plan import build_tha_plan, is_hip_case, load_hip_meshes, plan_sides
from .proximal_femur import MIN_SHAFT_MM, ProximalFemur, analyse_proximal_femur
from .session import ThaSession
from .trajectories import CUP_APPROACH_MM, CUP_AXIS_PREFIX, cup_trajectories, with_cup_trajectories

__all__ = [
    "CUP_APPROACH_MM",
    "CUP_AXIS_PREFIX",
    "HIP_BONES",
    "MIN_SHAFT_MM",
    "ProximalFemur",
    "SIDES",
    "ThaSession",
    "acetabular_angles",
    "analyse_proximal_femur",
    "app_frame",
    "build_tha_plan",
    "choose_cup_size",
    "choose_stem_size",
    "cup_axis",
    "cup_coverage",
    "cup_pose",
    "cup_trajectories",
    "find_hip_landmarks",
    "is_hip_case",
    "load_hip_meshes",
    "neck_cut_from_stem",
    "pelvic_landmarks",
    "plan_sides",
    "rim_plane_axis",
    "socket_axis",
    "socket_sphere",
    "stem_clearance",
    "stem_pose",
    "tha_outcomes",
    "with_cup_trajectories",
]
