"""OrthoNav core: rigid transforms, volumes, meshes, the case folder, schemas and errors.

Everything here is frame- and unit-explicit: points are millimetres in the CT's LPS
patient frame, rigid transforms are 4x4 float64 arrays named ``a_from_b``.

The public API is importable from the package itself::

    from orthonav.core import Case, InputError, Volume, paired_point, read_volume

Names are loaded lazily (PEP 562 module ``__getattr__``, as SciPy and PyVista do): importing
``orthonav.core`` or one of its light modules (``errors``, ``transforms``) does not import
SimpleITK (``volume``), pyvista/VTK (``meshio``) or pydantic (``schema``, ``case``) until a
name from those modules is asked for. Every other package imports ``orthonav.core``, so this
keeps, e.g., ``import orthonav.tracking`` free of a renderer.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: module (relative to this package) -> the public names it gives the package namespace.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "errors": ("OrthoNavError", "InputError", "SchemaError", "RegistrationError", "TrackingError"),
    "transforms": (
        "RAS_FROM_LPS",
        "validate_rigid",
        "make_rigid",
        "invert",
        "compose",
        "apply",
        "apply_vector",
        "rotation_about_axis",
        "rotation_angle_deg",
        "random_rigid",
        "ras_from_lps_points",
        "lps_from_ras_points",
        "ras_from_lps_transform",
        "lps_from_ras_transform",
    ),
    "vectors": ("unit", "perpendicular"),
    "procrustes": ("PairedPointResult", "paired_point"),
    "atomic": (
        "atomic_path",
        "open_atomic",
        "write_bytes",
        "write_text",
        "write_json",
        "write_with",
        "remove_stale_temporaries",
        "CommitOnExit",
        "JsonLinesWriter",
        "JournalWriter",
        "iter_json_lines",
    ),
    "schema": ("Versioned", "read_json_file", "load_model", "save_model"),
    "volume": ("Volume", "VOLUME_SUFFIXES", "make_lps_from_ijk", "from_sitk", "to_sitk", "read_volume", "write_volume", "lps_bounds_of"),
    "meshio": ("MESH_SUFFIXES", "read_mesh", "write_mesh"),
    "case": ("Case", "LabelTable", "check_name", "read_labels_table", "write_labels_table", "read_case_meshes"),
}


def lazy_exports(package: str, exports: Mapping[str, tuple[str, ...]]) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """Lazy public names for a package ``__init__`` (PEP 562), as ``lazy_loader.attach`` does.

    Parameters
    ----------
    package
        The package's ``__name__``.
    exports
        Submodule name (relative to ``package``) -> the public names taken from it.

    Returns
    -------
    ``(__getattr__, __dir__, __all__)`` to assign at the package's module level. The module
    ``__getattr__`` imports the submodule holding a name the first time the name is asked
    for (attribute access or ``from package import name``); an unknown name raises
    ``AttributeError``. A submodule named in ``exports`` is imported when asked for as an
    attribute. The name is then set on the package, so later look-ups are plain
    attribute reads. A name given by two submodules is a ``ValueError`` here.
    """
    module_of: dict[str, str] = {}
    for module, names in exports.items():
        for name in names:
            if name in module_of:
                raise ValueError(f"{package}: {name!r} is exported by both {module_of[name]!r} and {module!r}")
            module_of[name] = module
    all_names = sorted(module_of)

    def __getattr__(name: str) -> Any:
        if name in exports:  # a submodule, e.g. ``orthonav.core.transforms`` after ``import orthonav.core``
            return importlib.import_module(f"{package}.{name}")
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(all_names) | set(exports))

    return __getattr__, __dir__, all_names


__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
__all__ = [*__all__, "lazy_exports"]

if TYPE_CHECKING:  # what static tools (mypy, IDEs) see; the same names as ``_EXPORTS``
    from .atomic import (
        CommitOnExit,
        JournalWriter,
        JsonLinesWriter,
        atomic_path,
        iter_json_lines,
        open_atomic,
        remove_stale_temporaries,
        write_bytes,
        write_json,
        write_text,
        write_with,
    )
    from .case import Case, LabelTable, check_name, read_case_meshes, read_labels_table, write_labels_table
    from .errors import InputError, OrthoNavError, RegistrationError, SchemaError, TrackingError
    from .meshio import MESH_SUFFIXES, read_mesh, write_mesh
    from .procrustes import PairedPointResult, paired_point
    from .schema import Versioned, load_model, read_json_file, save_model
    from .transforms import (
        RAS_FROM_LPS,
        apply,
        apply_vector,
        compose,
        invert,
        lps_from_ras_points,
        lps_from_ras_transform,
        make_rigid,
        random_rigid,
        ras_from_lps_points,
        ras_from_lps_transform,
        rotation_about_axis,
        rotation_angle_deg,
        validate_rigid,
    )
    from .vectors import perpendicular, unit
    from .volume import VOLUME_SUFFIXES, Volume, from_sitk, lps_bounds_of, make_lps_from_ijk, read_volume, to_sitk, write_volume
