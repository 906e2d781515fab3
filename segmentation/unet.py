"""Learned bone segmentation: a compact 3D U-Net in plain torch (the ``unet`` backend).

* Network: a 3D U-Net (Ronneberger et al. 2015 / Cicek et al. 2016, MICCAI) with the
  nnU-Net choices (Isensee et al. 2021, Nature Methods 18): per level two 3x3x3 convolutions,
  instance norm and LeakyReLU; strided-convolution down-sampling, transposed-convolution
  up-sampling, skip connections by concatenation.
* Grid: every CT is resampled to an isotropic ``spacing_mm`` grid in *canonical orientation*
  (the CT's own axes permuted / flipped to the nearest LPS axes, so the network always sees
  i -> left, j -> posterior, k -> superior) before training and inference. Intensities: HU
  clipped to ``hu_window`` and mapped linearly to [-1, 1]. Both are stored in the model card.
* Training (:func:`train_from_folder`): class-balanced patch sampling (each patch is centred on
  a voxel of a class drawn uniformly among the classes present, background included); the
  targets are partial-volume class fractions on the coarse grid (:func:`soft_labels_to_grid`),
  so a coarse grid (default 4 mm, wide context for naming the bones, cheap steps) still gives
  sub-voxel boundaries on the CT grid; loss = cross-entropy + soft Dice (Milletari et al.
  2016, V-Net, eq. 1 with squares, averaged over classes so small bones weigh as much as the
  femur); AdamW with a polynomial learning-rate decay over the budget (time or steps).
* Inference (:func:`segment_unet`): windows of the training patch size placed around the bone
  (the box of voxels >= 150 HU plus a margin; the fewest windows per axis, spread evenly, so
  the bone sits near window centres as in training), blended with a Gaussian weight (sigma =
  patch / 8, as nnU-Net); the plain and left-right flipped passes share the network calls.
  With the card's ``refine = "image-edge"`` the NETWORK decides which bone (class
  probabilities, interpolated to the CT's grid) and whether it is sure enough to name it; the
  IMAGE decides where bone is and its surface (the classical backend's physics:
  :func:`image_bone_mask`); a piece the network does not recognise stays bone, unnamed
  (``bone_<n>``, :class:`Abstained`, with the reason). Without refinement: the network's
  arg-max. Confidence = the calibrated probability of the voxel's label.
* Weights file: ``torch.save({"format", "format_version", "state_dict", "model_card"})`` with
  only tensors and plain containers inside, read back with ``torch.load(weights_only=True)``;
  the model card is also written as JSON beside it (``<weights>.json``) for people to read
  (the card inside the weights file is the one that is used).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scipy import ndimage as ndi
from torch import nn

from orthonav.core.atomic import write_with
from orthonav.core.case import LabelTable, read_labels_table
from orthonav.core.errors import InputError, SchemaError
from orthonav.core.heap import reusing_freed_memory
from orthonav.core.schema import Versioned, save_model
from orthonav.core.volume import Volume, read_volume, to_sitk

from .classical import Segmentation
from .unet_calibration import apply_confidence_map, check_confidence_map
from .unet_grid import Grid, canonical_direction, canonical_grid
from .unet_labels import Abstained, image_bone_mask, probabilities_to_labels, withhold_against_anatomy

Progress = Callable[[str, float], None]

#: ``format`` key of an OrthoNav U-Net weights file, and the layout version this code reads.
WEIGHTS_FORMAT = "orthonav-unet3d"
WEIGHTS_FORMAT_VERSION = 1
#: HU window mapped to [-1, 1] (cortical bone and radiopaque beads stay distinguishable).
DEFAULT_HU_WINDOW = (-300.0, 3000.0)
#: HU used outside the CT's field of view when resampling.
AIR_HU = -1024.0
NUM_THREADS = 2
#: Default network grid (mm). With partial-volume targets a perfect network on a 4 mm grid
#: still gives Dice 0.95-0.99 per knee bone on the CT grid, and a 40-voxel patch sees 160 mm:
#: enough context to tell the tibia (fibula beside it) from the femur shaft, cheaply.
DEFAULT_SPACING_MM = 4.0
#: Sliding windows per network call at inference (the plain and the flipped pass share the
#: batches: 8 windows of 40^3 cost 0.83 CPU s per million voxels, 4 cost 0.93, 1 takes a slow path).
WINDOW_BATCH = 8
#: Background logit (others 0) of voxels no network window covered (see sliding_window_probabilities).
BACKGROUND_LOGIT = 40.0
#: Windows with no voxel at or above this HU are not run at inference (they hold no bone).
SKIP_WINDOW_BELOW_HU = 150.0
#: Default sliding-window overlap at inference (fraction of the patch edge).
INFERENCE_OVERLAP = 0.5
#: Context (network voxels) kept around the box of voxels >= SKIP_WINDOW_BELOW_HU when placing
#: the inference windows (8 at 4 mm: 32 mm). See :func:`sliding_window_passes`.
WINDOW_MARGIN = 8
#: Boundary refinements a model card may ask for (see :func:`segment_unet`).
REFINEMENTS = ("none", "image-edge")
#: The model shipped with the package (``orthonav segment --backend unet`` without --weights).
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "models" / "bone_unet.pt"


def _torch_settings(num_threads: int | None) -> None:
    """CPU threads (default :data:`NUM_THREADS`).

    On a machine whose cores are busy with other jobs, 1 thread was measured 4-5x faster per
    training step than 2 (OpenMP threads wait on each other), hence the knob.
    """
    n = NUM_THREADS if num_threads is None else int(num_threads)
    if n < 1:
        raise InputError(None, f"num_threads must be >= 1, got {n}")
    torch.set_num_threads(n)


@contextmanager
def _denormals_flushed() -> Iterator[None]:
    """Denormal floats flushed to zero while the network runs (slow on CPUs), and not after
    (the flag is set off on exit, whatever it was before).

    The flag is the CPU thread's floating-point mode, so it reaches every library the process
    runs next on that thread: under it, scipy 1.17's k-d tree build crashed (segmentation
    fault) on the 225,550 surface voxels of a hip CT's bones (``unet_labels._nearest_fill``).
    Used around the network's passes (:func:`network_logits`) and the training loop.
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


# ----------------------------------------------------------------------------- model card


class Architecture(BaseModel):
    """What :func:`build_network` needs to rebuild the network."""

    model_config = ConfigDict(extra="forbid")

    name: str = "unet3d"
    in_channels: int = Field(default=1, ge=1)
    num_classes: int = Field(ge=2, description="output channels = bones + background")
    base_channels: int = Field(default=16, ge=2, le=64)
    levels: int = Field(default=3, ge=2, le=5, description="resolution levels (levels - 1 down-samplings)")
    patch_size: int = Field(default=64, ge=8, description="cubic patch edge (voxels) for training and inference")


class TrainingSummary(BaseModel):
    """Where the weights came from (informational)."""

    model_config = ConfigDict(extra="forbid")

    cases: list[str] = Field(default_factory=list)
    iterations: int = Field(default=0, description="optimizer steps")
    seconds: float = Field(default=0.0, description="wall-clock seconds of the optimisation loop")
    cpu_seconds: float | None = Field(default=None, description="process CPU seconds of the loop (all threads)")
    load_average: float | None = Field(default=None, description="1-minute load average at the end (machine busy?)")
    num_threads: int | None = None
    final_loss: float | None = None
    seed: int = 0
    batch_size: int = 2
    torch_version: str = ""
    host: str = ""


