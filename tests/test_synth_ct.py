"""The synthetic training CTs' image physics (``phantoms.render.render_fractions``, ``phantoms.synth_ct``).

A scanner mixes the tissues of a voxel linearly by their volume shares, so the HU half-way
between two tissues lies on their boundary whatever the tissues' HUs. The generator used to
apply a random non-linear HU map to an already partial-volumed CT, which moved that half-way
point up to 1.7 mm off the truth on fine grids; it now mixes each tissue's fraction at the
drawn HUs. These tests check the decomposition is exact and the draws stay seeded.
"""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_ct import scene

from orthonav.phantoms.render import DEFAULT_HU, TISSUES, render_ct, render_fractions


@pytest.fixture(scope="module")
def mini_scene():
    grid, ct_from_limb, specs, envelope, beads, radius = scene((0.9, 0.9, 1.3))
    return grid, ct_from_limb, specs, envelope, beads, radius, render_fractions(grid, ct_from_limb, specs, envelope, beads, radius)


def _mix(fractions, hu) -> np.ndarray:
    total = sum(fractions[t].array_zyx for t in TISSUES)
    return sum(hu[t] * fractions[t].array_zyx for t in TISSUES) + hu["air"] * np.clip(1.0 - total, 0.0, 1.0)


@pytest.mark.parametrize("draw", [0, 1])
def test_tissue_fractions_mix_linearly_into_the_rendered_ct(mini_scene, draw):
    """Mixing the fractions at any tissue HUs gives what the renderer draws at those HUs (no blur,
    no noise) to within its int16 rounding, on an oblique anisotropic grid with beads."""
    grid, ct_from_limb, specs, envelope, beads, radius, fractions = mini_scene
    rng = np.random.default_rng(draw)
    hu = dict(DEFAULT_HU) if draw == 0 else {
        "air": -990.0, "fat": rng.uniform(-150, -50), "soft": rng.uniform(0, 80), "cortical": rng.uniform(600, 1900),
        "marrow": rng.uniform(30, 500), "bead": rng.uniform(2500, 4000),
    }  # fmt: skip
    rendered, _labels = render_ct(grid, ct_from_limb, specs, envelope, beads, radius, rng, hu=hu, noise_hu=0.0, psf_sigma_vox=0.0)
    diff = np.abs(_mix(fractions, hu) - rendered.array_zyx.astype(np.float64))
    assert diff.max() <= 1.5, diff.max()
    for t in TISSUES:
        f = fractions[t].array_zyx
        whole = 0.99 if t != "bead" else 0.5  # a 1 mm bead fills no 0.9 x 0.9 x 1.3 mm voxel whole
        assert f.min() >= 0.0 and f.max() <= 1.0 and f.max() > whole, t
    total = sum(fractions[t].array_zyx for t in TISSUES)
    assert total.max() <= 1.0 + 1e-3
    # the boundary voxels really are mixed: a share of cortex between 0.2 and 0.8 somewhere
    assert ((fractions["cortical"].array_zyx > 0.2) & (fractions["cortical"].array_zyx < 0.8)).sum() > 1000


