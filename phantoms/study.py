"""A low-dose lower-limb CT study of the knee phantom: hip, knee and ankle stacks as DICOM series.

Robotic and navigated knee systems plan from three short CT stacks of one patient in one frame
of reference: a thin-slice stack around the knee and thick, low-dose stacks through the hip
and the ankle, with unscanned gaps between them. :func:`write_lower_limb_study` cuts such a
study out of the knee phantom (which covers hip to ankle):

* **knee**: the phantom CT's own slices around the joint (its grid, oblique direction matrix
  and spacing, voxels copied unchanged), so the knee stack equals the phantom CT exactly;
* **hip** and **ankle**: axis-aligned LPS stacks (identity orientation, as a scanner's axial
  slices) around the femoral head and the ankle centre, with thicker slices (2 x the phantom's)
  and coarser pixels (1.25 x), resampled from the phantom CT (linear; air outside it); their
  field of view is the body's box in that slab plus 10 mm.

All three share one Study Instance UID and one Frame of Reference UID (0020,0052), each has its
own Series Instance UID, number and description; they are written with SimpleITK (GDCM) as
int16 HU (rescale slope 1, intercept 0), one file per slice, into ``DIR/dicom/``. The truth of
the whole limb is written as for any phantom case (``DIR/truth/``: labels, label table, meshes,
``truth.json`` with the landmarks, all in the shared LPS frame) plus ``truth/full_ct.nii.gz``
(the phantom CT the stacks were cut from). ``orthonav import DIR/dicom DIR`` then makes the
case's CT (:mod:`orthonav.segmentation.stacks`).

UIDs are ``2.25.<uuid>`` (ISO/IEC 9834-8, no registered root needed) derived from the seed, so
a study is reproducible.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from orthonav.core.case import Case, write_labels_table
from orthonav.core.errors import InputError
from orthonav.core.meshio import write_mesh
from orthonav.core.volume import Volume, make_lps_from_ijk, to_sitk, write_volume

from .knee import make_knee_phantom
from .render import SyntheticPhantom
from .truth import write_truth

#: The study's folder of DICOM files inside the output folder.
DICOM_DIR = "dicom"
#: The phantom CT the stacks were cut from, inside ``truth/``.
FULL_CT_NAME = "full_ct.nii.gz"


@dataclass(frozen=True)
class StackSpec:
    """One stack of the protocol: a slab of the limb around a truth landmark.

    Attributes
    ----------
    name
        "hip", "knee" or "ankle" (also the Series Description and the file prefix).
    landmark
        Truth landmark key (or "knee_joint": midway between the femoral and tibial knee centres)
        the slab is placed around.
    below_mm, above_mm
        Slab extent inferior / superior of the landmark (LPS z, mm).
    native
        True: the phantom CT's own slices (exact copy); False: an axis-aligned LPS stack.
    in_plane_factor, slice_factor
        Pixel / slice spacing of an axis-aligned stack relative to the phantom's.
    """

    name: str
    landmark: str
    below_mm: float
    above_mm: float
    native: bool = False
    in_plane_factor: float = 1.25
    slice_factor: float = 2.0


#: The lower-limb protocol: hip (femoral head and neck, lesser trochanter), knee (joint +- 100 mm,
#: with the patella and the fibular head), ankle (both malleoli).
LOWER_LIMB_STACKS = (
    StackSpec("hip", "femoral_head_centre", below_mm=80.0, above_mm=40.0),
    StackSpec("knee", "knee_joint", below_mm=100.0, above_mm=100.0, native=True),
    StackSpec("ankle", "ankle_centre", below_mm=40.0, above_mm=60.0),
)


@dataclass(frozen=True)
class WrittenStack:
    """A stack written as a DICOM series: its spec, UIDs, volume (int16 HU, LPS) and files."""

    spec: StackSpec
    series_uid: str
    series_number: int
    volume: Volume
    files: tuple[Path, ...]


@dataclass(frozen=True)
class LowerLimbStudy:
    """What :func:`write_lower_limb_study` wrote.

    Attributes
    ----------
    root
        The output folder (a case folder without ``ct.nii.gz`` until it is imported).
    dicom_dir
        The folder holding the three series.
    study_uid, frame_uid
        The shared Study Instance UID and Frame of Reference UID.
    stacks
        The written stacks, in protocol order.
    phantom
        The phantom the stacks were cut from (full CT, labels, truth).
    """

    root: Path
    dicom_dir: Path
    study_uid: str
    frame_uid: str
    stacks: tuple[WrittenStack, ...]
    phantom: SyntheticPhantom

    @property
    def case(self) -> Case:
        return Case(self.root)


def _uid(seed: int, what: str) -> str:
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, f'https://orthonav/phantom-study/{seed}/{what}').int}"


def _centre_z(phantom: SyntheticPhantom, landmark: str) -> float:
    lm = phantom.truth.landmarks_lps_mm
    if landmark == "knee_joint":
        return 0.5 * (lm["femoral_knee_centre"][2] + lm["tibial_knee_centre"][2])
    if landmark not in lm:
        raise InputError(None, f"unknown landmark {landmark!r} for a stack; known: {', '.join(sorted(lm))}, knee_joint")
    return float(lm[landmark][2])


def _native_stack(ct: Volume, z_lo: float, z_hi: float) -> Volume:
    """The phantom CT's slices whose centre (LPS z) lies in [z_lo, z_hi]: an exact copy."""
    ni, nj, nk = ct.shape_ijk
    centres = ct.to_lps(np.array([[(ni - 1) / 2, (nj - 1) / 2, k] for k in range(nk)], dtype=float))[:, 2]
    ks = np.flatnonzero((centres >= z_lo) & (centres <= z_hi))
    if ks.size < 2:
        raise InputError(None, f"a stack from z {z_lo:.0f} to {z_hi:.0f} mm holds fewer than 2 slices of the phantom CT")
    k0, k1 = int(ks.min()), int(ks.max())
    m = ct.lps_from_ijk.copy()
    m[:3, 3] = ct.to_lps(np.array([[0.0, 0.0, float(k0)]]))[0]
    return Volume(np.ascontiguousarray(ct.array_zyx[k0 : k1 + 1]), m)