class ModelCard(Versioned):
    """The model card: classes, grid, intensity normalisation, architecture, provenance.

    ``classes`` maps output channel -> bone name (channel 0 is background and absent);
    channels 1..n must all be named.
    """

    SCHEMA_VERSION = 3
    classes: dict[int, str]
    side: str | None = Field(default=None, description="side of every training case when they agree, else None")
    spacing_mm: float = Field(gt=0.0, description="isotropic voxel size the network works at (mm)")
    orientation: str = Field(default="canonical-LPS", description="grid axes: CT axes permuted/flipped to the nearest LPS axes")
    hu_window: tuple[float, float] = Field(description="HU clipped to this window, then mapped linearly to [-1, 1]")
    architecture: Architecture
    training: TrainingSummary = Field(default_factory=TrainingSummary)
    created_utc: str = ""
    # Schema 2 (version 1 cards, without these, still read: no calibration, no TTA, no refinement).
    temperature: float = Field(default=1.0, gt=0.0, description="softmax temperature fitted on held-out draws (logits / T)")
    tta_flips: list[str] = Field(default_factory=list, description="test-time flips averaged with the plain pass: 'x' (left-right)")
    refine: str = Field(default="none", description="'none' (the network's arg-max) or 'image-edge': bone and its surface from the CT's own physics, the bone's name from the network (see segment_unet)")
    low_confidence: float = Field(default=0.8, gt=0.0, le=1.0, description="a bone whose name confidence (mean probability of its class over its voxels) is below this is reported")
    # Schema 3 (version 1-2 cards, without it, still read: the confidence is the temperature-scaled probability).
    confidence_map: list[tuple[float, float]] | None = Field(
        default=None,
        description="knots (confidence, calibrated confidence) of a monotone piecewise-linear map of the final label's "
        "confidence, fitted by isotonic regression on held-out draws (segmentation.unet_calibration)",
    )
    results: dict[str, float] = Field(default_factory=dict, description="measured figures (informational; docs/model_card.md)")


def _check_card(card: ModelCard, path: Path | None) -> None:
    names = list(card.classes.values())
    want = list(range(1, card.architecture.num_classes))
    if sorted(card.classes) != want:
        raise SchemaError(
            path,
            f"model card names channels {sorted(card.classes)} but the network has {card.architecture.num_classes} output "
            f"channels (background 0 + bones {want})",
        )
    if any(not n or n != n.strip() for n in names) or len(set(names)) != len(names):
        raise SchemaError(path, f"model card class names must be unique and non-empty, got {names}")
    lo, hi = card.hu_window
    if not hi > lo:
        raise SchemaError(path, f"model card hu_window must be (low, high) with high > low, got {card.hu_window}")
    if any(f not in ("x",) for f in card.tta_flips):
        raise SchemaError(path, f"unknown test-time flips {card.tta_flips}; this OrthoNav knows 'x'")
    if card.refine not in REFINEMENTS:
        raise SchemaError(path, f"unknown refinement {card.refine!r}; expected one of {', '.join(REFINEMENTS)}")
    if card.orientation != "canonical-LPS":
        raise SchemaError(path, f"unknown grid orientation {card.orientation!r} in the model card")
    if card.confidence_map is not None and (why := check_confidence_map(card.confidence_map)) is not None:
        raise SchemaError(path, f"model card confidence_map {why}")
    if card.architecture.patch_size % (2 ** (card.architecture.levels - 1)):
        raise SchemaError(path, f"patch_size {card.architecture.patch_size} is not divisible by 2^(levels-1)")


# ----------------------------------------------------------------------------- network


class _Block(nn.Sequential):
    """Two (conv 3x3x3 -> instance norm -> LeakyReLU); the first may down-sample (stride 2)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.InstanceNorm3d(c_out, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv3d(c_out, c_out, 3, padding=1, bias=False),
            nn.InstanceNorm3d(c_out, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )


class UNet3D(nn.Module):
    """Compact 3D U-Net: input (b, 1, z, y, x) -> logits (b, num_classes, z, y, x).

    Each spatial size must be divisible by ``2 ** (levels - 1)``.
    """

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        ch = [arch.base_channels * 2**i for i in range(arch.levels)]
        self.encoders = nn.ModuleList([_Block(arch.in_channels, ch[0])] + [_Block(ch[i - 1], ch[i], stride=2) for i in range(1, arch.levels)])
        self.ups = nn.ModuleList([nn.ConvTranspose3d(ch[i], ch[i - 1], 2, stride=2) for i in range(arch.levels - 1, 0, -1)])
        self.decoders = nn.ModuleList([_Block(2 * ch[i - 1], ch[i - 1]) for i in range(arch.levels - 1, 0, -1)])
        self.head = nn.Conv3d(ch[0], arch.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.ups, self.decoders):
            x = dec(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)


def build_network(arch: Architecture) -> UNet3D:
    if arch.name != "unet3d":
        raise InputError(None, f"unknown network architecture {arch.name!r}; this OrthoNav builds 'unet3d'")
    return UNet3D(arch)


@dataclass(frozen=True)
class UNetModel:
    """A loaded network (eval mode, CPU) with its model card."""

    network: UNet3D
    card: ModelCard
    path: Path | None = None

    @property
    def table(self) -> LabelTable:
        return LabelTable(labels=dict(self.card.classes), backend="unet", side=self.card.side)


# ----------------------------------------------------------------------------- weights file


def card_path_for(weights_path: str | Path) -> Path:
    """The JSON model card written beside a weights file: ``<name>.json``."""
    p = Path(weights_path)
    return p.with_name(p.name + ".json") if p.suffix.lower() in ("", ".json") else p.with_suffix(".json")


def save_weights(network: nn.Module, card: ModelCard, path: str | Path) -> Path:
    """Atomically write the weights file (tensors + plain containers only) and its JSON card."""
    _check_card(card, None)
    payload = {
        "format": WEIGHTS_FORMAT,
        "format_version": WEIGHTS_FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu().clone() for k, v in network.state_dict().items()},
        "model_card": card.model_dump(mode="json"),
    }
    out = write_with(path, lambda tmp: torch.save(payload, tmp))
    save_model(card_path_for(out), card)
    return out


def load_model(path: str | Path, *, expect_classes: Sequence[str] | dict[int, str] | None = None) -> UNetModel:
    """Load a weights file written by :func:`train_from_folder` (``torch.load(weights_only=True)``).

    Parameters
    ----------
    path
        Weights file.
    expect_classes
        Optional bone names (or channel -> name) the caller needs; a card naming other classes
        is refused.

    Raises
    ------
    InputError
        Missing file, not a torch file, a file holding pickled objects other than tensors and
        plain containers (refused by ``weights_only=True``), not an OrthoNav U-Net file, a
        newer layout, a model card that fails validation or disagrees with the weights.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "U-Net weights file not found" + ("" if not p.is_dir() else " (it is a folder)"))
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... : all mean "not usable"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise InputError(p, f"not a loadable U-Net weights file (torch.load with weights_only=True refused it: {first})") from e
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise InputError(p, f"not an OrthoNav U-Net weights file (no format '{WEIGHTS_FORMAT}')")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > WEIGHTS_FORMAT_VERSION:
        raise InputError(p, f"weights file layout version {version!r} is not one this OrthoNav reads (up to {WEIGHTS_FORMAT_VERSION})")
    state, card_data = payload.get("state_dict"), payload.get("model_card")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(p, "weights file has no state_dict of tensors")
    if not isinstance(card_data, dict):
        raise InputError(p, "weights file has no model card")
    if isinstance(card_data.get("schema_version"), int) and card_data["schema_version"] > ModelCard.SCHEMA_VERSION:
        raise SchemaError(p, f"model card schema_version {card_data['schema_version']} is newer than this OrthoNav reads")
    try:
        card = ModelCard.model_validate(card_data)
    except ValidationError as e:
        first = e.errors()[0]
        raise SchemaError(p, f"model card is invalid at '{'.'.join(str(x) for x in first['loc'])}': {first['msg']}") from e
    _check_card(card, p)
    if expect_classes is not None:
        want = dict(expect_classes) if isinstance(expect_classes, dict) else {i + 1: n for i, n in enumerate(expect_classes)}
        if (isinstance(expect_classes, dict) and want != card.classes) or (not isinstance(expect_classes, dict) and sorted(want.values()) != sorted(card.classes.values())):
            raise SchemaError(p, f"model card classes {card.classes} are not the expected {want}")
    network = build_network(card.architecture)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:300]
        raise InputError(p, f"weights do not fit the architecture in the model card ({first})") from e
    network.eval()
    return UNetModel(network, card, p)