def test_the_half_way_hu_lies_on_the_true_surface_at_any_tissue_hus(mini_scene):
    """Where the femur shaft meets soft tissue, the HU half-way between soft tissue and cortex lies
    within 0.25 mm of the true surface, for bright and for faint cortex (a non-linear HU map of a
    rendered CT puts it 1-2 mm out)."""
    from synthetic_ct import BONES

    from orthonav.core.transforms import apply, invert

    grid, ct_from_limb, specs, envelope, beads, radius, fractions = mini_scene
    nk, nj, ni = fractions["soft"].array_zyx.shape
    kk, jj, ii = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(np.float64)
    p_limb = apply(invert(ct_from_limb), apply(grid.lps_from_ijk, ijk))
    from orthonav.phantoms import sdf as S

    d = S.normalized(BONES["femur"][1], p_limb)
    shaft = (p_limb[:, 2] > 25.0) & (p_limb[:, 2] < 55.0) & (np.abs(d) < 1.5)  # the femur shaft, away from its ends and the patella
    for soft, cortical in ((40.0, 1500.0), (70.0, 650.0)):
        hu = dict(DEFAULT_HU, soft=soft, cortical=cortical, marrow=soft + 30.0)
        v = _mix(fractions, hu).ravel()[shaft]
        half = 0.5 * (soft + cortical)
        # The surface estimate: the distance at which a line fitted to HU vs distance through the
        # ramp (voxels strictly between the two levels) crosses the half-way HU.
        ramp = (v > soft + 0.1 * (cortical - soft)) & (v < cortical - 0.1 * (cortical - soft)) & (d[shaft] > -1.0)
        slope, icpt = np.polyfit(d[shaft][ramp], v[ramp], 1)
        crossing = (half - icpt) / slope
        assert abs(crossing) < 0.25, (soft, cortical, crossing)


def test_synthetic_draws_are_seeded():
    from orthonav.phantoms.synth_ct import synth_draw

    fam = (("long_bone", 1.0),)
    a = synth_draw(np.random.default_rng(5), families=fam)
    b = synth_draw(np.random.default_rng(5), families=fam)
    c = synth_draw(np.random.default_rng(6), families=fam)
    assert np.array_equal(a.ct.array_zyx, b.ct.array_zyx) and np.array_equal(a.labels.array_zyx, b.labels.array_zyx)
    assert a.ct.array_zyx.shape != c.ct.array_zyx.shape or not np.array_equal(a.ct.array_zyx, c.ct.array_zyx)
    assert a.labels.array_zyx.max() > 0 and a.names in (("femur_left",), ("femur_right",))


def test_slabs_cover_the_axis_once_in_order():
    """The slab ranges are contiguous, in order, at least one slice each, cover every slice, and
    hold at most the voxels asked (or one slice)."""
    from orthonav.phantoms.fov import slabs

    for shape in [(1, 1, 1), (7, 1, 1), (10, 3, 4), (11, 3, 4), (0, 3, 4), (5, 0, 2)]:
        for voxels in (1, 12, 13, 25, 36, 10**9):
            got = list(slabs(shape, voxels))
            assert [k for a, b in got for k in range(a, b)] == list(range(shape[0])), (shape, voxels, got)
            assert all(b > a and (b - a) * max(int(np.prod(shape[1:])), 1) <= max(voxels, max(int(np.prod(shape[1:])), 1)) for a, b in got)


def _one_pass_deform(ct, labels, spacing_zyx, rng, deform_mm, bone):
    """The deformation as one ``map_coordinates`` pass over the whole grid (the code before the
    slabs, kept here as the reference)."""
    from scipy import ndimage as ndi

    shape = np.array(ct.shape)
    ctrl = np.maximum(np.round(shape * spacing_zyx / 60.0).astype(int), 2) + 1
    scale = rng.uniform(0.9, 1.1, size=3)
    centre = (shape - 1) / 2.0
    coords = []
    for a in range(3):
        disp_mm = rng.normal(0.0, deform_mm / 2.0, size=tuple(ctrl))
        disp = ndi.zoom(disp_mm, shape / ctrl, order=3, mode="nearest")[: shape[0], : shape[1], : shape[2]] / spacing_zyx[a]
        lin = (np.arange(shape[a], dtype=np.float32) - centre[a]) / scale[a] + centre[a]
        sh = [1, 1, 1]
        sh[a] = shape[a]
        coords.append(np.broadcast_to(lin.reshape(sh) + disp.astype(np.float32), tuple(shape)))
    return (ndi.map_coordinates(ct, coords, order=1, mode="nearest"), ndi.map_coordinates(labels, coords, order=0, mode="nearest"),
            ndi.map_coordinates(bone, coords, order=1, mode="nearest"))


