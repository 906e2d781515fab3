"""What a knee (TKA) plan does to the bone: resected bone meshes, removed volume, implant coverage and
overhang on the cut surfaces, and bone density (mean HU) under the implant footprints.

The resections are exact booleans on closed bone surfaces with manifold3d. The femoral
resection for a component is the bone outside the component's five-cut box, within the
component's height (up to its anterior flange); without a femoral component it is the bone
distal to the distal cut plane. The tibial resection is the bone proximal to the tibial cut.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import manifold3d as mf
import numpy as np
import pyvista as pv
from matplotlib.path import Path as MplPath
from numpy.typing import NDArray
from orthonav.core.case import Case
from orthonav.core.transforms import apply
from orthonav.core.volume import Volume, read_volume
from scipy.ndimage import map_coordinates

from ..implants import FEMORAL_CHAMFER_MM, FEMORAL_FLANGE_MM, implant_model, tray_outline
from ..meshes import load_bone_meshes
from ..meshops import (
    ClosedSurface,
    clipped_volume,
    closed_surface,
    cross_section,
    halfspace_keep,
    to_manifold,
    to_polydata,
    transform,
)
from ..schema import ImplantPlacement, Plan
from .landmarks import KNEE_BONES, REQUIRED_BONES
from .placement import femoral_cut_planes_implant

Vec = NDArray[np.float64]


@dataclass
class BoneSolids:
    """Bone meshes as manifold solids, cached (conversion is the slow part of an update).

    With ``roi_centre_lps`` the booleans run on the bone inside a cube of half-size
    ``roi_half_mm`` around it (the knee), which keeps an update fast on 100k-triangle
    bones; each use checks that no bone outside that cube is affected, and falls back to
    the whole bone otherwise, so results never depend on the crop.
    """

    meshes: Mapping[str, pv.PolyData]
    roi_centre_lps: NDArray[np.float64] | None = None
    roi_half_mm: float = 55.0
    _solids: dict[str, mf.Manifold] = field(default_factory=dict)
    _roi: dict[str, tuple[mf.Manifold, NDArray[np.float64]]] = field(default_factory=dict)
    _volume: dict[int, float] = field(default_factory=dict)
    _memo: dict[tuple, object] = field(default_factory=dict)
    _surfaces: dict[str, ClosedSurface] = field(default_factory=dict)
    _roi_surfaces: dict[str, tuple[ClosedSurface, NDArray[np.float64]]] = field(default_factory=dict)

    def memo(self, key: tuple, compute: callable[[], object]) -> object:
        """Cache a per-bone result keyed by the pose / plane it depends on (an edit changes
        one implant, so the other bone's results are reused; undo is then free)."""
        if key not in self._memo:
            if len(self._memo) > 512:
                self._memo.clear()
            self._memo[key] = compute()
        return self._memo[key]

    def solid(self, bone: str) -> mf.Manifold:
        if bone not in self._solids:
            self._solids[bone] = to_manifold(self.meshes[bone], name=f"{bone} mesh")
        return self._solids[bone]

    def surface(self, bone: str) -> ClosedSurface:
        """The solid's boundary triangles, for boolean-free clipped volumes (cached)."""
        if bone not in self._surfaces:
            self._surfaces[bone] = closed_surface(self.solid(bone))
        return self._surfaces[bone]

    def surface_for(self, bone: str, first_plane: tuple[NDArray[np.float64], NDArray[np.float64]]) -> ClosedSurface:
        """The boundary to clip with planes whose first is ``first_plane`` (point, normal; the
        region kept is ``(x - point) . normal <= 0``): only the triangles touching the ROI when
        every vertex outside the ROI is beyond that plane (the triangles left out then hold no
        part of the region, so the volume is unchanged), else the whole boundary."""
        full = self.surface(bone)
        if self.roi_centre_lps is None:
            return full
        if bone not in self._roi_surfaces:
            c, h = np.asarray(self.roi_centre_lps, dtype=float), self.roi_half_mm
            v_out = np.any(np.abs(full.vertices - c) > h, axis=1)
            f_in = ~v_out[full.faces].all(axis=1)
            used = np.unique(full.faces[f_in])
            remap = np.full(len(full.vertices), -1, dtype=np.int64)
            remap[used] = np.arange(len(used))
            sub = ClosedSurface(full.vertices[used], remap[full.faces[f_in]], full.origin, full.tri_volumes[f_in])
            self._roi_surfaces[bone] = (sub, full.vertices[v_out])
        sub, outside = self._roi_surfaces[bone]
        q, n = (np.asarray(a, dtype=float) for a in first_plane)
        return sub if len(outside) == 0 or bool(np.all((outside - q) @ n > 0.0)) else full

    def volume(self, bone: str) -> float:
        return self.volume_of(self.solid(bone))

    def volume_of(self, solid: mf.Manifold) -> float:
        """Volume of a cached solid (whole bone or ROI), computed once."""
        key = id(solid)
        if key not in self._volume:
            self._volume[key] = float(solid.volume())
        return self._volume[key]

    def local(self, bone: str, unaffected: callable[[NDArray[np.float64]], bool] | None = None) -> mf.Manifold:
        """The bone within the ROI if ``unaffected(points outside the ROI)`` holds, else whole."""
        if self.roi_centre_lps is None or unaffected is None:
            return self.solid(bone)
        if bone not in self._roi:
            c, h = np.asarray(self.roi_centre_lps, dtype=float), self.roi_half_mm
            cube = mf.Manifold.cube([2 * h, 2 * h, 2 * h]).translate((c - h).tolist())
            pts = np.asarray(self.meshes[bone].points, dtype=float)
            outside = pts[np.any(np.abs(pts - c) > h - 1.0, axis=1)]
            self._roi[bone] = (self.solid(bone) ^ cube, outside)
        roi, outside = self._roi[bone]
        return roi if unaffected(outside) else self.solid(bone)


@dataclass(frozen=True)
class Resection:
    """A bone after the plan's cuts (the kept solid is built on demand)."""

    bone: str
    removed_volume_mm3: float
    bone_volume_mm3: float
    whole: mf.Manifold = field(repr=False)
    remove: callable[[mf.Manifold], mf.Manifold] = field(repr=False)

    @property
    def kept(self) -> mf.Manifold:
        return self.remove(self.whole)

    def kept_mesh(self) -> pv.PolyData:
        return to_polydata(self.kept)


def femoral_removal_region(femoral: ImplantPlacement, *, margin_mm: float = 2.0) -> mf.Manifold:
    """The region a femoral component's five cuts remove (CT frame): a large box up to the
    anterior flange height minus the kept (bone-facing) box of the component."""
    ap = implant_model(femoral.family, femoral.size).dims.get("ap_mm")
    if ap is None:
        raise ValueError("femoral component without an 'ap_mm' dimension")
    top = femoral_region_top_mm(margin_mm)
    big = mf.Manifold.cube([400.0, 400.0, top + 200.0]).translate([-200.0, -200.0, -200.0])
    kept = big
    for q, n in femoral_cut_planes_implant(ap).values():
        kept = kept.trim_by_plane((-n).tolist(), float(np.dot(-n, q)))
    region = big - kept
    return transform(region, np.asarray(femoral.ct_from_implant))


def femoral_region_top_mm(margin_mm: float = 2.0) -> float:
    """Height (implant z, mm) up to which a femoral component's cuts remove bone."""
    return FEMORAL_FLANGE_MM["anterior"] + margin_mm


def _key(a) -> bytes:
    return np.asarray(a, dtype=np.float64).tobytes()


def femoral_region_planes(femoral: ImplantPlacement, *, margin_mm: float = 2.0) -> tuple[tuple[Vec, Vec], list[tuple[Vec, Vec]]]:
    """The femoral resection as planes (CT LPS): the top plane ``(point, normal)`` (bone is
    removed only below it) and the component's five cut planes (point, normal into the
    removed bone). Removed = bone below the top minus bone below the top inside all five."""
    m = np.asarray(femoral.ct_from_implant)
    ap = implant_model(femoral.family, femoral.size).dims.get("ap_mm")
    if ap is None:
        raise ValueError("femoral component without an 'ap_mm' dimension")
    top = (m[:3, 3] + femoral_region_top_mm(margin_mm) * m[:3, 2], m[:3, 2].copy())
    box = [(apply(m, q), m[:3, :3] @ n) for q, n in femoral_cut_planes_implant(ap).values()]
    return top, box


def resect(plan: Plan, solids: BoneSolids) -> dict[str, Resection]:
    """Resected femur and tibia for the plan (implant-derived cuts when there are implants).

    Removed volumes are computed without a boolean, by clipping the bone surface with the
    cut planes (divergence theorem, :func:`~orthonav.planning.meshops.clipped_volume`):
    exact for the planar cuts, and a few milliseconds on 100k-triangle bones. The kept bone
    solid (a manifold3d boolean) is built only when asked for (``Resection.kept``).
    """
    out: dict[str, Resection] = {}
    fem = next((i for i in plan.implants if i.family == "tka_femoral"), None)
    if "femur" in solids.meshes:
        remove = None
        if fem is not None:
            remove = lambda b, fem=fem: b - femoral_removal_region(fem)
            top, box = femoral_region_planes(fem)
            key = ("femur", fem.size, _key(fem.ct_from_implant))
            volume = lambda: clipped_volume(solids.surface_for("femur", top), [top]) - clipped_volume(solids.surface_for("femur", top), [top, *box])
        elif "distal_femur" in plan.cuts:
            c = plan.cuts["distal_femur"]
            pt, n = np.asarray(c.point_lps_mm), np.asarray(c.normal_lps)
            remove = lambda b: halfspace_keep(b, pt, n)
            key = ("femur-plane", _key(pt), _key(n))
            volume = lambda: clipped_volume(solids.surface_for("femur", (pt, -n)), [(pt, -n)])
        if remove is not None:
            removed = solids.memo(key, volume)
            out["femur"] = Resection("femur", float(removed), solids.volume("femur"), solids.solid("femur"), remove)
    if "tibia" in solids.meshes and "proximal_tibia" in plan.cuts:
        c = plan.cuts["proximal_tibia"]
        pt, n = np.asarray(c.point_lps_mm), np.asarray(c.normal_lps)
        remove = lambda b: halfspace_keep(b, pt, n)
        removed = solids.memo(("tibia-plane", _key(pt), _key(n)), lambda: clipped_volume(solids.surface_for("tibia", (pt, -n)), [(pt, -n)]))
        out["tibia"] = Resection("tibia", float(removed), solids.volume("tibia"), solids.solid("tibia"), remove)
    return out


def _largest_polygon(cs: mf.CrossSection) -> NDArray[np.float64]:
    polys = cs.to_polygons()
    if not polys:
        return np.zeros((0, 2))

    def area(p):
        x, y = p[:, 0], p[:, 1]
        return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))

    return np.asarray(max(polys, key=area))