# ----------------------------------------------------------------------------- grids




def _resample(image: sitk.Image, grid: Grid, interpolator: int, default: float) -> sitk.Image:
    return sitk.Resample(
        image, list(grid.size_ijk), sitk.Transform(), interpolator, [float(x) for x in grid.origin],
        [grid.spacing] * 3, [float(x) for x in grid.direction.ravel()], float(default), sitk.sitkFloat32,
    )  # fmt: skip


def normalise_hu(values_hu: NDArray, hu_window: tuple[float, float]) -> NDArray[np.float32]:
    """HU -> [-1, 1]: clip to ``hu_window`` then map linearly."""
    lo, hi = hu_window
    v = np.clip(np.asarray(values_hu, dtype=np.float32), lo, hi)
    return ((v - 0.5 * (lo + hi)) / (0.5 * (hi - lo))).astype(np.float32)


def ct_to_grid(ct: Volume, grid: Grid, hu_window: tuple[float, float]) -> NDArray[np.float32]:
    """CT resampled (linear) to ``grid`` and normalised; array (z, y, x).

    An integer or float CT goes to SimpleITK as it is (the interpolation is computed in double
    precision and written as float32 either way: the same values as from a float32 copy, without
    a float copy of the whole CT: 0.4 GB and ~1 s on a 512 x 512 x 400 CT).
    """
    arr = ct.array_zyx
    native = arr.dtype in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.float32, np.float64)
    img = to_sitk(ct if native else ct.with_array(arr.astype(np.float32)))
    return normalise_hu(sitk.GetArrayFromImage(_resample(img, grid, sitk.sitkLinear, AIR_HU)), hu_window)


def soft_labels_to_grid(
    labels_zyx: NDArray, geometry: Volume, grid: Grid, num_classes: int, *, sigma_fraction: float = 0.3
) -> NDArray[np.float16]:
    """Partial-volume class fractions on ``grid``: the training targets, array (c, z, y, x).

    Each class indicator is low-pass filtered on the CT grid (Gaussian, sigma =
    ``sigma_fraction`` x the grid spacing: anti-aliasing before down-sampling) and resampled
    linearly to ``grid``; the fractions are renormalised to sum to one per voxel. A network
    trained on these fractions predicts the partial volume of each bone in a coarse voxel, so
    the linear interpolation of its probabilities back to the CT grid (:func:`segment_unet`)
    puts the boundary between coarse voxel centres. On the held-out knee phantom at 3 mm a
    perfect network reaches fibula Dice 0.97 with these targets, 0.93 with hard (arg-max)
    labels; at 2 mm 0.997 vs 0.95 (measured with the truth labels).
    """
    sigma_mm = float(sigma_fraction) * grid.spacing
    out = np.empty((num_classes, *grid.size_ijk[::-1]), dtype=np.float32)
    for c in range(num_classes):
        ind = to_sitk(geometry.with_array((labels_zyx == c).astype(np.float32)))
        if sigma_mm > 0:
            ind = sitk.SmoothingRecursiveGaussian(ind, sigma_mm)
        out[c] = sitk.GetArrayFromImage(_resample(ind, grid, sitk.sitkLinear, 1.0 if c == 0 else 0.0))
    np.clip(out, 0.0, None, out=out)
    out /= np.maximum(out.sum(axis=0, keepdims=True), 1e-6)
    return out.astype(np.float16)


# ----------------------------------------------------------------------------- training data


@dataclass(frozen=True)
class TrainingCase:
    """One CT + label map on the network's grid.

    Attributes
    ----------
    image
        Normalised CT, (z, y, x) float32.
    labels
        Arg-max class per voxel, (z, y, x) uint8 (used to choose patch centres).
    targets
        Class fractions, (c, z, y, x) float16 summing to one (the training targets; see
        :func:`soft_labels_to_grid`).
    """

    name: str
    image: NDArray[np.float32]
    labels: NDArray[np.uint8]
    targets: NDArray[np.float16]


def find_training_cases(data_dir: str | Path) -> list[tuple[Path, Path, Path]]:
    """(ct, labels, labels.json) of every case folder under ``data_dir`` (or ``data_dir`` itself).

    A case is a folder with ``ct.nii.gz`` and either ``truth/labels.nii.gz`` +
    ``truth/labels.json`` (a phantom case; the truth wins over a segmentation beside it) or
    ``labels.nii.gz`` + ``labels.json``.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(root, "training data folder not found")
    found = []
    for d in [root] + sorted(p.parent for p in root.rglob("ct.nii.gz") if p.parent != root):
        if not (d / "ct.nii.gz").is_file():
            continue
        for lab, js in ((d / "truth" / "labels.nii.gz", d / "truth" / "labels.json"), (d / "labels.nii.gz", d / "labels.json")):
            if lab.is_file() and js.is_file():
                found.append((d / "ct.nii.gz", lab, js))
                break
    if not found:
        raise InputError(root, "no training cases: expected folders with ct.nii.gz and labels.nii.gz + labels.json (or truth/labels.nii.gz + truth/labels.json)")
    return found


def _class_names(tables: list[LabelTable]) -> dict[int, str]:
    names: list[str] = []
    for t in tables:
        for v in sorted(t.labels):
            if t.labels[v] not in names:
                names.append(t.labels[v])
    return {i + 1: n for i, n in enumerate(names)}


def load_training_cases(
    paths: list[tuple[Path, Path, Path]], spacing_mm: float, hu_window: tuple[float, float], progress: Progress | None = None
) -> tuple[list[TrainingCase], dict[int, str], str | None]:
    """Read and resample every case; classes are the union of bone names (first-seen order)."""
    tables = [read_labels_table(js) for _, _, js in paths]
    classes = _class_names(tables)
    by_name = {n: c for c, n in classes.items()}
    cases = []
    for n, ((ct_p, lab_p, _), table) in enumerate(zip(paths, tables)):
        ct = read_volume(ct_p)
        lab = read_volume(lab_p)
        if lab.array_zyx.shape != ct.array_zyx.shape or not np.allclose(lab.lps_from_ijk, ct.lps_from_ijk, atol=1e-3):
            raise InputError(lab_p, f"label map geometry differs from its CT {ct_p} (shape {lab.array_zyx.shape} vs {ct.array_zyx.shape})")
        if not np.issubdtype(lab.array_zyx.dtype, np.integer):
            raise InputError(lab_p, f"label map must hold integers, got {lab.array_zyx.dtype}")
        present = set(np.unique(lab.array_zyx).tolist()) - {0}
        unknown = sorted(present - set(table.labels))
        if unknown:
            raise InputError(lab_p, f"label values {unknown} are not named in its labels.json")
        lut = np.zeros(int(max(present | {0})) + 1, dtype=np.uint8)
        for v, name in table.labels.items():
            if v < len(lut):
                lut[v] = by_name[name]
        remapped = lut[lab.array_zyx.astype(np.int64)]
        cases.append(training_case(ct_p.parent.name, ct, remapped, spacing_mm, hu_window, len(classes) + 1))
        if progress is not None:
            progress("reading training cases", (n + 1) / len(paths))
    sides = {t.side for t in tables}
    return cases, classes, (sides.pop() if len(sides) == 1 else None)


def training_case(name: str, ct: Volume, classes_zyx: NDArray, spacing_mm: float, hu_window: tuple[float, float], num_classes: int) -> TrainingCase:
    """One CT (HU) and its class map (channel values, same grid) on the network's grid."""
    grid = canonical_grid(ct, spacing_mm)
    targets = soft_labels_to_grid(classes_zyx, ct, grid, num_classes)
    return TrainingCase(name, ct_to_grid(ct, grid, hu_window), np.argmax(targets, axis=0).astype(np.uint8), targets)


