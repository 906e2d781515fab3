"""OrthoNav planning: CT bone meshes -> landmarks, axes, angles, cuts, implants -> ``plan.json``.

The public API (``from orthonav.planning import auto_plan, load_plan, Plan, ...``)::

    plan = auto_plan(case_dir)                       # TKA or THA by the case's bones
    session = session_for(plan, load_case_meshes(case_dir, plan.procedure))
    session.move_implant("tka_femoral", rotation_deg=2.0)
    save_plan(path, session.plan)

Procedure-specific code is in :mod:`orthonav.planning.tka` (knee) and
:mod:`orthonav.planning.tha` (hip), which have the same shape (landmarks, alignment,
placement, outcomes, plan, session); the modules at this level are shared by both (schema,
meshes, meshops, implants library, landmark primitives, fiducials, query, scene, report,
ui, markups, guides). Other stages ask a plan their questions through
:mod:`orthonav.planning.query`.

Names are imported on first use, so ``import orthonav.planning.schema`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the module (under orthonav.planning) that defines it.
_API = {
    # the plan file
    "Axis": "schema",
    "CutPlane": "schema",
    "ImplantPlacement": "schema",
    "Landmark": "schema",
    "Plan": "schema",
    "load_plan": "schema",
    "require": "schema",
    "save_plan": "schema",
    # planning a case
    "auto_plan": "auto",
    "case_procedure": "auto",
    "load_case_meshes": "auto",
    "session_for": "auto",
    "PlanSession": "session",
    "build_tka_plan": "tka",
    "TkaSession": "tka",
    "knee_angles": "tka",
    "limb_frames": "tka",
    "build_tha_plan": "tha",
    "ThaSession": "tha",
    "tha_outcomes": "tha",
    # implants, fiducials
    "implant_model": "implants",
    "register_custom_implant": "implants",
    "detect_fiducial_beads": "fiducials",
    # outputs
    "render_plan": "scene",
    "write_plan_report": "report",
    "write_guides": "guides",
    "export_markups": "markups",
    "import_markups": "markups",
    "import_markups_into_case": "markups",
    "open_planner": "ui",
}

#: Public names that are another module's name for the same object.
_ALIASES = {"knee_angles": "compute_angles"}

__all__ = sorted(_API)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load on first use
    from .auto import auto_plan, case_procedure, load_case_meshes, session_for
    from .fiducials import detect_fiducial_beads
    from .guides import write_guides
    from .implants import implant_model, register_custom_implant
    from .markups import export_markups, import_markups, import_markups_into_case
    from .report import write_plan_report
    from .scene import render_plan
    from .schema import Axis, CutPlane, ImplantPlacement, Landmark, Plan, load_plan, require, save_plan
    from .session import PlanSession
    from .tha import ThaSession, build_tha_plan, tha_outcomes
    from .tka import TkaSession, build_tka_plan, limb_frames
    from .tka import compute_angles as knee_angles
    from .ui import open_planner


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (PEP 562)."""
    if name not in _API:
        raise AttributeError(f"module 'orthonav.planning' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), _ALIASES.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
