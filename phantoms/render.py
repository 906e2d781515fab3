"""The synthetic CT engine: analytic bone SDFs -> CT volume, truth labels and truth meshes.

A phantom is built in a "limb frame" (mm; for a right leg x medial, y posterior, z superior)
as one signed distance function per bone, placed into the CT's LPS frame by ``ct_from_limb``,
and sampled onto a CT grid whose direction matrix is not the identity. The intensity model:

* air -1000 HU outside the body; a fat layer (-100 HU) under the skin; soft tissue ~40 HU;
* per bone: a cortical shell (SDF in [-t, 0], t from the bone's thickness function) of
  1200-1800 HU over marrow / cancellous bone of 200-400 HU;
* radiopaque beads (4000 HU: dense enough that partial-volumed peaks stay above 2500 HU),
  not part of any bone label;
* partial volume: each surface is a linear ramp over the voxel's width projected on the
  surface normal (a box-filtered step), then a Gaussian point-spread function (sigma 0.6
  voxel), then Gaussian noise (20 HU), rounded to int16.

Truth labels are the sign of the bone SDF at voxel centres (SDF < 0 -> that bone's label).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyvista as pv
from numpy.typing import ArrayLike, NDArray
from scipy.ndimage import gaussian_filter

from orthonav.core.case import LabelTable
from orthonav.core.errors import InputError
from orthonav.core.transforms import apply, invert
from orthonav.core.volume import Volume, make_lps_from_ijk

from . import sdf as S
from .truth import PhantomTruth

#: Nominal Hounsfield units of the materials.
DEFAULT_HU = {"air": -1000.0, "fat": -100.0, "soft": 40.0, "cortical": 1500.0, "marrow": 300.0, "bead": 4000.0}


@dataclass(frozen=True)
class BoneSpec:
    """One bone of a phantom, in the limb frame.

    Attributes
    ----------
    name, label
        Bone name (TotalSegmentator class name) and its label value.
    sdf
        Limb-frame SDF (mm, negative inside).
    bounds_limb_mm
        (2, 3) min/max corner of a box that contains the bone (limb frame).
    cortical_thickness_mm
        Maps (n, 3) limb points to the cortical thickness (mm) there.
    """

    name: str
    label: int
    sdf: S.SDF
    bounds_limb_mm: NDArray[np.float64]
    cortical_thickness_mm: Callable[[NDArray[np.float64]], NDArray[np.float64]]


@dataclass(frozen=True)
class GridSpec:
    """A CT grid: ``lps_from_ijk`` and shape (ni, nj, nk)."""

    lps_from_ijk: NDArray[np.float64]
    shape_ijk: tuple[int, int, int]

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        ni, nj, nk = self.shape_ijk
        return (nk, nj, ni)

    @property
    def spacing_mm(self) -> NDArray[np.float64]:
        return np.linalg.norm(self.lps_from_ijk[:3, :3], axis=0)


@dataclass(frozen=True)
class SyntheticPhantom:
    """A synthetic CT with its exact geometry and ground truth.

    Attributes
    ----------
    ct
        int16 HU volume (LPS geometry, non-identity direction).
    labels
        uint8 truth label map on the CT grid.
    label_table
        Label value -> bone name.
    truth
        Landmarks, fiducials, targets, angles, ``ct_from_limb``.
    truth_meshes
        Bone name -> fine surface (LPS mm), vertices on the analytic surface.
    bones
        Bone name -> :class:`BoneSpec` (limb frame).
    print_mesh
        Watertight printable model (LPS mm) or None.
    """

    ct: Volume
    labels: Volume
    label_table: LabelTable
    truth: PhantomTruth
    truth_meshes: dict[str, pv.PolyData]
    bones: Mapping[str, BoneSpec] = field(repr=False)
    print_mesh: pv.PolyData | None = field(default=None, repr=False)

    @property
    def ct_from_limb(self) -> NDArray[np.float64]:
        return self.truth.ct_from_limb_array()

    def signed_distance_mm(self, bone: str, points_lps: ArrayLike) -> NDArray[np.float64]:
        """Signed distance (mm, negative inside) of (n, 3) LPS points to the true surface of ``bone``.

        Near the surface (|d| < 0.5 mm) ``f / |grad f|`` of the analytic SDF (exact on the
        surface, second-order accurate near it); further away the distance to the foot point
        reached by Newton steps along the gradient (the closest surface point for these smooth
        shapes), signed by ``f``.
        """
        if bone not in self.bones:
            raise InputError(None, f"unknown bone {bone!r}; this phantom has {', '.join(self.bones)}")
        p = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
        p_limb = apply(invert(self.ct_from_limb), p)
        f = self.bones[bone].sdf
        d = S.normalized(f, p_limb)
        far = np.abs(d) >= 0.5
        if far.any():
            foot = S.project_to_surface(f, p_limb[far], iterations=8)
            d[far] = np.sign(d[far]) * np.linalg.norm(p_limb[far] - foot, axis=1)
        return d


def fit_grid(
    bounds_limb_mm: NDArray[np.float64],
    ct_from_limb: NDArray[np.float64],
    direction_lps: NDArray[np.float64],
    spacing_mm: ArrayLike,
    margin_mm: float = 6.0,
) -> GridSpec:
    """The smallest grid with ``direction_lps`` and ``spacing_mm`` covering a limb-frame box."""
    lo, hi = bounds_limb_mm
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    p_lps = apply(ct_from_limb, corners)
    q = p_lps @ direction_lps  # coordinates along the grid axes
    qmin = q.min(axis=0) - margin_mm
    qmax = q.max(axis=0) + margin_mm
    sp = np.asarray(spacing_mm, dtype=np.float64)
    shape = tuple(int(np.ceil((qmax[a] - qmin[a]) / sp[a])) + 1 for a in range(3))
    origin = direction_lps @ qmin
    return GridSpec(make_lps_from_ijk(sp, origin, direction_lps), shape)  # type: ignore[arg-type]


def _sub_box(grid: GridSpec, limb_from_ct: NDArray[np.float64], ct_from_limb: NDArray[np.float64], bounds: NDArray[np.float64], pad: int) -> tuple[slice, slice, slice] | None:
    """Index slices (k, j, i) of the grid covering a limb-frame box, or None if outside."""
    lo, hi = bounds
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    ijk = apply(np.linalg.inv(grid.lps_from_ijk), apply(ct_from_limb, corners))
    a = np.floor(ijk.min(axis=0)).astype(int) - pad
    b = np.ceil(ijk.max(axis=0)).astype(int) + pad + 1
    n = np.array(grid.shape_ijk)
    a = np.clip(a, 0, n)
    b = np.clip(b, 0, n)
    if np.any(b <= a):
        return None
    return (slice(a[2], b[2]), slice(a[1], b[1]), slice(a[0], b[0]))


def _limb_points_of(grid: GridSpec, limb_from_ct: NDArray[np.float64], box: tuple[slice, slice, slice]) -> Callable[[NDArray[np.float64]], NDArray[np.float64]]:
    offset = np.array([box[2].start, box[1].start, box[0].start], dtype=np.float64)
    limb_from_ijk = limb_from_ct @ grid.lps_from_ijk

    def points_of(ijk_local: NDArray[np.float64]) -> NDArray[np.float64]:
        return apply(limb_from_ijk, ijk_local + offset)

    return points_of


def _ramp_width_at(values: NDArray[np.float32], kji: tuple[NDArray, NDArray, NDArray], spacing_ijk: NDArray[np.float64]) -> NDArray[np.float32]:
    """Width (mm) of a voxel projected on the local surface normal, sum_i s_i |n_i|, at the
    voxels ``kji`` (central differences of ``values``; one-sided at the array border)."""
    comps = []
    for axis, s in ((2, spacing_ijk[0]), (1, spacing_ijk[1]), (0, spacing_ijk[2])):
        n = values.shape[axis]
        lo = [c for c in kji]
        hi = [c for c in kji]
        lo[axis] = np.maximum(kji[axis] - 1, 0)
        hi[axis] = np.minimum(kji[axis] + 1, n - 1)
        den = (hi[axis] - lo[axis]).astype(np.float32) * s
        comps.append((values[tuple(hi)] - values[tuple(lo)]) / np.maximum(den, 1e-6))
    gi, gj, gk = comps
    norm = np.maximum(np.sqrt(gi * gi + gj * gj + gk * gk), 1e-6)
    w = (np.abs(gi) * spacing_ijk[0] + np.abs(gj) * spacing_ijk[1] + np.abs(gk) * spacing_ijk[2]) / norm
    return np.maximum(w, float(np.min(spacing_ijk))).astype(np.float32)


def _occupancy(f: NDArray[np.float32], width: NDArray[np.float32]) -> NDArray[np.float32]:
    """Fraction of the voxel inside (f < 0): a linear ramp over the projected voxel width."""
    return np.clip(0.5 - f / width, 0.0, 1.0).astype(np.float32)


def render_ct(
    grid: GridSpec,
    ct_from_limb: NDArray[np.float64],
    bones: list[BoneSpec],
    envelope: S.SDF,
    bead_centres_limb_mm: NDArray[np.float64],
    bead_radius_mm: float,
    rng: np.random.Generator,
    *,
    hu: Mapping[str, float] = DEFAULT_HU,
    fat_mm: float = 4.0,
    noise_hu: float = 20.0,
    psf_sigma_vox: float = 0.6,
    cortical_hu_fn: Callable[[NDArray[np.float64]], NDArray[np.float64]] | None = None,
    marrow_hu_fn: Callable[[str], float] | None = None,
    metal_artefact_hu: float = 0.0,
) -> tuple[Volume, Volume]:
    """Sample a phantom onto ``grid``: returns (CT int16 HU, truth labels uint8).

    ``metal_artefact_hu`` > 0 adds a streak (starburst) artefact around every bead in the
    slices it crosses: amplitude in HU, alternating bright/dark rays that fade with distance,
    as filtered back-projection gives around dense metal. Labels are unaffected.
    """
    limb_from_ct = invert(ct_from_limb)
    sp = grid.spacing_mm
    full = (slice(0, grid.shape_zyx[0]), slice(0, grid.shape_zyx[1]), slice(0, grid.shape_zyx[2]))

    # Body envelope: air / fat / soft tissue. Exact occupancy in the band, plain values elsewhere.
    half_ramp = 0.5 * float(sp.sum()) + 0.05  # occupancy saturates beyond half the widest ramp
    band = fat_mm + half_ramp
    f_env = S.banded_grid_values(envelope, _limb_points_of(grid, limb_from_ct, full), grid.shape_zyx, sp, band, coarse_mm=8.0)
    vol = np.where(f_env < 0, np.float32(hu["soft"]), np.float32(hu["air"])).astype(np.float32)
    kji = np.nonzero(np.abs(f_env) < band)
    w = _ramp_width_at(f_env, kji, sp)
    fv = f_env[kji]
    body = _occupancy(fv, w)
    soft = _occupancy(fv + fat_mm, w)
    vol[kji] = hu["air"] + body * (hu["fat"] - hu["air"]) + soft * (hu["soft"] - hu["fat"])
    del f_env, kji, w, fv, body, soft
    labels = np.zeros(grid.shape_zyx, dtype=np.uint8)

    t_max = 4.0  # cortical thickness model limit (mm)
    band = t_max + half_ramp
    for bone in bones:
        box = _sub_box(grid, limb_from_ct, ct_from_limb, bone.bounds_limb_mm, pad=2)
        if box is None:
            continue
        pts_of = _limb_points_of(grid, limb_from_ct, box)
        shape = tuple(s.stop - s.start for s in box)
        f = S.banded_grid_values(bone.sdf, pts_of, shape, sp, band, coarse_mm=3.5)  # type: ignore[arg-type]
        sub = vol[box]
        lab = labels[box]
        inside = f < 0
        lab[inside] = bone.label
        labels[box] = lab
        marrow_hu = float(marrow_hu_fn(bone.name)) if marrow_hu_fn is not None else hu["marrow"]
        sub[f <= -band] = marrow_hu  # deep inside: marrow
        kji = np.nonzero(np.abs(f) < band)
        p_limb = pts_of(np.stack([kji[2], kji[1], kji[0]], axis=1).astype(np.float64))
        thick = bone.cortical_thickness_mm(p_limb).astype(np.float32)
        if float(thick.max(initial=0.0)) > t_max:
            raise InputError(None, f"{bone.name}: cortical thickness {thick.max():.1f} mm exceeds the {t_max} mm model limit")
        cort = cortical_hu_fn(p_limb).astype(np.float32) if cortical_hu_fn is not None else np.float32(hu["cortical"])
        fv = f[kji]
        w = _ramp_width_at(f, kji, sp)
        o_bone = _occupancy(fv, w)
        o_marrow = _occupancy(fv + thick, w)
        bone_val = cort + o_marrow * (marrow_hu - cort)
        sub[kji] = sub[kji] * (1.0 - o_bone) + o_bone * bone_val
        vol[box] = sub

    # Beads: exact partial volume by 5x5x5 supersampling of each voxel near the bead.
    ss = (np.arange(5) + 0.5) / 5.0 - 0.5
    sub_off = np.stack(np.meshgrid(ss, ss, ss, indexing="ij"), axis=-1).reshape(-1, 3)  # (125, 3) ijk offsets
    for c_limb in np.asarray(bead_centres_limb_mm, dtype=np.float64).reshape(-1, 3):
        r = bead_radius_mm + 1.0
        bounds = np.stack([c_limb - r, c_limb + r])
        box = _sub_box(grid, limb_from_ct, ct_from_limb, bounds, pad=1)
        if box is None:
            continue
        kk, jj, ii = np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij")
        ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(np.float64)
        c_ijk = apply(np.linalg.inv(grid.lps_from_ijk), apply(ct_from_limb, c_limb))
        d_lps = (ijk[:, None, :] + sub_off[None, :, :] - c_ijk) @ grid.lps_from_ijk[:3, :3].T
        occ = (np.linalg.norm(d_lps, axis=2) < bead_radius_mm).mean(axis=1).reshape(kk.shape).astype(np.float32)
        vol[box] = vol[box] * (1.0 - occ) + occ * hu["bead"]

    if metal_artefact_hu > 0:
        _add_metal_streaks(vol, grid, apply(ct_from_limb, np.asarray(bead_centres_limb_mm, dtype=np.float64).reshape(-1, 3)),
                           bead_radius_mm, metal_artefact_hu, rng)
    if psf_sigma_vox > 0:
        vol = gaussian_filter(vol, psf_sigma_vox, mode="nearest")
    if noise_hu > 0:
        vol += rng.normal(0.0, noise_hu, size=vol.shape).astype(np.float32)
    ct = np.clip(np.rint(vol), -1024, 32767).astype(np.int16)
    return Volume(ct, grid.lps_from_ijk.copy()), Volume(labels, grid.lps_from_ijk.copy())


#: Tissues of :func:`render_fractions` (air is what they leave: ``1 - sum``).
TISSUES = ("fat", "soft", "cortical", "marrow", "bead")


def render_fractions(
    grid: GridSpec,
    ct_from_limb: NDArray[np.float64],
    bones: list[BoneSpec],
    envelope: S.SDF,
    bead_centres_limb_mm: NDArray[np.float64],
    bead_radius_mm: float,
    *,
    fat_mm: float = 4.0,
) -> dict[str, Volume]:
    """Partial-volume fraction of each tissue per voxel of ``grid`` (what :func:`render_ct`
    mixes; same geometry arguments).

    :func:`render_ct` is linear in its tissue HU values, so rendering with one tissue at a unit
    value and the others at 0 (no blur, no noise, no streaks) gives that tissue's share of each
    voxel. A CT with any tissue HUs ``h`` is then ``sum_t h[t] * fraction[t] + h_air * (1 -
    sum_t fraction[t])``: partial volume mixed linearly, as a scanner mixes it (a non-linear
    map of a rendered CT is not, and moves the edges).

    Returns
    -------
    dict
        Tissue (:data:`TISSUES`) -> float32 fraction in [0, 1] on ``grid`` (LPS geometry).
        Cortex and marrow are each voxel's shares of bone, without spatial density variation.
    """
    unit = 10_000.0  # fractions at int16 resolution 1e-4
    out: dict[str, Volume] = {}
    for tissue in TISSUES:
        hu = {k: (unit if k == tissue else 0.0) for k in DEFAULT_HU}
        ct, _labels = render_ct(grid, ct_from_limb, bones, envelope, bead_centres_limb_mm, bead_radius_mm, np.random.default_rng(0),
                                hu=hu, fat_mm=fat_mm, noise_hu=0.0, psf_sigma_vox=0.0)  # fmt: skip
        out[tissue] = Volume((ct.array_zyx.astype(np.float32) / np.float32(unit)).clip(0.0, 1.0), ct.lps_from_ijk)
    return out


def _add_metal_streaks(vol: NDArray[np.float32], grid: GridSpec, beads_lps_mm: NDArray[np.float64], bead_radius_mm: float,
                       amplitude_hu: float, rng: np.random.Generator, *, fade_mm: float = 25.0) -> None:
    """Add a starburst of streaks around each bead, in place, in every slice (k) the bead crosses.

    Streak value at in-slice distance r (mm) and angle t from the bead:
    ``A cos(m t + phase) * fade / (fade + r)``, m in 4..7 rays per half turn, outside the bead only.
    """
    ijk_from_lps = np.linalg.inv(grid.lps_from_ijk)
    nk, nj, ni = vol.shape
    jj, ii = np.meshgrid(np.arange(nj), np.arange(ni), indexing="ij")
    for c_lps in beads_lps_mm:
        c_ijk = apply(ijk_from_lps, c_lps)
        half_k = bead_radius_mm / grid.spacing_mm[2]
        m = int(rng.integers(4, 8))
        phase = float(rng.uniform(0.0, 2.0 * np.pi))
        k_lo, k_hi = int(np.ceil(c_ijk[2] - half_k)), int(np.floor(c_ijk[2] + half_k))  # slices whose centre cuts the bead
        if k_lo > k_hi:
            k_lo = k_hi = int(np.rint(c_ijk[2]))
        for k in range(max(0, k_lo), min(nk, k_hi + 1)):
            d_ijk = np.stack([ii - c_ijk[0], jj - c_ijk[1], np.full(ii.shape, k - c_ijk[2])], axis=-1)
            d_lps = d_ijk @ grid.lps_from_ijk[:3, :3].T
            u, v = d_lps[..., 0], d_lps[..., 1]  # in-plane axes of the slice (LPS x, y)
            r = np.hypot(u, v)
            streak = amplitude_hu * np.cos(2 * m * np.arctan2(v, u) + phase) * fade_mm / (fade_mm + r)
            streak[np.linalg.norm(d_lps, axis=-1) <= bead_radius_mm + 0.5] = 0.0
            vol[k] += streak.astype(np.float32)


def surface_mesh(f: S.SDF, bounds_limb_mm: NDArray[np.float64], step_mm: float, ct_from_limb: NDArray[np.float64]) -> pv.PolyData:
    """Closed triangle surface of ``f``'s zero set (LPS mm), vertices projected onto the surface.

    Flying edges on a ``step_mm`` grid over the box, then Newton projection of every vertex.
    """
    lo = np.asarray(bounds_limb_mm[0], dtype=np.float64) - 2 * step_mm
    hi = np.asarray(bounds_limb_mm[1], dtype=np.float64) + 2 * step_mm
    n = np.ceil((hi - lo) / step_mm).astype(int) + 1
    shape_zyx = (int(n[2]), int(n[1]), int(n[0]))

    def points_of(ijk: NDArray[np.float64]) -> NDArray[np.float64]:
        return lo + ijk * step_mm

    vals = S.banded_grid_values(f, points_of, shape_zyx, np.full(3, step_mm), 1.5 * step_mm)
    img = pv.ImageData(dimensions=tuple(int(x) for x in n), spacing=(step_mm,) * 3, origin=tuple(lo))
    img.point_data["sdf"] = vals.ravel(order="C")  # x fastest == [k, j, i] C order
    surf = img.contour(isosurfaces=[0.0], scalars="sdf", method="flying_edges").triangulate().clean()
    if surf.n_points == 0:
        raise InputError(None, "empty surface: the SDF has no zero set inside its bounds")
    pts = S.project_to_surface(f, np.asarray(surf.points, dtype=np.float64), iterations=2)
    tri = np.asarray(surf.faces).reshape(-1, 4)[:, 1:]
    v0, v1, v2 = pts[tri[:, 0]], pts[tri[:, 1]], pts[tri[:, 2]]
    signed_volume = float(np.einsum("ij,ij->i", v0, np.cross(v1, v2)).sum() / 6.0)
    if signed_volume < 0:  # make the triangles wind counter-clockwise seen from outside
        tri = tri[:, ::-1]
    out = pv.PolyData(apply(ct_from_limb, pts), np.hstack([np.full((len(tri), 1), 3), tri]).ravel())
    return out


def closed_limb_meshes(bones: Mapping[str, BoneSpec], step_mm: float) -> dict[str, pv.PolyData]:
    """Truth surface of every bone in the limb frame (``surface_mesh`` with identity placement);
    raises if one is open, which means its bounding box cuts the bone."""
    meshes = {name: surface_mesh(b.sdf, b.bounds_limb_mm, step_mm, np.eye(4)) for name, b in bones.items()}
    for name, m in meshes.items():
        if m.n_open_edges:
            raise RuntimeError(f"internal: truth mesh of {name} is open ({m.n_open_edges} edges): its bounding box is too small")
    return meshes


__all__ = [
    "DEFAULT_HU",
    "BoneSpec",
    "GridSpec",
    "SyntheticPhantom",
    "closed_limb_meshes",
    "fit_grid",
    "TISSUES",
    "render_ct",
    "render_fractions",
    "surface_mesh",
]
