"""Optical tracking with ArUco markers (OpenCV 5): calibration, rigid-body poses, a source.

Frames and units
----------------
The "tracker" frame of this source is the camera frame (OpenCV convention: x right, y down,
z forward along the optical axis), in mm. A tool is a rigid body of one or more square
markers; ``ToolDefinition.markers`` maps an ArUco id to its 4 corners in the tool frame (mm)
in OpenCV's corner order (top-left, top-right, bottom-right, bottom-left as the marker is
read). So ``tracker_from_tool`` = ``camera_from_tool``.

Pose estimation
---------------
Corners are detected with sub-pixel refinement (``CORNER_REFINE_SUBPIX``). For every visible
marker, IPPE-square (Collins & Bartoli 2014, "Infinitesimal Plane-Based Pose Estimation",
IJCV 109(3)) gives ``camera_from_marker``; composed with the marker's known place in the tool,
each is a candidate ``camera_from_tool``. The candidate with the lowest reprojection error
over all the tool's corners seeds an iterative Levenberg-Marquardt refinement over all
corners (``cv2.solvePnPRefineLM``). ``quality`` is the RMS reprojection error (px).

Camera calibration
------------------
Zhang's method (Zhang 2000, "A flexible new technique for camera calibration", IEEE TPAMI
22(11)) on ChArUco corners (``cv2.aruco.CharucoDetector`` + ``cv2.calibrateCamera``).
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import ArrayLike, NDArray

from orthonav.core.errors import InputError, TrackingError
from orthonav.core.procrustes import paired_point
from orthonav.core.schema import Versioned, load_model, save_model
from orthonav.core.transforms import invert, make_rigid

from .store import PoseStore, StoreBackedSource
from .tools import ToolSet

log = logging.getLogger(__name__)

DEFAULT_DICTIONARY = "DICT_5X5_100"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def get_dictionary(name: str) -> cv2.aruco.Dictionary:
    """An OpenCV predefined ArUco dictionary by name (e.g. ``DICT_5X5_100``)."""
    code = getattr(cv2.aruco, name, None)
    if not name.startswith("DICT_") or not isinstance(code, int):
        raise InputError(None, f"unknown ArUco dictionary '{name}'")
    return cv2.aruco.getPredefinedDictionary(code)


# --- camera calibration ---------------------------------------------------------------------


class CameraCalibrationFile(Versioned):
    """A camera calibration file (JSON)."""

    SCHEMA_VERSION = 1
    camera_matrix: list[list[float]]
    dist_coeffs: list[float]
    image_size: tuple[int, int]  # (width, height) px
    rms_px: float
    n_images: int
    calibration_date: str
    board: dict[str, float | int | str] = {}


@dataclass(frozen=True)
class CameraCalibration:
    """Pinhole camera with OpenCV distortion.

    Attributes
    ----------
    camera_matrix
        (3, 3) intrinsics K (px).
    dist_coeffs
        (k,) OpenCV distortion coefficients (k1, k2, p1, p2, k3, ...).
    image_size
        (width, height) in px.
    rms_px
        Calibration RMS reprojection error (px); NaN if not from a calibration.
    """

    camera_matrix: NDArray[np.float64]
    dist_coeffs: NDArray[np.float64]
    image_size: tuple[int, int]
    rms_px: float = math.nan
    n_images: int = 0


def save_camera_calibration(path: str | Path, cal: CameraCalibration, *, board: dict | None = None) -> Path:
    """Atomically write a calibration as JSON."""
    doc = CameraCalibrationFile(
        camera_matrix=np.asarray(cal.camera_matrix, dtype=float).tolist(),
        dist_coeffs=np.asarray(cal.dist_coeffs, dtype=float).ravel().tolist(),
        image_size=(int(cal.image_size[0]), int(cal.image_size[1])),
        rms_px=float(cal.rms_px),
        n_images=int(cal.n_images),
        calibration_date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        board=board or {},
    )
    return save_model(path, doc)


def load_camera_calibration(path: str | Path) -> CameraCalibration:
    """Read a calibration written by :func:`save_camera_calibration`."""
    doc = load_model(path, CameraCalibrationFile)
    k = np.asarray(doc.camera_matrix, dtype=np.float64)
    if k.shape != (3, 3):
        raise InputError(Path(path), f"camera_matrix must be 3x3, got {k.shape}")
    return CameraCalibration(k, np.asarray(doc.dist_coeffs, dtype=np.float64), tuple(doc.image_size), doc.rms_px, doc.n_images)


@dataclass(frozen=True)
class CharucoBoardSpec:
    """A ChArUco board: squares (x, y), square and marker side (mm), dictionary name."""

    squares: tuple[int, int] = (7, 5)
    square_mm: float = 30.0
    marker_mm: float = 22.0
    dictionary: str = DEFAULT_DICTIONARY

    def board(self) -> cv2.aruco.CharucoBoard:
        """The OpenCV board object."""
        return cv2.aruco.CharucoBoard(self.squares, self.square_mm, self.marker_mm, get_dictionary(self.dictionary))

    def to_dict(self) -> dict[str, float | int | str]:
        """The board as stored in a camera calibration file (``CameraCalibrationFile.board``)."""
        return {"squares_x": self.squares[0], "squares_y": self.squares[1], "square_mm": self.square_mm,
                "marker_mm": self.marker_mm, "dictionary": self.dictionary}


def _read_gray(image: ArrayLike | str | Path) -> NDArray[np.uint8]:
    if isinstance(image, (str, Path)):
        img = cv2.imread(str(image), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise InputError(Path(image), "cannot be read as an image")
        return img
    img = np.asarray(image)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if img.dtype != np.uint8:
        raise InputError(None, f"images must be 8-bit, got {img.dtype}")
    return img


def calibrate_camera(
    images: Iterable[ArrayLike | str | Path],
    *,
    board: CharucoBoardSpec = CharucoBoardSpec(),
    min_images: int = 5,
    min_corners: int = 8,
) -> CameraCalibration:
    """Calibrate a camera from ChArUco board images (files or arrays).

    Raises
    ------
    InputError
        Images of different sizes, or fewer than ``min_images`` images where at least
        ``min_corners`` board corners were found.
    """
    b = board.board()
    det = cv2.aruco.CharucoDetector(b)
    obj_all, img_all = [], []
    size = None
    for image in images:
        gray = _read_gray(image)
        if size is None:
            size = (gray.shape[1], gray.shape[0])
        elif size != (gray.shape[1], gray.shape[0]):
            raise InputError(image if isinstance(image, (str, Path)) else None, f"image size {gray.shape[::-1]} differs from the first image's {size}")
        corners, ids, _mc, _mi = det.detectBoard(gray)
        if ids is None or len(ids) < min_corners:
            continue
        obj, img = b.matchImagePoints(corners, ids)
        if obj is None or len(obj) < min_corners:
            continue
        obj_all.append(obj.astype(np.float32))
        img_all.append(img.astype(np.float32))
    if size is None or len(obj_all) < min_images:
        raise InputError(None, f"camera calibration needs >= {min_images} images showing the ChArUco board; found it in {len(obj_all)}")
    rms, k, dist, _r, _t = cv2.calibrateCamera(obj_all, img_all, size, None, None)
    return CameraCalibration(np.asarray(k, dtype=np.float64), np.asarray(dist, dtype=np.float64).ravel(), size, float(rms), len(obj_all))


# --- marker rigid bodies --------------------------------------------------------------------


def square_marker_corners(side_mm: float) -> NDArray[np.float64]:
    """(4, 3) corners of a marker in its own frame, in the order IPPE-square expects."""
    h = side_mm / 2.0
    return np.array([[-h, h, 0.0], [h, h, 0.0], [h, -h, 0.0], [-h, -h, 0.0]])


@dataclass(frozen=True)
class _MarkerModel:
    corners_tool_mm: NDArray[np.float64]  # (4, 3)
    tool_from_marker: NDArray[np.float64]  # (4, 4)
    side_mm: float


def _marker_models(tool_markers: dict[int, list], tool: str) -> dict[int, _MarkerModel]:
    out = {}
    for mid, corners in tool_markers.items():
        c = np.asarray(corners, dtype=np.float64)
        if c.shape != (4, 3):
            raise InputError(None, f"tool '{tool}': marker {mid} needs 4 corners (x, y, z mm), got {c.shape}")
        side = float(np.mean(np.linalg.norm(c - np.roll(c, -1, axis=0), axis=1)))
        reg = paired_point(c, square_marker_corners(side))
        if reg.fre_mm > 0.02 * side:
            raise InputError(None, f"tool '{tool}': marker {mid} corners are not a square (off by {reg.fre_mm:.2f} mm)")
        out[int(mid)] = _MarkerModel(c, reg.fixed_from_moving, side)
    return out


def _to_matrix(rvec: NDArray, tvec: NDArray) -> NDArray[np.float64]:
    """OpenCV (rvec, tvec) -> 4x4 ``camera_from_x``."""
    return make_rigid(cv2.Rodrigues(np.asarray(rvec, dtype=np.float64))[0], np.asarray(tvec, dtype=np.float64).ravel())


@dataclass(frozen=True)
class ToolDetection:
    """Pose of one tool in one image: ``camera_from_tool`` (mm) and RMS reprojection (px)."""

    camera_from_tool: NDArray[np.float64]
    reprojection_px: float
    markers: tuple[int, ...]


class ArucoTracker:
    """Detects marker tools in images.

    Parameters
    ----------
    toolset
        Tools; only those with ``markers`` are tracked. Marker ids must be unique across tools.
    calibration
        The camera.
    dictionary
        ArUco dictionary name.
    """

    def __init__(self, toolset: ToolSet, calibration: CameraCalibration, *, dictionary: str = DEFAULT_DICTIONARY) -> None:
        params = cv2.aruco.DetectorParameters()
        params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
        params.cornerRefinementWinSize = 5
        params.cornerRefinementMinAccuracy = 0.01
        params.cornerRefinementMaxIterations = 50
        self.detector = cv2.aruco.ArucoDetector(get_dictionary(dictionary), params)
        self.calibration = calibration
        self.k = np.asarray(calibration.camera_matrix, dtype=np.float64)
        self.dist = np.asarray(calibration.dist_coeffs, dtype=np.float64)
        self.tools: dict[str, dict[int, _MarkerModel]] = {}
        owner: dict[int, str] = {}
        for t in toolset.tools:
            if not t.markers:
                continue
            models = _marker_models(t.markers, t.name)
            for mid in models:
                if mid in owner:
                    raise InputError(None, f"ArUco id {mid} is used by both '{owner[mid]}' and '{t.name}'")
                owner[mid] = t.name
            self.tools[t.name] = models
        if not self.tools:
            raise InputError(None, "no tool in the tool file has ArUco markers")

    def detect_markers(self, image: ArrayLike) -> dict[int, NDArray[np.float64]]:
        """Marker id -> (4, 2) refined image corners (px)."""
        gray = _read_gray(image)
        corners, ids, _rej = self.detector.detectMarkers(gray)
        if ids is None:
            return {}
        return {int(i): np.asarray(c, dtype=np.float64).reshape(4, 2) for i, c in zip(ids.ravel(), corners)}

    def _reproj(self, obj: NDArray, img: NDArray, pose: NDArray[np.float64]) -> float:
        rvec = cv2.Rodrigues(pose[:3, :3])[0]
        proj, _ = cv2.projectPoints(obj, rvec, pose[:3, 3], self.k, self.dist)
        return float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - img) ** 2, axis=1))))

    def estimate(self, markers: dict[int, NDArray[np.float64]]) -> dict[str, ToolDetection | None]:
        """Pose of every tool from detected marker corners (None: no marker of it seen)."""
        out: dict[str, ToolDetection | None] = {}
        for name, models in self.tools.items():
            seen = [mid for mid in models if mid in markers]
            if not seen:
                out[name] = None
                continue
            obj = np.concatenate([models[m].corners_tool_mm for m in seen])
            img = np.concatenate([markers[m] for m in seen])
            best, best_err = None, math.inf
            for mid in seen:
                ok, rvecs, tvecs, _errs = cv2.solvePnPGeneric(
                    square_marker_corners(models[mid].side_mm), markers[mid], self.k, self.dist, flags=cv2.SOLVEPNP_IPPE_SQUARE
                )
                if not ok:
                    continue
                for rv, tv in zip(rvecs, tvecs):  # IPPE returns both planar solutions
                    cand = _to_matrix(rv, tv) @ invert(models[mid].tool_from_marker)
                    err = self._reproj(obj, img, cand)
                    if err < best_err:
                        best, best_err = cand, err
            if best is None:
                out[name] = None
                continue
            rvec = cv2.Rodrigues(best[:3, :3])[0]
            tvec = best[:3, 3].reshape(3, 1).copy()
            rvec, tvec = cv2.solvePnPRefineLM(obj, img, self.k, self.dist, rvec, tvec)
            pose = _to_matrix(rvec, tvec)
            out[name] = ToolDetection(pose, self._reproj(obj, img, pose), tuple(seen))
        return out

    def track(self, image: ArrayLike) -> dict[str, ToolDetection | None]:
        """Detect markers and estimate every tool's pose in one image."""
        return self.estimate(self.detect_markers(image))