class PatchSampler:
    """Class-balanced random patches: the class is drawn uniformly among those in the case.

    The patch centre is a random voxel of that class moved by up to a quarter patch, so every
    bone, however small (the patella is 0.1 % of a knee CT's voxels), is in most batches, and
    background patches (drawn as often as each bone) teach what is not bone.
    """

    def __init__(self, cases: list[TrainingCase], patch: int, num_classes: int, rng: np.random.Generator, *, flip_x: bool = False) -> None:
        self.cases, self.patch, self.num_classes, self.rng, self.flip_x = cases, patch, num_classes, rng, flip_x
        self.where: list[dict[int, NDArray[np.int64]]] = []
        for c in cases:
            flat = c.labels.ravel()
            per = {}
            for k in range(num_classes):
                idx = np.flatnonzero(flat == k)
                if len(idx):
                    per[k] = idx if len(idx) <= 200_000 else rng.choice(idx, 200_000, replace=False)
            self.where.append(per)

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch: images (b, 1, p, p, p) float32 and class fractions (b, c, p, p, p) float32."""
        p = self.patch
        xs, ys = [], []
        for _ in range(batch):
            n = int(self.rng.integers(len(self.cases)))
            case, per = self.cases[n], self.where[n]
            k = list(per)[int(self.rng.integers(len(per)))]
            centre = np.array(np.unravel_index(per[k][int(self.rng.integers(len(per[k])))], case.labels.shape))
            centre = centre + self.rng.integers(-p // 4, p // 4 + 1, size=3)
            start = centre - p // 2
            img = _crop(case.image, start, p, -1.0)  # -1 = the bottom of the HU window (air)
            tgt = np.stack([_crop(case.targets[c], start, p, 1.0 if c == 0 else 0.0) for c in range(self.num_classes)])
            # intensity augmentation: small gain / offset and noise, in normalised units
            img = img * self.rng.uniform(0.9, 1.1) + self.rng.uniform(-0.05, 0.05)
            img = img + self.rng.normal(0.0, 0.02, size=img.shape).astype(np.float32)
            if self.flip_x and self.rng.random() < 0.5:  # left-right mirror (classes are side-less)
                img, tgt = img[:, :, ::-1], tgt[:, :, :, ::-1]
            xs.append(img.astype(np.float32))
            ys.append(tgt)
        return torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(ys).astype(np.float32))


def _crop(array: NDArray, start: NDArray[np.int64], size: int, fill: float) -> NDArray:
    """Cube of edge ``size`` from ``start`` (z, y, x); outside the array filled with ``fill``."""
    out = np.full((size, size, size), fill, dtype=array.dtype)
    src = [slice(max(s, 0), min(s + size, n)) for s, n in zip(start, array.shape)]
    dst = [slice(a.start - s, a.stop - s) for a, s in zip(src, start)]
    if all(a.stop > a.start for a in src):
        out[tuple(dst)] = array[tuple(src)]
    return out


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy + (1 - mean soft Dice over classes) for soft (or hard) targets.

    Parameters
    ----------
    logits
        (b, c, z, y, x) network output.
    target
        (b, c, z, y, x) class fractions summing to one per voxel, or (b, z, y, x) class indices.

    Notes
    -----
    Soft Dice as in V-Net (Milletari et al. 2016, eq. 1, with squares in the denominator):
    ``2 sum(p t) / (sum(p^2) + sum(t^2))``, summed over the batch and the patch per class
    ("batch Dice", nnU-Net), then averaged over the classes so a small bone weighs as much as
    the femur. With squares, Dice is best exactly at p = t (Cauchy-Schwarz), so it agrees with
    the cross-entropy on fractional (partial-volume) targets; without them it would push the
    probabilities to 0 / 1. A class absent from the batch and not predicted scores 1.
    """
    if target.dim() == logits.dim() - 1:
        target = F.one_hot(target.long(), logits.shape[1]).permute(0, 4, 1, 2, 3).to(logits.dtype)
    logp = torch.log_softmax(logits, dim=1)
    ce = -(target * logp).sum(dim=1).mean()
    prob = logp.exp()
    dims = (0, 2, 3, 4)
    inter = (prob * target).sum(dims)
    denom = (prob * prob).sum(dims) + (target * target).sum(dims)
    dice = (2 * inter + 1e-5) / (denom + 1e-5)
    return ce + (1.0 - dice.mean())


# ----------------------------------------------------------------------------- training


def train_from_folder(
    data_dir: str | Path,
    out_path: str | Path,
    *,
    minutes: float = 5.0,
    spacing_mm: float = DEFAULT_SPACING_MM,
    seed: int = 0,
    progress: Progress | None = None,
    base_channels: int = 8,
    levels: int = 4,
    patch_size: int = 40,
    batch_size: int = 4,
    learning_rate: float = 5e-3,
    hu_window: tuple[float, float] = DEFAULT_HU_WINDOW,
    min_iterations: int = 5,
    num_threads: int | None = None,
) -> Path:
    """Train the U-Net on every case folder under ``data_dir`` within a time budget.

    Parameters
    ----------
    data_dir
        Folder of case folders (see :func:`find_training_cases`).
    out_path
        Weights file to write (the model card goes beside it as ``<stem>.json``).
    minutes
        Wall-clock budget for the optimisation loop (reading the data comes on top).
    min_iterations
        Training runs at least this many steps, even past ``minutes`` (a tiny ``minutes`` and a
        set ``min_iterations`` give a machine-independent, reproducible run).
    spacing_mm
        Isotropic voxel size (mm) of the network's grid (default 4 mm: see
        :data:`DEFAULT_SPACING_MM`).
    seed
        Seeds the network initialisation and the patch sampling.
    progress
        Optional ``callable(step, fraction)``.
    base_channels, levels, patch_size, batch_size, learning_rate, hu_window
        Network and optimisation settings (stored in the model card). The defaults reach
        Dice >= 0.90 per knee bone on a held-out phantom after ~650 steps (5 min on 2 quiet
        cores; ``benchmarks/bench_unet.py``); ~400 steps gave 0.90-0.93.
    num_threads
        torch CPU threads (default 2).

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    InputError
        No cases, unreadable or mismatched CT / labels, bad settings.
    """
    if not minutes > 0 or not spacing_mm > 0:
        raise InputError(None, f"minutes and spacing_mm must be > 0, got {minutes}, {spacing_mm}")
    if patch_size % (2 ** (levels - 1)):
        raise InputError(None, f"patch_size {patch_size} must be divisible by {2 ** (levels - 1)} for {levels} levels")
    _torch_settings(num_threads)
    paths = find_training_cases(data_dir)
    cases, classes, side = load_training_cases(paths, spacing_mm, hu_window, progress)
    if not classes:
        raise InputError(Path(data_dir), "the training label maps name no bones")
    return train_on_cases(
        cases, classes, out_path, side=side, case_names=[str(p[0].parent) for p in paths], minutes=minutes, spacing_mm=spacing_mm,
        seed=seed, progress=progress, base_channels=base_channels, levels=levels, patch_size=patch_size, batch_size=batch_size,
        learning_rate=learning_rate, hu_window=hu_window, min_iterations=min_iterations, num_threads=num_threads,
    )  # fmt: skip