def _body_box_xy(ct: Volume, z_lo: float, z_hi: float, pad_mm: float) -> NDArray[np.float64]:
    """(2, 2) LPS x, y box of the body (> -500 HU) between z_lo and z_hi, padded."""
    step = 2
    kji = np.argwhere(ct.array_zyx[::step, ::step, ::step] > -500) * step
    p = ct.to_lps(kji[:, ::-1].astype(float))
    p = p[(p[:, 2] >= z_lo) & (p[:, 2] <= z_hi)]
    if len(p) == 0:
        raise InputError(None, f"no body in the phantom CT between z {z_lo:.0f} and {z_hi:.0f} mm")
    return np.stack([p[:, :2].min(axis=0) - pad_mm, p[:, :2].max(axis=0) + pad_mm])


def _axial_stack(ct: Volume, z_lo: float, z_hi: float, in_plane_mm: float, slice_mm: float) -> Volume:
    """An axis-aligned LPS stack resampled (linear) from the phantom CT; -1000 HU outside it."""
    box = _body_box_xy(ct, z_lo, z_hi, pad_mm=10.0)
    n_xy = np.ceil((box[1] - box[0]) / in_plane_mm).astype(int) + 1
    nk = int(np.floor((z_hi - z_lo) / slice_mm)) + 1
    origin = [box[0][0], box[0][1], z_lo]
    ref = sitk.Image([int(n_xy[0]), int(n_xy[1]), nk], sitk.sitkInt16)
    ref.SetSpacing([in_plane_mm, in_plane_mm, slice_mm])
    ref.SetOrigin([float(x) for x in origin])
    out = sitk.Resample(sitk.Cast(to_sitk(ct), sitk.sitkFloat32), ref, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    a = np.rint(sitk.GetArrayFromImage(out)).astype(np.int16)
    return Volume(a, make_lps_from_ijk([in_plane_mm, in_plane_mm, slice_mm], origin))


def write_ct_series(
    volume: Volume,
    folder: str | Path,
    *,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    series_number: int,
    description: str,
    prefix: str,
    patient_name: str = "OrthoNav^Phantom",
    patient_id: str = "PHANTOM",
) -> tuple[Path, ...]:
    """Write an int16 HU volume as a DICOM CT series (one file per slice, SimpleITK / GDCM).

    Tags: modality CT, Image Position / Orientation (Patient) from ``lps_from_ijk`` (LPS, as
    DICOM), Pixel Spacing, Slice Thickness, rescale slope 1 / intercept 0 (stored values are
    HU), the given Study / Series / Frame of Reference UIDs, series number and description.
    Files are ``<prefix>_<slice>.dcm`` in ``folder``. Returns them (inferior first).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image = to_sitk(Volume(np.ascontiguousarray(volume.array_zyx.astype(np.int16, copy=False)), volume.lps_from_ijk))
    d = volume.direction
    sp = volume.spacing_mm
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    common = {
        "0008|0060": "CT",
        "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
        "0008|0020": "20260101",
        "0008|0030": "120000",
        "0010|0010": patient_name,
        "0010|0020": patient_id,
        "0020|000d": study_uid,
        "0020|000e": series_uid,
        "0020|0052": frame_uid,
        "0020|0010": "1",
        "0020|0011": str(series_number),
        "0008|103e": description,
        "0020|0037": "\\".join(f"{x:.9f}" for x in (*d[:, 0], *d[:, 1])),
        "0018|0050": f"{sp[2]:.4f}",
        "0028|1052": "0",
        "0028|1053": "1",
    }
    files = []
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        tags = dict(common)
        tags["0020|0013"] = str(k + 1)
        tags["0020|0032"] = "\\".join(f"{x:.6f}" for x in image.TransformIndexToPhysicalPoint((0, 0, k)))
        tags["0008|0018"] = f"{series_uid}.{k + 1}"
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        f = folder / f"{prefix}_{k:04d}.dcm"
        writer.SetFileName(str(f))
        writer.Execute(sl)
        files.append(f)
    return tuple(files)


def write_lower_limb_study(
    out_dir: str | Path,
    *,
    seed: int = 0,
    small: bool = False,
    stacks: tuple[StackSpec, ...] = LOWER_LIMB_STACKS,
    phantom: SyntheticPhantom | None = None,
    **knobs: object,
) -> LowerLimbStudy:
    """Write a three-stack lower-limb CT study of the knee phantom (DICOM) and its truth.

    Parameters
    ----------
    out_dir
        Output folder: ``dicom/`` (the series) and ``truth/`` (labels, label table, meshes,
        ``truth.json``, ``full_ct.nii.gz``). Import with ``orthonav import OUT/dicom OUT``.
    seed, small, knobs
        The knee phantom (:func:`~orthonav.phantoms.knee.make_knee_phantom`).
    stacks
        The protocol (default :data:`LOWER_LIMB_STACKS`: hip, knee, ankle).
    phantom
        An already built knee phantom to cut the study from (then ``small``/``knobs`` are unused).

    Raises
    ------
    InputError
        ``out_dir/dicom`` already holds files, a stack outside the phantom, unknown landmark.
    """
    root = Path(out_dir)
    dicom = root / DICOM_DIR
    if dicom.is_dir() and any(dicom.iterdir()):
        raise InputError(dicom, "already holds files; write the study into a new folder")
    ph = phantom if phantom is not None else make_knee_phantom(seed=seed, small=small, **knobs)
    ct = ph.ct
    sp = ct.spacing_mm
    study_uid, frame_uid = _uid(seed, "study"), _uid(seed, "frame")
    volumes = []
    for spec in stacks:
        zc = _centre_z(ph, spec.landmark)
        z_lo, z_hi = zc - spec.below_mm, zc + spec.above_mm
        if spec.native:
            vol = _native_stack(ct, z_lo, z_hi)
        else:
            vol = _axial_stack(ct, z_lo, z_hi, float(min(sp[:2])) * spec.in_plane_factor, float(sp[2]) * spec.slice_factor)
        volumes.append(vol)
    written = []
    for number, (spec, vol) in enumerate(zip(stacks, volumes), start=1):
        series_uid = _uid(seed, f"series/{spec.name}")
        files = write_ct_series(
            vol, dicom, study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid, series_number=number,
            description=spec.name, prefix=spec.name, patient_id=f"PHANTOM{seed}",
        )
        written.append(WrittenStack(spec, series_uid, number, vol, files))
    case = Case(root)
    write_volume(ph.labels, case.truth_dir / "labels.nii.gz")
    write_labels_table(case.truth_dir / "labels.json", ph.label_table)
    for name, mesh in ph.truth_meshes.items():
        write_mesh(mesh, case.truth_dir / "meshes" / f"{name}.stl")
    write_truth(case.root, ph.truth)
    write_volume(ct, case.truth_dir / FULL_CT_NAME)
    return LowerLimbStudy(root, dicom, study_uid, frame_uid, tuple(written), ph)


__all__ = [
    "DICOM_DIR",
    "FULL_CT_NAME",
    "LOWER_LIMB_STACKS",
    "LowerLimbStudy",
    "StackSpec",
    "WrittenStack",
    "write_ct_series",
    "write_lower_limb_study",
]