@pytest.mark.parametrize("slices", [1, 2, 3, 1000])
def test_the_deformation_and_thick_slices_slab_by_slab_equal_one_pass(monkeypatch, slices):
    """``_deform`` and ``_resample_k`` map slab by slab (a 0.63 mm knee draw took 15.4 GB of
    memory in one pass): with slabs of 1, 2 or 3 slices (a short last slab on 11 and 13 slices)
    or one slab, the values are those of one pass over the whole grid, bit for bit."""
    from scipy import ndimage as ndi

    from orthonav.phantoms import fov
    from orthonav.phantoms import synth_ct as S

    gen = np.random.default_rng(0)
    for shape in [(11, 9, 7), (13, 6, 10)]:
        monkeypatch.setattr(fov, "SLAB_VOXELS", slices * shape[1] * shape[2])
        ct = gen.normal(300.0, 400.0, size=shape).astype(np.float32)
        labels = gen.integers(0, 4, size=shape).astype(np.uint8)
        bone = gen.random(shape).astype(np.float32)
        spacing = np.array([2.5, 0.7, 0.9])
        got = S._deform(ct, labels, spacing, np.random.default_rng(4), 6.0, bone)
        want = _one_pass_deform(ct, labels, spacing, np.random.default_rng(4), 6.0, bone)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and np.array_equal(g, w)
        zk = (np.arange(5) + 0.5) * shape[0] / 5 - 0.5
        want_k = ndi.map_coordinates(ct, np.meshgrid(zk, np.arange(shape[1]), np.arange(shape[2]), indexing="ij"), order=1, mode="nearest")
        assert np.array_equal(S._resample_k(ct, zk), want_k)


def test_a_draw_resampled_slab_by_slab_is_the_draw_in_one_pass(monkeypatch):
    """A whole draw (a long bone whose thick slices are resampled too) made with slabs of 2
    slices (the field of view's CT, the deformation, the thick slices) is the draw made with
    one slab per array."""
    from orthonav.phantoms import fov
    from orthonav.phantoms import synth_ct as S

    fam = (("long_bone", 1.0),)
    real = fov.slabs
    one = lambda shape, voxels=None: iter([(0, shape[0])] if shape[0] else [])  # noqa: E731
    monkeypatch.setattr(fov, "slabs", one)
    monkeypatch.setattr(S, "slabs", one)
    whole = S.synth_draw(np.random.default_rng(3), families=fam)
    seen = []

    def two(shape, voxels=None):
        seen.append(shape)
        return real(shape, 2 * int(np.prod(shape[1:])))

    monkeypatch.setattr(fov, "slabs", two)
    monkeypatch.setattr(S, "slabs", two)
    calls = []
    monkeypatch.setattr(S, "_resample_k", lambda a, zk, f=S._resample_k: calls.append(a.shape) or f(a, zk))
    sliced = S.synth_draw(np.random.default_rng(3), families=fam)
    assert len(seen) >= 3 and calls  # the field of view, the deformation, the thick slices
    assert np.array_equal(whole.ct.array_zyx, sliced.ct.array_zyx)
    assert np.array_equal(whole.labels.array_zyx, sliced.labels.array_zyx)
    np.testing.assert_array_equal(whole.ct.lps_from_ijk, sliced.ct.lps_from_ijk)


