"""Optional TotalSegmentator backend (Wasserthal et al. 2023, Radiology: AI 5(5)).

Used only when the ``TotalSegmentator`` package is installed *and* its weights are already on
disk: OrthoNav never downloads anything. Its bone classes are kept under their own names
(OrthoNav uses TotalSegmentator's class names), non-bone classes are dropped.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np
from orthonav.core.case import LabelTable
from orthonav.core.errors import InputError
from orthonav.core.volume import Volume, read_volume, write_volume

from .classical import Segmentation

#: Name stems of TotalSegmentator classes that are bones (task "total" and "appendicular_bones").
BONE_STEMS = (
    "femur", "tibia", "fibula", "patella", "hip", "sacrum", "vertebrae", "rib", "humerus", "scapula",
    "clavicula", "sternum", "costal_cartilages", "skull", "radius", "ulna", "carpal", "metacarpal",
    "phalanges", "tarsal", "metatarsal",
)  # fmt: skip


def _weights_dir() -> Path:
    home = os.environ.get("TOTALSEG_HOME_DIR")
    base = Path(home) if home else Path.home() / ".totalsegmentator"
    return base / "nnunet" / "results"


def totalsegmentator_status() -> str | None:
    """None when the backend can run, else the reason it cannot (for the CLI to print)."""
    if importlib.util.find_spec("totalsegmentator") is None:
        return (
            "TotalSegmentator is not installed. Install it (pip install TotalSegmentator) and fetch its "
            "weights once with 'totalseg_download_weights -t total', or use --backend classical"
        )
    wd = _weights_dir()
    if not wd.is_dir() or not any(wd.iterdir()):
        return (
            f"TotalSegmentator is installed but has no weights in {wd}; OrthoNav never downloads them. "
            "Run 'totalseg_download_weights -t total' yourself, or use --backend classical"
        )
    return None


def is_bone_class(name: str) -> bool:
    return any(name == s or name.startswith(s + "_") for s in BONE_STEMS)


def segment_totalsegmentator(ct: Volume, *, anatomy: str = "auto") -> Segmentation:
    """Run TotalSegmentator (task ``total``, plus ``appendicular_bones`` for a knee) on ``ct``.

    Raises
    ------
    InputError
        TotalSegmentator or its weights are missing (with what to do), or it finds no bone.
    """
    reason = totalsegmentator_status()
    if reason is not None:
        raise InputError(None, reason)
    from totalsegmentator.map_to_binary import class_map  # type: ignore[import-not-found]
    from totalsegmentator.python_api import totalsegmentator  # type: ignore[import-not-found]

    tasks = ["total"] + (["appendicular_bones"] if anatomy in ("knee", "auto") else [])
    labels = np.zeros(ct.array_zyx.shape, np.uint8)
    names: dict[int, str] = {}
    with tempfile.TemporaryDirectory(prefix="orthonav-ts-") as tmp:
        src = Path(tmp) / "ct.nii.gz"
        write_volume(ct, src)
        for task in tasks:
            out = Path(tmp) / f"{task}.nii.gz"
            totalsegmentator(str(src), str(out), ml=True, task=task, quiet=True)
            seg = read_volume(out)
            for value, name in class_map[task].items():
                if not is_bone_class(name) or name in names.values():
                    continue
                m = (seg.array_zyx == value) & (labels == 0)
                if m.any():
                    v = len(names) + 1
                    labels[m] = v
                    names[v] = name
    if not names:
        raise InputError(None, "no bone found: TotalSegmentator labelled no bone class in this CT")
    return Segmentation(Volume(labels, ct.lps_from_ijk.copy()), LabelTable(labels=names, backend="totalsegmentator"), None)