# --- frame sources and the TrackerSource ----------------------------------------------------


class _Frames:
    """Frames from a camera index, a video file or a folder of images: (image, device time s)."""

    def __init__(self, spec: str | int | Path, fps: float) -> None:
        self.spec = spec
        self.fps = fps
        self.cap = None
        self.files: list[Path] = []
        self.i = 0
        p = Path(str(spec))
        if isinstance(spec, int) or str(spec).isdigit():
            self.cap = cv2.VideoCapture(int(spec))
            self.live = True
        elif p.is_dir():
            self.files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not self.files:
                raise InputError(p, "folder has no images (.png, .jpg, ...)")
            self.live = False
        elif p.is_file():
            self.cap = cv2.VideoCapture(str(p))
            self.live = False
        else:
            raise InputError(p, "camera / video / image folder not found")
        if self.cap is not None and not self.cap.isOpened():
            raise TrackingError(f"cannot open camera or video '{spec}'")

    def read(self) -> tuple[NDArray[np.uint8], float] | None:
        if self.files:
            if self.i >= len(self.files):
                return None
            i = self.i
            self.i += 1  # first: an unreadable file is skipped, not retried forever
            return _read_gray(self.files[i]), i / self.fps
        assert self.cap is not None
        ok, img = self.cap.read()
        if not ok:
            return None
        t = time.time() if self.live else self.cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        return img, t

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()