def _point_polygon_distance(points: Vec, poly: Vec) -> Vec:
    """Distance (n,) of 2D points to a closed polygon's boundary."""
    a = poly
    b = np.roll(poly, -1, axis=0)
    ab = b - a
    ap = points[:, None, :] - a[None]
    t = np.clip((ap * ab[None]).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12)[None], 0.0, 1.0)
    closest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(points[:, None, :] - closest, axis=2).min(axis=1)


@dataclass(frozen=True)
class Coverage:
    """Implant footprint vs bone cut surface (in the cut plane, mm / mm^2)."""

    section_area_mm2: float
    footprint_area_mm2: float
    covered_fraction: float  # of the bone cut surface covered by the implant
    overhang_area_mm2: float  # implant outside the bone
    max_overhang_mm: float  # furthest implant outline point outside the bone


def coverage(section: mf.CrossSection, footprint_outline: Vec) -> Coverage:
    """Coverage and overhang of an implant outline (n, 2) on a bone section (same plane frame)."""
    pieces = sorted(section.decompose(), key=lambda c: c.area(), reverse=True)
    bone = pieces[0] if pieces else section
    fp = mf.CrossSection([np.asarray(footprint_outline, dtype=np.float64)])
    inter = bone ^ fp
    over = fp - bone
    poly = _largest_polygon(bone)
    outline = np.asarray(footprint_outline, dtype=np.float64)
    outside = ~MplPath(poly).contains_points(outline) if len(poly) else np.ones(len(outline), bool)
    max_over = float(_point_polygon_distance(outline[outside], poly).max()) if outside.any() and len(poly) else 0.0
    a = bone.area()
    return Coverage(a, fp.area(), inter.area() / a if a > 0 else 0.0, over.area(), max_over)