def train_on_cases(
    cases: list[TrainingCase],
    classes: dict[int, str],
    out_path: str | Path,
    *,
    side: str | None = None,
    case_names: Sequence[str] = (),
    minutes: float = 5.0,
    spacing_mm: float = DEFAULT_SPACING_MM,
    seed: int = 0,
    progress: Progress | None = None,
    base_channels: int = 8,
    levels: int = 4,
    patch_size: int = 40,
    batch_size: int = 4,
    learning_rate: float = 5e-3,
    hu_window: tuple[float, float] = DEFAULT_HU_WINDOW,
    min_iterations: int = 5,
    num_threads: int | None = None,
    flip_x: bool = False,
    card_extra: dict | None = None,
    keep_network: list | None = None,
) -> Path:
    """Train on cases already on the network's grid (:func:`training_case`); write the weights.

    Same settings as :func:`train_from_folder`; ``flip_x`` adds left-right mirrored patches
    (for side-less classes), ``card_extra`` sets more model-card fields (e.g. ``tta_flips``,
    ``refine``), ``keep_network`` (a list) receives the trained network.
    """
    if not minutes > 0 or not spacing_mm > 0:
        raise InputError(None, f"minutes and spacing_mm must be > 0, got {minutes}, {spacing_mm}")
    if patch_size % (2 ** (levels - 1)):
        raise InputError(None, f"patch_size {patch_size} must be divisible by {2 ** (levels - 1)} for {levels} levels")
    if not cases:
        raise InputError(None, "no training cases")
    _torch_settings(num_threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    arch = Architecture(num_classes=len(classes) + 1, base_channels=base_channels, levels=levels, patch_size=patch_size)
    net = build_network(arch)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-4)
    sampler = PatchSampler(cases, patch_size, arch.num_classes, rng, flip_x=flip_x)
    budget_s = minutes * 60.0
    t0, c0 = time.monotonic(), time.process_time()
    it, losses = 0, []
    with _denormals_flushed():
        while True:
            # progress through training: the time budget, stretched to reach min_iterations
            frac = min((time.monotonic() - t0) / budget_s, it / max(min_iterations, 1))
            if frac >= 1.0:
                break
            for g in opt.param_groups:  # polynomial decay in elapsed time (nnU-Net uses it per epoch)
                g["lr"] = learning_rate * max(1.0 - min(frac, 1.0), 0.02) ** 0.9
            x, y = sampler.sample(batch_size)
            opt.zero_grad(set_to_none=True)
            loss = dice_ce_loss(net(x), y)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            it += 1
            if progress is not None:
                progress("training", min(frac, 1.0))
    elapsed, cpu = time.monotonic() - t0, time.process_time() - c0
    card = ModelCard(
        classes=classes,
        side=side,
        spacing_mm=float(spacing_mm),
        hu_window=(float(hu_window[0]), float(hu_window[1])),
        architecture=arch,
        training=TrainingSummary(
            cases=list(case_names),
            iterations=it,
            seconds=round(elapsed, 1),
            cpu_seconds=round(cpu, 1),
            load_average=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            num_threads=torch.get_num_threads(),
            final_loss=float(np.mean(losses[-20:])) if losses else None,
            seed=seed,
            batch_size=batch_size,
            torch_version=torch.__version__,
            host=platform.machine(),
        ),
        created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(card_extra or {}),
    )
    net.eval()
    out = save_weights(net, card, out_path)
    if keep_network is not None:
        keep_network.append(net)
    if progress is not None:
        progress("training", 1.0)
    return out


# ----------------------------------------------------------------------------- inference


def _window_starts(lo: int, hi: int, n: int, patch: int, step: int, margin: int) -> list[int]:
    """Window starts along one axis of length ``n`` (>= ``patch``) covering ``[lo - margin, hi + margin]``.

    The span (clipped to the axis) is covered by the fewest windows whose starts are at most
    ``step`` apart, spread evenly; a span no longer than a window gets one window centred on it.
    """
    s0, s1 = max(lo - margin, 0), min(hi + 1 + margin, n)
    if s1 - s0 <= patch:
        return [int(np.clip(round(0.5 * (s0 + s1 - patch)), 0, n - patch))]
    k = int(np.ceil((s1 - s0 - patch) / step)) + 1
    return sorted({int(round(x)) for x in np.linspace(s0, s1 - patch, k)})


def gaussian_weight(patch: int, sigma_fraction: float = 0.125) -> NDArray[np.float32]:
    """Separable Gaussian blending weight of a cubic window (peak 1, nnU-Net's sigma = patch / 8)."""
    x = np.arange(patch, dtype=np.float64) - (patch - 1) / 2.0
    g = np.exp(-0.5 * (x / (sigma_fraction * patch)) ** 2)
    w = g[:, None, None] * g[None, :, None] * g[None, None, :]
    return np.maximum(w / w.max(), 1e-3).astype(np.float32)


