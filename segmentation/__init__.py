"""OrthoNav segmentation: CT import, classical and learned bone segmentation, meshing, evaluation.

The public API is importable from the package itself::

    from orthonav.segmentation import import_source, segment_case, evaluate_segmentation

Names are loaded lazily (PEP 562 module ``__getattr__``): ``import orthonav.segmentation``
imports none of SimpleITK, VTK or torch; a name pulls in only its own module when first
used (the U-Net names, from ``unet``, are the only ones that import torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orthonav.core import lazy_exports

#: module (relative to this package) -> the public names it gives the package namespace.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "importer": ("SeriesInfo", "ImportSummary", "list_dicom_series", "read_dicom_ct", "read_series", "check_looks_like_ct", "import_ct", "import_source"),
    "stacks": ("Stack", "StackSource", "ImportRecord", "combine_stacks", "check_one_frame", "read_scanned", "read_import_record"),
    "bone_mask": ("BoneLevels", "bone_levels"),
    "image_checks": ("ImageHeader", "memory_limit_bytes", "check_image_file", "read_checked_volume"),
    "classical": ("ANATOMIES", "Segmentation", "ClassicalParams", "segment_classical"),
    "naming": ("RegionInfo", "Naming", "CONFIDENT", "detect_anatomy", "name_bones", "name_regions", "regions_from_label_map"),
    "relabel": ("Relabelled", "parse_assignments", "relabel_case"),
    "meshing": ("mask_mesh", "label_meshes", "is_watertight"),
    "evaluate": ("BoneScores", "score_masks", "evaluate_segmentation", "evaluate_paths", "scores_table", "write_scores_json"),
    "slicer_seg": ("write_seg_nrrd",),
    "totalseg": ("totalsegmentator_status", "segment_totalsegmentator"),
    "unet": ("ModelCard", "segment_unet", "train_from_folder"),  # imports torch
    "pipeline": ("BACKENDS", "BoneSummary", "SegmentationSummary", "run_backend", "segment_case", "mesh_case", "load_segmentation",
                 "low_confidence_warnings"),
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what static tools (mypy, IDEs) see; the same names as ``_EXPORTS``
    from .classical import ANATOMIES, ClassicalParams, Segmentation, segment_classical
    from .evaluate import BoneScores, evaluate_paths, evaluate_segmentation, score_masks, scores_table, write_scores_json
    from .image_checks import ImageHeader, check_image_file, memory_limit_bytes, read_checked_volume
    from .bone_mask import BoneLevels, bone_levels
    from .importer import ImportSummary, SeriesInfo, check_looks_like_ct, import_ct, import_source, list_dicom_series, read_dicom_ct, read_series
    from .meshing import is_watertight, label_meshes, mask_mesh
    from .naming import CONFIDENT, Naming, RegionInfo, detect_anatomy, name_bones, name_regions, regions_from_label_map
    from .relabel import Relabelled, parse_assignments, relabel_case
    from .pipeline import (
        BACKENDS,
        BoneSummary,
        SegmentationSummary,
        load_segmentation,
        low_confidence_warnings,
        mesh_case,
        run_backend,
        segment_case,
    )
    from .slicer_seg import write_seg_nrrd
    from .stacks import ImportRecord, Stack, StackSource, check_one_frame, combine_stacks, read_import_record, read_scanned
    from .totalseg import segment_totalsegmentator, totalsegmentator_status
    from .unet import ModelCard, segment_unet, train_from_folder