def mean_hu_under(ct: Volume, ct_from_plane: NDArray[np.float64], outline: Vec, section: mf.CrossSection, *, depth_mm: tuple[float, float] = (1.0, 5.0), step_mm: float = 1.5) -> float:
    """Mean CT value (HU) in the bone under an implant footprint: points of the footprint ∩
    bone section on a ``step_mm`` grid, at depths ``depth_mm`` below the plane (-z side),
    trilinear interpolation."""
    fp = mf.CrossSection([np.asarray(outline, dtype=np.float64)]) ^ section
    poly = fp.to_polygons()
    if not poly:
        return float("nan")
    x0, y0, x1, y1 = fp.bounds()
    gx, gy = np.meshgrid(np.arange(x0, x1, step_mm), np.arange(y0, y1, step_mm))
    pts2 = np.c_[gx.ravel(), gy.ravel()]
    inside = np.zeros(len(pts2), bool)
    for p in poly:  # even-odd over the contours handles holes
        inside ^= MplPath(np.asarray(p)).contains_points(pts2)
    pts2 = pts2[inside]
    if len(pts2) == 0:
        return float("nan")
    zs = -np.arange(depth_mm[0], depth_mm[1] + 1e-9, step_mm)
    pts = np.concatenate([np.c_[pts2, np.full(len(pts2), z)] for z in zs])
    ijk = ct.to_ijk(apply(ct_from_plane, pts))
    vals = map_coordinates(np.asarray(ct.array_zyx, dtype=np.float32), [ijk[:, 2], ijk[:, 1], ijk[:, 0]], order=1, mode="nearest")
    return float(vals.mean())