class ArucoSource(StoreBackedSource):
    """A :class:`TrackerSource` tracking marker tools in a camera / video / image folder.

    Files are processed as fast as possible; a folder's frames are timed at ``fps``.
    ``quality`` is the RMS reprojection error (px).
    """

    def __init__(self, device: str | int | Path, toolset: ToolSet, calibration: CameraCalibration, *, dictionary: str = DEFAULT_DICTIONARY, fps: float = 30.0) -> None:
        super().__init__(PoseStore(toolset.timeouts_s()))
        self.tracker = ArucoTracker(toolset, calibration, dictionary=dictionary)
        self.device = device
        self.fps = fps
        self.finished = threading.Event()
        self._frames: _Frames | None = None

    _thread_name = "aruco"

    def _open(self) -> None:
        self._frames = _Frames(self.device, self.fps)
        self.finished.clear()

    def _close(self) -> None:
        if self._frames is not None:
            self._frames.close()

    def _run(self) -> None:
        assert self._frames is not None
        try:
            while not self._stop.is_set():
                try:
                    got = self._frames.read()
                    if got is None:
                        break
                    img, t = got
                    now = time.monotonic()
                    detections = self.tracker.track(img)
                except (InputError, cv2.error) as e:  # one bad frame: count it, go on with the next
                    self.store.mark_error(f"ArUco frame skipped: {e}", bad_message=True)
                    continue
                with self.store.batch():  # one camera frame: consumers wake once, with every tool of it
                    for name, det in detections.items():
                        if det is None:
                            self.store.put(name, None, device_time_s=t, host_time_s=now)
                        else:
                            self.store.put(name, det.camera_from_tool, device_time_s=t, quality=det.reprojection_px, host_time_s=now)
        except Exception as e:  # anything else ends tracking, loudly: health says why
            log.exception("ArUco tracking failed")
            self.store.mark_error(f"ArUco tracking failed: {e!r}")
        finally:
            self.finished.set()
            self.store.set_connected(False)


