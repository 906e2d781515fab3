"""OrthoNav phantoms: synthetic CTs with ground truth, printable phantoms, the OR scenario.

The public API of the phantom factories is importable from the package itself::

    from orthonav.phantoms import make_hip_phantom, make_phantom_case, read_truth

    case = make_phantom_case("knee", "case", seed=0, small=True)   # what `orthonav phantom` does
    phantom = make_hip_phantom(seed=1, inclination_deg=45.0)        # in memory
    truth = read_truth(case.root)

and the OR side: :func:`serve_scenario` (scripted tracker stream), :func:`validate_and_report`
(the accuracy protocol) and :func:`run_demo` (the whole chain on the knee phantom).

Modules import downward only: :mod:`.synthetic` (build by kind, write the case folder) ->
the anatomies :mod:`.knee`, :mod:`.hip`, :mod:`.long_bone` (bone SDFs, landmarks,
parameters) -> :mod:`.recipe` (the one recipe: pose, grid, beads, rendering, truth) ->
:mod:`.probes` (SDF surface probes) and :mod:`.render` (the CT engine) -> :mod:`.sdf`,
:mod:`.truth`, :mod:`.angles`; :mod:`.printable` (printable models) and :mod:`.printed_ct`
(the CT of a printed model) sit beside the anatomies.

Names are loaded lazily (PEP 562 module ``__getattr__``): ``import orthonav.phantoms`` (or a
light module such as ``orthonav.phantoms.truth``) imports neither pyvista/VTK nor
manifold3d until a name from a heavy module is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orthonav.core import lazy_exports

#: module (relative to this package) -> the public names it gives the package namespace.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "synthetic": ("make_phantom_case", "write_phantom_case", "PHANTOM_FACTORIES"),
    "knee": ("make_knee_phantom", "KneeParameters", "KNEE_RECIPE"),
    "hip": ("make_hip_phantom", "HipParameters", "HIP_RECIPE", "hip_angles", "app_frame"),
    "long_bone": ("make_long_bone_phantom", "LongBoneParameters", "LONG_BONE_RECIPE", "FEMORAL_LANDMARKS"),
    "recipe": ("make_phantom", "tissue_fractions", "AnatomyRecipe", "AnatomyTruth", "PhantomGeometry"),
    "render": ("SyntheticPhantom", "BoneSpec", "GridSpec", "DEFAULT_HU", "TISSUES", "fit_grid", "render_ct", "render_fractions", "surface_mesh"),
    "printable": ("make_printable", "PrintedPhantom", "PrintedPhantomSpec"),
    "printed_ct": ("render_printed_ct", "write_printed_case"),
    "truth": ("PhantomTruth", "read_truth", "write_truth", "truth_path"),
    "angles": ("knee_angles",),
    "fov": ("FovSpec", "FovCase", "random_fov", "apply_fov", "truth_regions"),
    "study": ("write_lower_limb_study", "LowerLimbStudy", "StackSpec", "LOWER_LIMB_STACKS", "write_ct_series"),
    # the OR scenario, the accuracy protocol and the demo (what the CLI calls)
    "scenario": ("serve_scenario",),
    "scenario_two_array": ("knee_two_array_scenario", "serve_two_array_scenario", "navigate_two_array_offline"),
    "validation": ("validate_and_report",),
    "demo": ("run_demo",),
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what static tools (mypy, IDEs) see; the same names as ``_EXPORTS``
    from .angles import knee_angles
    from .demo import run_demo
    from .fov import FovCase, FovSpec, apply_fov, random_fov, truth_regions
    from .hip import HIP_RECIPE, HipParameters, app_frame, hip_angles, make_hip_phantom
    from .knee import KNEE_RECIPE, KneeParameters, make_knee_phantom
    from .long_bone import FEMORAL_LANDMARKS, LONG_BONE_RECIPE, LongBoneParameters, make_long_bone_phantom
    from .printable import PrintedPhantom, PrintedPhantomSpec, make_printable
    from .printed_ct import render_printed_ct, write_printed_case
    from .recipe import AnatomyRecipe, AnatomyTruth, PhantomGeometry, make_phantom, tissue_fractions
    from .render import DEFAULT_HU, TISSUES, BoneSpec, GridSpec, SyntheticPhantom, fit_grid, render_ct, render_fractions, surface_mesh
    from .scenario import serve_scenario
    from .scenario_two_array import knee_two_array_scenario, navigate_two_array_offline, serve_two_array_scenario
    from .study import LOWER_LIMB_STACKS, LowerLimbStudy, StackSpec, write_ct_series, write_lower_limb_study
    from .synthetic import PHANTOM_FACTORIES, make_phantom_case, write_phantom_case
    from .truth import PhantomTruth, read_truth, truth_path, write_truth
    from .validation import validate_and_report