def femoral_fit(femur: mf.Manifold, ct_from_implant: NDArray[np.float64], ap_mm: float, ml_mm: float, *, ct: Volume | None = None) -> dict[str, float]:
    """Medio-lateral fit of a femoral component: at the chamfer top (where the box has its
    full AP depth) the bone section within the AP cuts is compared with the component width;
    overhang > 0 where the component passes the bone edge. Also the mean HU of the bone 1-5 mm
    above the distal cut within the component's distal footprint."""
    a, w = ap_mm / 2.0, ml_mm / 2.0
    level = transform_plane_z(ct_from_implant, FEMORAL_CHAMFER_MM)
    sec = cross_section(femur, level)
    slab = mf.CrossSection([np.array([[-200.0, -a], [200.0, -a], [200.0, a], [-200.0, a]])])
    inner = sec ^ slab
    out: dict[str, float] = {}
    if inner.is_empty():
        return out
    x0, _, x1, _ = inner.bounds()
    out["femoral_ml_overhang_mm"] = float(max(0.0, x0 + w, w - x1))  # component edges at x = -w, +w
    out["femoral_bone_ml_mm"] = float(x1 - x0)
    if ct is not None:
        # The bone under the component is on its +z side: use a frame turned over about x.
        flip = ct_from_implant @ np.diag([1.0, -1.0, -1.0, 1.0])
        c = FEMORAL_CHAMFER_MM
        rect = np.array([[-w, -(a - c)], [w, -(a - c)], [w, a - c], [-w, a - c]])
        out["femoral_mean_hu_under_component"] = mean_hu_under(ct, flip, rect, cross_section(femur, flip))
    return out


def transform_plane_z(ct_from_plane: NDArray[np.float64], z_mm: float) -> NDArray[np.float64]:
    """The same frame shifted ``z_mm`` along its own z."""
    out = np.array(ct_from_plane, dtype=np.float64)
    out[:3, 3] = out[:3, 3] + z_mm * out[:3, 2]
    return out


def _roi_ok(ct_from_frame: NDArray[np.float64], height_mm: float):
    """A test that bone outside the ROI lies more than ``height_mm`` from the frame's origin
    plane (so sections at or below that height see only ROI bone)."""
    m = np.asarray(ct_from_frame)

    def ok(pts: NDArray[np.float64]) -> bool:
        return bool(len(pts) == 0 or np.abs((pts - m[:3, 3]) @ m[:3, 2]).min() > height_mm + 1.0)

    return ok