# --- synthetic rendering (tests, benchmarks, demos) -----------------------------------------


def render_plate(
    markers: dict[int, Sequence[Sequence[float]]],
    camera_from_tool: ArrayLike,
    calibration: CameraCalibration,
    *,
    dictionary: str = DEFAULT_DICTIONARY,
    px_per_mm: float = 8.0,
    background: int = 90,
    blur_sigma_px: float = 0.6,
    noise_px: float = 2.0,
    seed: int = 0,
) -> NDArray[np.uint8]:
    """Render flat markers (tool frame z = 0, each with a white quiet zone on a white plate)
    seen by a distortion-free camera at ``camera_from_tool``: a textured plane warped with
    its exact homography, then blurred and with Gaussian pixel noise."""
    d = get_dictionary(dictionary)
    allc = np.concatenate([np.asarray(c, dtype=np.float64) for c in markers.values()])
    if np.abs(allc[:, 2]).max() > 1e-9:
        raise InputError(None, "render_plate draws flat plates only (all marker corners at z = 0)")
    lo = allc[:, :2].min(axis=0) - 10.0
    hi = allc[:, :2].max(axis=0) + 10.0
    w, h = np.ceil((hi - lo) * px_per_mm).astype(int)
    plate = np.full((h, w), 255, np.uint8)
    bits = d.markerSize + 2

    def to_px(p: NDArray) -> NDArray:  # tool (x, y) mm -> plate px (y up in tool = row up)
        return np.stack([(p[:, 0] - lo[0]) * px_per_mm - 0.5, (hi[1] - p[:, 1]) * px_per_mm - 0.5], axis=1)

    for mid, corners in markers.items():
        c = np.asarray(corners, dtype=np.float64)
        side_px = int(round(np.linalg.norm(c[1] - c[0]) * px_per_mm))
        tile = cv2.aruco.generateImageMarker(d, int(mid), bits * max(1, side_px // bits))
        s = tile.shape[0]
        src = np.float32([[-0.5, -0.5], [s - 0.5, -0.5], [s - 0.5, s - 0.5], [-0.5, s - 0.5]])  # pixel edges
        hm = cv2.getPerspectiveTransform(src, np.float32(to_px(c)))
        warped = cv2.warpPerspective(tile, hm, (w, h), flags=cv2.INTER_NEAREST, borderValue=255)
        mask = cv2.warpPerspective(np.full_like(tile, 255), hm, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
        plate[mask > 0] = warped[mask > 0]
    return render_texture(plate, (lo[0], hi[1]), 1.0 / px_per_mm, camera_from_tool, calibration,
                          background=background, blur_sigma_px=blur_sigma_px, noise_px=noise_px, seed=seed)


def render_texture(
    texture: NDArray[np.uint8],
    top_left_mm: tuple[float, float],
    mm_per_px: float,
    camera_from_plane: ArrayLike,
    calibration: CameraCalibration,
    *,
    background: int = 90,
    blur_sigma_px: float = 0.6,
    noise_px: float = 2.0,
    seed: int = 0,
) -> NDArray[np.uint8]:
    """Render a flat texture lying in the plane z = 0 of a frame at ``camera_from_plane``.

    Texture column u / row v covers plane x = x0 + u * mm_per_px, y = y0 - v * mm_per_px
    (rows go down the plane's y axis). Exact homography at 3x supersampling, area-averaged
    down, then Gaussian blur and pixel noise. No lens distortion.
    """
    h, w = texture.shape[:2]
    x0, y0 = top_left_mm
    width, height = calibration.image_size
    ss = 3  # supersample, then area-average down: no aliasing on the marker edges
    k_ss = np.asarray(calibration.camera_matrix, dtype=np.float64).copy()
    k_ss[:2, :] *= ss
    k_ss[:2, 2] += (ss - 1) / 2.0  # pixel centres: x_ss = ss * x + (ss - 1) / 2
    x1, y1 = x0 + w * mm_per_px, y0 - h * mm_per_px
    corners_mm = np.array([[x0, y0, 0], [x1, y0, 0], [x1, y1, 0], [x0, y1, 0]])
    pose = np.asarray(camera_from_plane, dtype=np.float64)
    cam = corners_mm @ pose[:3, :3].T + pose[:3, 3]
    if np.any(cam[:, 2] <= 1.0):
        raise InputError(None, "the plane is behind or at the camera")
    proj = cam @ k_ss.T
    img_pts = proj[:, :2] / proj[:, 2:3]
    # texture pixel (u, v) covers [u - 0.5, u + 0.5): its outer edges map to the plane corners
    src = np.float32([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])
    hm = cv2.getPerspectiveTransform(src, np.float32(img_pts))
    big = cv2.warpPerspective(texture, hm, (width * ss, height * ss), flags=cv2.INTER_LINEAR, borderValue=background)
    frame = cv2.resize(big, (width, height), interpolation=cv2.INTER_AREA)
    frame = frame.astype(np.float64)
    if blur_sigma_px > 0:
        frame = cv2.GaussianBlur(frame, (0, 0), blur_sigma_px)
    if noise_px > 0:
        frame += np.random.default_rng(seed).normal(0.0, noise_px, frame.shape)
    return np.clip(frame, 0, 255).astype(np.uint8)


def calibration_images(spec: str | int | Path, *, max_images: int = 40, camera_seconds: float = 30.0, camera_interval_s: float = 0.5) -> list[NDArray[np.uint8]]:
    """Frames for :func:`calibrate_camera` from a folder (all images, evenly thinned to
    ``max_images``), a video file (evenly spaced frames) or a camera index (one frame every
    ``camera_interval_s`` for up to ``camera_seconds``; move the board between frames)."""
    frames = _Frames(spec, fps=30.0)
    out: list[NDArray[np.uint8]] = []
    try:
        if frames.files:
            step = max(1, len(frames.files) // max_images)
            return [_read_gray(f) for f in frames.files[::step][:max_images]]
        assert frames.cap is not None
        if not frames.live:
            total = int(frames.cap.get(cv2.CAP_PROP_FRAME_COUNT)) or max_images
            step = max(1, total // max_images)
            i = 0
            while len(out) < max_images:
                got = frames.read()
                if got is None:
                    break
                if i % step == 0:
                    out.append(_read_gray(got[0]))
                i += 1
            return out
        t_end = time.monotonic() + camera_seconds
        next_t = 0.0
        while time.monotonic() < t_end and len(out) < max_images:
            got = frames.read()
            if got is None:
                raise TrackingError(f"camera '{spec}' stopped delivering frames")
            if time.monotonic() >= next_t:
                out.append(_read_gray(got[0]))
                next_t = time.monotonic() + camera_interval_s
        return out
    finally:
        frames.close()


def calibrate_camera_to_file(source: str | int | Path, out: str | Path, *,
                             board: CharucoBoardSpec = CharucoBoardSpec()) -> tuple[CameraCalibration, int]:
    """Calibrate a camera from ChArUco views and write the calibration file ``out``.

    Parameters
    ----------
    source
        A camera index, a video file or a folder of images (see :func:`calibration_images`).
    out
        The camera calibration JSON to write (atomically), with the board's description.
    board
        The ChArUco board shown in the views.

    Returns
    -------
    tuple[CameraCalibration, int]
        The calibration (``n_images``: views where the board was found) and the number of
        images read.
    """
    images = calibration_images(source)
    cal = calibrate_camera(images, board=board)
    save_camera_calibration(out, cal, board=board.to_dict())
    return cal, len(images)