def sliding_window_passes(
    network: nn.Module, images_zyx: Sequence[NDArray[np.float32]], patch: int, num_classes: int, *, overlap: float = INFERENCE_OVERLAP,
    progress: Progress | None = None, skip_below: float | None = None, margin: int | None = None,
) -> list[NDArray[np.float32]]:
    """Blended logits (num_classes, z, y, x) of normalised volumes of one shape (e.g. a CT and
    its test-time flips), several volumes' windows per network call.

    Window placement. Without ``skip_below`` the windows tile each whole volume. With it (a
    normalised intensity: bone), they tile the box of the volume's voxels at or above it, grown
    by ``margin`` voxels of context (default :data:`WINDOW_MARGIN`): along each axis the fewest
    windows whose starts are at most ``patch * (1 - overlap)`` apart, spread evenly (a box no
    longer than a patch gets one window centred on it); windows with no such voxel are not run.
    So the bone is seen near the windows' centres, as in training (patches centred on a bone
    voxel +- a quarter patch), not wherever windows anchored at the grid's origin put it. On the
    512 x 512 x 400 knee CT of ``benchmarks/bench_unet_shipped.py --mode speed`` the
    origin-anchored windows (26 a pass) called the tibia "hip" (femur Dice 0.47, tibia and fibula
    0); the bone-centred ones (4 a pass) name all four bones (Dice 0.91-0.95). Voxels no window
    covers are background (logits :data:`BACKGROUND_LOGIT` / 0); every voxel within ``margin``
    (per axis) of a voxel >= ``skip_below`` is covered when ``margin < patch * overlap`` (8 < 20
    by default). Each volume gets its own windows (a flipped volume's are mirrored).

    Windows are blended with :func:`gaussian_weight`; volumes smaller than a patch are padded with
    the volume's minimum (air).
    """
    if not images_zyx:
        return []
    margin = WINDOW_MARGIN if margin is None else int(margin)
    shape = np.array(images_zyx[0].shape)
    if any(im.shape != images_zyx[0].shape for im in images_zyx):
        raise InputError(None, f"sliding_window_passes needs volumes of one shape, got {[im.shape for im in images_zyx]}")
    padded_shape = np.maximum(shape, patch)
    vols = []
    for im in images_zyx:
        v = np.full(padded_shape, float(im.min()), dtype=np.float32)
        v[: shape[0], : shape[1], : shape[2]] = im
        vols.append(v)
    step = max(1, int(round(patch * (1.0 - overlap))))
    jobs = []  # (volume, window start)
    for k, v in enumerate(vols):
        if skip_below is None:
            bright = None
            starts = [_window_starts(0, int(n) - 1, int(n), patch, step, 0) for n in padded_shape]
        else:
            bright = v >= skip_below
            along = [np.flatnonzero(bright.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
            starts = [[] if len(idx) == 0 else _window_starts(int(idx[0]), int(idx[-1]), int(n), patch, step, int(margin))
                      for idx, n in zip(along, padded_shape)]  # fmt: skip
        windows = [(a, b, c) for a in starts[0] for b in starts[1] for c in starts[2]]
        if bright is not None:
            windows = [(a, b, c) for a, b, c in windows if bright[a : a + patch, b : b + patch, c : c + patch].any()]
        jobs += [(k, win) for win in windows]
    accs = [np.zeros((num_classes, *padded_shape), dtype=np.float32) for _ in vols]
    wsums = [np.zeros(padded_shape, dtype=np.float32) for _ in vols]
    w = gaussian_weight(patch)
    # Windows go through the network in batches of WINDOW_BATCH, never 1: torch's CPU
    # convolution takes a slow non-oneDNN path for a batch of one small 3D input (measured 6x
    # slower per window at 32^3), so a lone last window is sent with a copy of itself.
    with torch.inference_mode():
        for first in range(0, len(jobs), WINDOW_BATCH):
            group = jobs[first : first + WINDOW_BATCH]
            crops = [vols[k][a : a + patch, b : b + patch, c : c + patch] for k, (a, b, c) in group]
            x = torch.from_numpy(np.stack(crops + crops[:1] * (len(crops) == 1))[:, None])
            out = network(x).numpy()
            for n, (k, (a, b, c)) in enumerate(group):
                accs[k][:, a : a + patch, b : b + patch, c : c + patch] += out[n] * w
                wsums[k][a : a + patch, b : b + patch, c : c + patch] += w
            if progress is not None:
                progress("unet inference", (first + len(group)) / len(jobs))
    if progress is not None and not jobs:
        progress("unet inference", 1.0)
    out_list = []
    for acc, wsum in zip(accs, wsums):
        empty = wsum == 0
        acc /= np.where(empty, 1.0, wsum)
        if empty.any():
            acc[:, empty] = 0.0
            acc[0, empty] = BACKGROUND_LOGIT
        out_list.append(acc[:, : shape[0], : shape[1], : shape[2]])
    return out_list


def sliding_window_probabilities(
    network: nn.Module, image_zyx: NDArray[np.float32], patch: int, num_classes: int, *, overlap: float = INFERENCE_OVERLAP,
    progress: Progress | None = None, logits: bool = False, skip_below: float | None = None, margin: int | None = None,
) -> NDArray[np.float32]:
    """Softmax probabilities (num_classes, z, y, x) of a whole normalised volume: the softmax of
    the blended logits (with ``logits``: those logits); windows as in :func:`sliding_window_passes`.

    Voxels no window covers are background (probability 1, or logits :data:`BACKGROUND_LOGIT` / 0).
    """
    (lg,) = sliding_window_passes(network, [image_zyx], patch, num_classes, overlap=overlap, progress=progress, skip_below=skip_below,
                                  margin=margin)  # fmt: skip
    if logits:
        return lg
    return torch.softmax(torch.from_numpy(lg), dim=0).numpy()




def _knee_side(labels_zyx: NDArray, lps_from_ijk: NDArray[np.float64], tibia: int, fibula: int) -> str | None:
    """'right' when the fibula lies right (-x LPS) of the tibia across the tibia's axis, as
    segmentation.naming decides: the offset between their centres along the tibia (the fibula
    in view may sit higher or lower) is removed first, so a leg tilted across the field of view
    does not turn it (measured: a left leg tilted 25 deg read as right)."""
    pts = []
    for v in (tibia, fibula):
        kji = np.argwhere(labels_zyx == v)
        if len(kji) == 0:
            return None
        kji = kji[:: max(1, len(kji) // 20000)]
        pts.append(kji[:, ::-1].astype(np.float64) @ lps_from_ijk[:3, :3].T + lps_from_ijk[:3, 3])
    tib, fib = pts
    c = tib.mean(axis=0)
    axis = np.linalg.svd(tib - c, full_matrices=False)[2][0]  # the tibia's long axis
    d = fib.mean(axis=0) - c
    lateral = d - (d @ axis) * axis
    return "right" if lateral[0] < 0 else "left"


#: Pieces of a class smaller than this (mL) are dropped before naming.
MIN_PIECE_ML = 2.0
#: Classes that come in a left and a right (the sacrum is on the midline).
PAIRED = ("femur", "tibia", "fibula", "patella", "hip")


#: A piece of a paired class with at least this share of its voxels on each side of the midline
#: is two bones joined across it (both hip bones bridged at the pubic symphysis by the blur):
#: it is split at the midline. One bone reaches across it by a few per cent at most, even in a
#: patient turned 25 deg on the table (:func:`name_components`).
STRADDLE_FRACTION = 0.25
#: Lateral distance (LPS x, mm) between the centres of two large pieces of one paired class above
#: which they are two limbs, not two pieces of one bone (:func:`name_components`).
MIN_LEG_SEPARATION_MM = 80.0


def name_components(labels_zyx: NDArray[np.uint8], lps_from_ijk: NDArray[np.float64], classes: dict[int, str]) -> tuple[NDArray[np.uint8], dict[int, str], str | None, dict[int, int]]:
    """Side-less class map -> named bones (``femur`` or ``femur_left`` / ``femur_right``).

    The midline (LPS x) is the sacrum's centre when the sacrum is present, else the midpoint of
    the two largest pieces of a paired class when the second is at least 30 % of the first and
    their centres lie at least :data:`MIN_LEG_SEPARATION_MM` apart from left to right, and further
    apart from left to right than from head to foot (two legs side by side, not pieces of one
    leg). With a midline, every piece of a paired class is named by the side of its centre
    (LPS +x is the patient's left), except a piece with at least :data:`STRADDLE_FRACTION` of its
    voxels on each side, which is split at the midline (found on a synthetic pelvis: both hip
    bones in one piece were named ``hip_left``); without a midline, names stay unsuffixed (one
    limb) and the side is the fibula's side of the tibia (knee), else unknown.

    Returns
    -------
    labels, names, side, class_of
        New label map (values 1..n), value -> name, the limb's side (or None), value -> class.
    """
    full_shape = labels_zyx.shape
    if not labels_zyx.any():
        return np.zeros(full_shape, np.uint8), {}, None, {}
    # work in the labels' bounding box (its corner's LPS position shifts the matrix)
    kji = [np.flatnonzero(labels_zyx.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    crop = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in kji)
    lps_from_ijk = lps_from_ijk.copy()
    lps_from_ijk[:3, 3] = lps_from_ijk[:3, :3] @ np.array([crop[2].start, crop[1].start, crop[0].start], float) + lps_from_ijk[:3, 3]
    spacing_x = lps_from_ijk[:3, :3]
    # pieces smaller than MIN_PIECE_ML are no bone to name (and must not set a midline)
    min_vox = MIN_PIECE_ML * 1000.0 / abs(float(np.linalg.det(spacing_x)))
    labels_zyx = labels_zyx[crop].copy()
    # each class in its own box (value c's box is found[c - 1])
    found = ndi.find_objects(labels_zyx)
    box_of = {c: found[c - 1] for c in classes if 0 < c <= len(found) and found[c - 1] is not None}
    for c, b in box_of.items():
        comp, n = ndi.label(labels_zyx[b] == c)
        if n:
            sizes = np.bincount(comp.ravel())
            small = np.flatnonzero(sizes < min_vox)
            small = small[small > 0]
            if len(small):
                view = labels_zyx[b]
                view[np.isin(comp, small)] = 0

    def centre(mask: NDArray, b: tuple[slice, ...]) -> NDArray[np.float64]:
        """LPS centre (mm) of ``mask``, an array of the box ``b`` of the crop."""
        kji = np.argwhere(mask) + np.array([q.start for q in b])
        ijk = kji.mean(axis=0)[::-1]
        return spacing_x @ ijk + lps_from_ijk[:3, 3]

    def centre_x(mask: NDArray, b: tuple[slice, ...]) -> float:
        return float(centre(mask, b)[0])

    by_name = {n: c for c, n in classes.items()}
    midline: float | None = None
    c_sacrum = by_name.get("sacrum")
    if c_sacrum in box_of and (labels_zyx[box_of[c_sacrum]] == c_sacrum).any():
        midline = centre_x(labels_zyx[box_of[c_sacrum]] == c_sacrum, box_of[c_sacrum])
    else:
        for name in PAIRED:
            c = by_name.get(name)
            if c not in box_of:
                continue
            comp, n = ndi.label(labels_zyx[box_of[c]] == c)
            if n < 2:
                continue
            sizes = np.bincount(comp.ravel())[1:]
            a, b = np.argsort(-sizes)[:2] + 1
            ca, cb = centre(comp == a, box_of[c]), centre(comp == b, box_of[c])
            # two legs: two large pieces side by side; pieces of ONE broken-up bone lie above one
            # another (an adult's hips / knees are >= ~150 mm apart; MIN_LEG_SEPARATION_MM), also
            # in a leg tilted across the field of view, where they are apart from left to right
            # too (measured: 88 mm left-right, one leg tilted 25 deg, its pieces named by two sides)
            dx, dz = abs(ca[0] - cb[0]), abs(ca[2] - cb[2])
            if sizes[b - 1] >= 0.3 * sizes[a - 1] and dx >= max(MIN_LEG_SEPARATION_MM, dz):
                midline = 0.5 * (ca[0] + cb[0])
                break
    out = np.zeros(labels_zyx.shape, np.uint8)
    names: dict[int, str] = {}
    cls_of: dict[int, int] = {}

    def put(mask: NDArray, b: tuple[slice, ...], name: str, c: int) -> None:
        v = next((k for k, m in names.items() if m == name), None)
        if v is None:
            v = len(names) + 1
            names[v], cls_of[v] = name, c
        view = out[b]
        view[mask] = v

    for c, name in sorted(classes.items()):
        if c not in box_of:
            continue
        b = box_of[c]
        mask = labels_zyx[b] == c
        if not mask.any():
            continue
        if midline is None or name not in PAIRED:
            put(mask, b, name, c)
            continue
        comp, n = ndi.label(mask)
        start = np.array([q.start for q in b])
        for k, sl in enumerate(ndi.find_objects(comp), start=1):
            piece = np.zeros(mask.shape, bool)
            piece[sl] = comp[sl] == k
            kji = np.argwhere(comp[sl] == k) + np.array([q.start for q in sl])
            on_left = ((kji + start)[:, ::-1] @ spacing_x[0] + lps_from_ijk[0, 3]) > midline  # LPS x of each voxel
            share = float(on_left.mean())
            if min(share, 1.0 - share) >= STRADDLE_FRACTION:
                left = np.zeros(piece.shape, bool)
                left[tuple(kji[on_left].T)] = True
                put(left, b, f"{name}_left", c)
                put(piece & ~left, b, f"{name}_right", c)
                continue
            put(piece, b, f"{name}_{'left' if centre_x(piece, b) > midline else 'right'}", c)
    side = None
    if midline is None and "tibia" in by_name and "fibula" in by_name:
        side = _knee_side(labels_zyx, lps_from_ijk, by_name["tibia"], by_name["fibula"])
    whole = np.zeros(full_shape, np.uint8)
    whole[crop] = out
    return whole, names, side, cls_of


def network_logits(
    model: UNetModel, ct: Volume, *, overlap: float = INFERENCE_OVERLAP, progress: Progress | None = None
) -> tuple[Grid, list[NDArray[np.float32]]]:
    """The network's blended logits on its canonical grid, one array (c, z, y, x) per test-time
    pass (the plain pass, then each flip of the model card, flipped back).

    The passes share the network calls (:func:`sliding_window_passes`, :data:`WINDOW_BATCH`
    windows a call); each places its own windows around its bone (:data:`WINDOW_MARGIN`).
    """
    card = model.card
    grid = canonical_grid(ct, card.spacing_mm)
    image = ct_to_grid(ct, grid, card.hu_window)
    model.network.eval()
    flips = [None, *card.tta_flips]
    images = [np.ascontiguousarray(image[:, :, ::-1]) if flip == "x" else image for flip in flips]
    with _denormals_flushed():
        out = sliding_window_passes(model.network, images, card.architecture.patch_size, card.architecture.num_classes, overlap=overlap,
                                    progress=progress, skip_below=float(normalise_hu(np.float32(SKIP_WINDOW_BELOW_HU), card.hu_window)))
    passes = [np.ascontiguousarray(lg[:, :, :, ::-1]) if flip == "x" else lg for flip, lg in zip(flips, out)]
    return grid, passes


def tta_probabilities(passes: Sequence[NDArray[np.float32]], temperature: float) -> NDArray[np.float32]:
    """Mean over test-time passes of softmax(logits / temperature), (c, z, y, x)."""
    acc = None
    for lg in passes:
        p = torch.softmax(torch.from_numpy(lg) / float(temperature), dim=0).numpy()
        acc = p if acc is None else acc + p
    assert acc is not None
    return (acc / len(passes)).astype(np.float32)


def fit_temperature(
    samples: Sequence[tuple[Sequence[NDArray[np.float32]], NDArray[np.uint8]]], *, temperatures: Sequence[float] = tuple(np.round(np.arange(0.5, 4.01, 0.05), 2))
) -> tuple[float, dict[float, float]]:
    """Temperature scaling (Guo et al. 2017, ICML, "On calibration of modern neural networks").

    Parameters
    ----------
    samples
        Per held-out CT: its test-time logits (:func:`network_logits`) and the true class per
        coarse voxel (arg-max of :func:`soft_labels_to_grid`).

    Returns
    -------
    temperature, nll
        The temperature with the least mean negative log-likelihood over the voxels near bone
        (true or predicted bone dilated by two voxels: background far from bone would swamp it),
        and that NLL per temperature tried.
    """
    nll: dict[float, float] = {}
    for t in temperatures:
        tot, n = 0.0, 0
        for passes, truth in samples:
            p = tta_probabilities(passes, t)
            near = ndi.binary_dilation((truth > 0) | (p[0] < 0.5), iterations=2)
            pt = np.take_along_axis(p, truth[None].astype(np.int64), axis=0)[0][near]
            tot += float(-np.log(np.clip(pt, 1e-6, 1.0)).sum())
            n += int(near.sum())
        nll[float(t)] = tot / max(n, 1)
    best = min(nll, key=nll.get)
    return best, nll




@reusing_freed_memory  # large arrays reused, not page-faulted anew: orthonav.core.heap
def segment_unet(
    ct: Volume,
    weights: str | Path | UNetModel | None = None,
    *,
    overlap: float = 0.5,
    min_island_fraction: float = 0.05,
    progress: Progress | None = None,
    num_threads: int | None = None,
    scanned: Volume | None = None,
) -> Segmentation:
    """Segment ``ct`` with a trained U-Net: named bone labels and per-voxel confidence on the CT's grid.

    What the **network** decides: on its coarse canonical grid (model card ``spacing_mm``) it
    gives per-voxel class probabilities (background + side-less bones), averaged over the
    test-time flips of the card and calibrated by its ``temperature``, interpolated linearly to
    the CT's grid. It decides **which bone** a piece of bone is, whether it is sure enough to name
    it, and where two bones meet inside a piece the image does not separate.

    What the **image** decides (card ``refine = "image-edge"``, :func:`probabilities_to_labels`):
    **where bone is and its surface**, by the classical backend's physics at the image's own HU
    levels (:func:`image_bone_mask`: cortex seeds grown into the bone they enclose, cavities
    filled, the surface at the local edge level), and which voxels belong to one connected
    piece, so a piece the network labels mostly one bone is that bone as a whole; each bone is
    then peeled to its local edge level with the other bones counting as outside (joints).
    Image bone the network does not reach, bone around which the network's own bone mostly
    misses the image's bone (agreement < :data:`MIN_AGREEMENT`: it does not recognise the
    anatomy), and a bone whose name the network is sure of (calibrated p >=
    :data:`SURE_PROBABILITY`) on less than :data:`MIN_SURE_FRACTION` of its voxels, stay bone but
    are **not named**: ``bone_<n>``, with the withheld name's mean
    probability as the table's confidence and the reason in ``why`` and the notes (e.g. the
    vertebrae and ribs of a thorax CT, for which the model has no class). Without refinement a
    voxel's label is the network's arg-max.

    Confidence of a voxel = the calibrated probability the network gives its label: its bone
    for a named bone, bone at all (1 - p(background)) for an unnamed one, background elsewhere
    (so image bone the network did not call bone has a low confidence), then put through the
    card's ``confidence_map`` when it has one (a monotone map fitted on held-out draws from that
    probability to the share of voxels whose final label is right:
    :mod:`~orthonav.segmentation.unet_calibration`). The named classes are
    given sides (:func:`name_components`); labels.json's per-bone confidence is the confidence of
    the bone's name: the mean over its voxels of the probability before that map (the naming's
    thresholds and warnings were measured on it).

    Parameters
    ----------
    ct
        CT in HU (any direction / anisotropic spacing).
    weights
        Weights file, a :class:`UNetModel`, or None for the model shipped with OrthoNav
        (:data:`SHIPPED_WEIGHTS`).
    overlap
        Sliding-window overlap as a fraction of the patch edge (0 <= overlap < 1).
    min_island_fraction
        Parts of a bone smaller than this fraction of its largest part take the bone around them
        (refined) or are removed (not refined).
    progress
        Optional ``callable(step, fraction)``.
    num_threads
        torch CPU threads (default 2).
    scanned
        Coverage mask on the CT grid (non-zero = scanned) of a study imported from several
        stacks, or None (all scanned): the anatomy check then sees where a piece is cut by an
        unscanned gap, as the classical naming does (:func:`withhold_against_anatomy`).

    Returns
    -------
    Segmentation
        uint8 labels and float32 confidence (0..1), both with ``lps_from_ijk`` equal to the
        CT's; table with the bones (named, then ``bone_<n>``), backend "unet"; notes name bones
        of low mean confidence and say why each ``bone_<n>`` is not named.

    Raises
    ------
    InputError
        An unusable weights file; no shipped model when none is given; a ``scanned`` mask not on
        the CT's grid.
    """
    if not 0.0 <= overlap < 1.0:
        raise InputError(None, f"overlap must be in [0, 1), got {overlap}")
    if weights is None:
        if not SHIPPED_WEIGHTS.is_file():
            raise InputError(SHIPPED_WEIGHTS, "the unet backend needs a weights file (--weights W) and the shipped model is missing; "
                                              "train one with 'orthonav train-seg --synthetic OUT'")
        weights = SHIPPED_WEIGHTS
    model = weights if isinstance(weights, UNetModel) else load_model(weights)
    _torch_settings(num_threads)
    card = model.card
    nc = card.architecture.num_classes
    if progress is not None:
        progress("unet resampling", 0.0)
    grid, passes = network_logits(model, ct, overlap=overlap, progress=progress)
    prob = tta_probabilities(passes, card.temperature)
    del passes
    left_out: list[str] = []
    labels, conf, abstained = probabilities_to_labels(ct, grid, prob, refine=card.refine == "image-edge", min_island_fraction=min_island_fraction,
                                                      progress=progress, classes=card.classes, left_out=left_out)
    if card.refine == "image-edge":  # a name the anatomy contradicts is withheld (noted with the unnamed pieces below)
        withhold_against_anatomy(labels, ct, card.classes, abstained, conf, grid, prob, scanned=scanned)
    # per-bone figures in the labels' bounding box
    nz = [np.flatnonzero(labels.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    crop = tuple(slice(int(i[0]), int(i[-1]) + 1) if len(i) else slice(0, 0) for i in nz)
    named, names, side, cls_of = name_components(np.where(labels < nc, labels, 0).astype(np.uint8) if abstained else labels, ct.lps_from_ijk, card.classes)
    side = side or card.side
    is_bone = named[crop] > 0
    counts = np.bincount(named[crop][is_bone], minlength=256)
    sums = np.bincount(named[crop][is_bone], weights=conf[crop][is_bone], minlength=256)
    # A bone's confidence is its name's: the mean temperature-scaled probability of that bone
    # over its voxels (before the voxel map below, which is fitted to the share of voxels whose
    # label is right, not to whether a whole bone's name is).
    mean_conf = {v: float(sums[v] / max(counts[v], 1)) for v in names}
    conf = apply_confidence_map(conf, card.confidence_map, out=conf if conf.dtype == np.float32 and conf.flags.c_contiguous else None)  # each voxel: P(its label is right), recalibrated (card)
    notes = [
        f"low confidence: {n} name confidence {mean_conf[v]:.2f} < {card.low_confidence:.2f} (mean probability of that bone over its voxels); check it before planning"
        for v, n in names.items() if mean_conf[v] < card.low_confidence
    ]  # fmt: skip
    why = {v: f"U-Net class '{card.classes[cls_of[v]]}': mean temperature-scaled probability of the class over the bone's voxels" for v in names}
    # Unnamed image bone (:class:`Abstained`): kept as bone_<n>, largest first, with the
    # confidence of the name withheld and the reason.
    if abstained:
        vols = np.bincount(labels[crop].ravel(), minlength=256)
        lut = np.zeros(256, np.uint8)
        for n_, v in enumerate(sorted(abstained, key=lambda v: -vols[v]), start=1):
            if len(names) >= 255:
                break
            value = len(names) + 1
            names[value] = f"bone_{n_}"
            lut[v] = value
            mean_conf[value] = abstained[v].confidence
            why[value] = abstained[v].why
            notes.append(f"bone_{n_} ({vols[v] * float(np.prod(ct.spacing_mm)) / 1000.0:.1f} mL) not named: {abstained[v].why}")
        sub, lab_c = named[crop], labels[crop]
        unnamed = lab_c >= nc
        sub[unnamed] = lut[lab_c[unnamed]]
    notes.extend(left_out)
    table = LabelTable(labels=names, backend="unet", side=side, confidence=mean_conf, why=why)
    return Segmentation(Volume(named, ct.lps_from_ijk.copy()), table, Volume(conf, ct.lps_from_ijk.copy()), tuple(notes))


def update_card(path: str | Path, **fields: object) -> Path:
    """Rewrite a weights file (and its JSON card) with model-card ``fields`` changed; the card
    is written at this OrthoNav's schema version."""
    model = load_model(path)
    card = model.card.model_copy(update={**fields, "schema_version": ModelCard.SCHEMA_VERSION})
    card = ModelCard.model_validate(card.model_dump(mode="json"))
    return save_weights(model.network, card, path)


__all__ = [
    "PAIRED",
    "REFINEMENTS",
    "SHIPPED_WEIGHTS",
    "image_bone_mask",
    "Abstained",
    "fit_temperature",
    "name_components",
    "network_logits",
    "probabilities_to_labels",
    "train_on_cases",
    "training_case",
    "tta_probabilities",
    "update_card",
    "Architecture",
    "Grid",
    "ModelCard",
    "UNet3D",
    "UNetModel",
    "build_network",
    "canonical_direction",
    "canonical_grid",
    "card_path_for",
    "dice_ce_loss",
    "find_training_cases",
    "gaussian_weight",
    "load_model",
    "save_weights",
    "segment_unet",
    "sliding_window_passes",
    "sliding_window_probabilities",
    "soft_labels_to_grid",
    "train_from_folder",
]