def tibial_fit(solids: BoneSolids, tray: ImplantPlacement, ct: Volume | None) -> dict[str, float]:
    """Tray coverage / overhang on the tibial cut surface, and the mean HU under the tray."""
    f = np.asarray(tray.ct_from_implant)
    d = implant_model(tray.family, tray.size).dims
    out: dict[str, float] = {}
    if "ml_mm" not in d or "ap_mm" not in d:
        return out
    sec = cross_section(solids.local("tibia", _roi_ok(f, 1.0)), f)
    if sec.is_empty():
        return out
    outline = tray_outline(d["ml_mm"], d["ap_mm"])
    cov = coverage(sec, outline)
    out.update({
        "tibial_coverage_fraction": cov.covered_fraction,
        "tibial_overhang_area_mm2": cov.overhang_area_mm2,
        "tibial_max_overhang_mm": cov.max_overhang_mm,
        "tibial_cut_area_mm2": cov.section_area_mm2,
    })
    if ct is not None:
        out["tibial_mean_hu_under_tray"] = mean_hu_under(ct, f, outline, sec)
    return out


def compute_metrics(plan: Plan, solids: BoneSolids, *, ct: Volume | None = None) -> tuple[dict[str, float], dict[str, Resection]]:
    """Removed volumes, coverage / overhang and bone density for a plan; also the resections."""
    res = resect(plan, solids)
    m: dict[str, float] = {}
    for bone, r in res.items():
        m[f"{bone}_removed_volume_mm3"] = float(r.removed_volume_mm3)
        m[f"{bone}_volume_mm3"] = float(r.bone_volume_mm3)
    for key, cut in plan.cuts.items():
        for lm, d in cut.depths_mm.items():
            m[f"resection_{key}_{lm}_mm"] = float(d)
    tray = next((i for i in plan.implants if i.family == "tka_tibial_tray"), None)
    if tray is not None and "tibia" in solids.meshes:
        key = ("tibial-fit", tray.size, _key(tray.ct_from_implant), id(ct))
        m.update(solids.memo(key, lambda: tibial_fit(solids, tray, ct)))
    fem = next((i for i in plan.implants if i.family == "tka_femoral"), None)
    if fem is not None and "femur" in solids.meshes:
        f = np.asarray(fem.ct_from_implant)
        d = implant_model(fem.family, fem.size).dims
        if "ap_mm" in d and "ml_mm" in d:
            key = ("femoral-fit", fem.size, _key(f), id(ct))
            m.update(solids.memo(key, lambda: femoral_fit(solids.local("femur", _roi_ok(f, femoral_region_top_mm() + 10.0)), f, d["ap_mm"], d["ml_mm"], ct=ct)))
    return m, res


def update_plan_outcomes(plan: Plan, case_dir=None, *, meshes: Mapping[str, pv.PolyData] | None = None, solids: BoneSolids | None = None, ct: Volume | None = None) -> Plan:
    """The plan with ``metrics`` recomputed (removed volume, coverage, density, depths)."""
    if solids is None:
        if meshes is None:
            meshes = load_bone_meshes(case_dir, KNEE_BONES, required=REQUIRED_BONES)
        solids = BoneSolids(meshes)
    if ct is None and case_dir is not None:
        c = Case(case_dir)
        if c.ct.is_file():
            ct = read_volume(c.ct)
    metrics, _ = compute_metrics(plan, solids, ct=ct)
    merged = {k: v for k, v in plan.metrics.items() if not _is_outcome_key(k)}
    merged.update(metrics)
    return plan.model_copy(update={"metrics": merged})


def _is_outcome_key(k: str) -> bool:
    return k.startswith(("femur_", "tibia_", "resection_", "tibial_coverage", "tibial_overhang", "tibial_max", "tibial_cut", "tibial_mean", "femoral_ml", "femoral_bone", "femoral_mean"))


__all__ = ["BoneSolids", "Coverage", "Resection", "compute_metrics", "coverage", "femoral_removal_region", "mean_hu_under", "resect", "update_plan_outcomes"]