def test_more_sources_are_resampled_as_their_own_ct_source():
    """``apply_fov(..., more_sources=(v,))`` gives in ``more`` what a second call with
    ``ct_source=v`` gives as its CT (the draw's bone fraction is resampled so, in the same
    pass as its CT); without the CT it is refused."""
    from orthonav.core.errors import InputError
    from orthonav.core.volume import Volume
    from orthonav.phantoms.fov import apply_fov, random_fov
    from orthonav.phantoms.synth_ct import _phantom

    phantom, fractions = _phantom("long_bone", True)
    spec = random_fov(np.random.default_rng(3), "knee", spacing_mm=(2.0, 2.5))
    bone = Volume((fractions["cortical"].array_zyx + fractions["marrow"].array_zyx) * np.float32(1000.0), fractions["soft"].lps_from_ijk)
    both = apply_fov(phantom, spec, with_ct=True, more_sources=(bone,))
    alone = apply_fov(phantom, spec, with_ct=True, ct_source=bone)
    plain = apply_fov(phantom, spec, with_ct=True)
    assert len(both.more) == 1 and both.more[0].array_zyx.max() > 500  # bone inside, x 1000
    assert np.array_equal(both.more[0].array_zyx, alone.ct.array_zyx)
    assert np.array_equal(both.ct.array_zyx, plain.ct.array_zyx) and not np.array_equal(both.ct.array_zyx, both.more[0].array_zyx)
    np.testing.assert_array_equal(both.more[0].lps_from_ijk, alone.ct.lps_from_ijk)
    with pytest.raises(InputError, match="with_ct"):
        apply_fov(phantom, spec, more_sources=(bone,))


def test_partial_volume_truth_follows_the_bone_fraction_not_the_coarse_labels():
    """Two balls (class 1 and 2) labelled on a grid 3x coarser (nearest neighbour, as a draw's
    labels come from the phantom's grid) against their exact fraction on the fine grid: the
    truth takes the fraction's half-way surface (Dice with the exact balls 1.0; the coarse
    labels about 0.9) and keeps each voxel's class."""
    from orthonav.phantoms.synth_ct import _partial_volume_truth

    n = 60
    z, y, x = (np.mgrid[0:n, 0:n, 0:n] + 0.5).astype(np.float32)
    d1 = np.sqrt((z - 30) ** 2 + (y - 20) ** 2 + (x - 20) ** 2)
    d2 = np.sqrt((z - 30) ** 2 + (y - 40) ** 2 + (x - 41) ** 2)
    frac = np.clip(8.5 - np.minimum(d1, d2), 0.0, 1.0).astype(np.float32)  # 0.5 at radius 8
    exact = np.where(d1 < 8.0, 1, np.where(d2 < 8.0, 2, 0)).astype(np.uint8)
    coarse = exact[1::3, 1::3, 1::3].repeat(3, 0).repeat(3, 1).repeat(3, 2)  # nearest neighbour from 3 voxels
    truth = _partial_volume_truth(coarse, frac)

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    for c in (1, 2):
        assert dice(coarse == c, exact == c) < 0.93
        assert dice(truth == c, exact == c) > 0.99, (c, dice(truth == c, exact == c))
    assert not _partial_volume_truth(np.zeros_like(coarse), frac).any()


def test_the_deformation_continues_the_anatomy_past_the_field_of_view():
    """A rod of bone crossing the whole volume (soft tissue 40 HU around it), shrunk by the
    random scaling and displaced by the smooth deformation: it still reaches both faces, in the
    CT, the labels and the bone fraction, and no voxel turns to air (filling the mapping's
    outside with air cut every bone crossing a face with an air wedge, so its marrow opened to
    the outside)."""
    from orthonav.phantoms.synth_ct import _deform

    shape = (40, 30, 30)
    z, y, x = np.mgrid[0 : shape[0], 0 : shape[1], 0 : shape[2]]
    rod = (y - 14.5) ** 2 + (x - 14.5) ** 2 < 6.0**2
    ct = np.where(rod, 1200.0, 40.0).astype(np.float32)
    labels = rod.astype(np.uint8)
    bone = rod.astype(np.float32)
    spacing = np.array([2.0, 1.0, 1.0])
    for seed in range(4):
        rng = np.random.default_rng(seed)
        ct2, lab2, bone2 = _deform(ct, labels, spacing, rng, 6.0, bone)
        assert ct2.min() >= 40.0 - 1e-3, (seed, ct2.min())
        for face in (0, -1):
            assert lab2[face].sum() > 0.5 * labels[face].sum(), (seed, face)
            assert bone2[face].sum() > 0.5 * bone[face].sum(), (seed, face)
            assert ct2[face][lab2[face] > 0].mean() > 1000.0, (seed, face)
