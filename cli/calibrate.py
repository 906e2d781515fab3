"""``orthonav calibrate-camera``: calibrate a camera from ChArUco views and say how well it went."""

from __future__ import annotations

from pathlib import Path

from orthonav.tracking.aruco import CharucoBoardSpec, calibrate_camera_to_file


def calibrate_camera_cli(source: str | Path, out: str | Path, *, board: CharucoBoardSpec = CharucoBoardSpec()) -> str:
    """``orthonav calibrate-camera SOURCE OUT``: calibrate from ChArUco views, write OUT and
    return the summary line.

    ``SOURCE`` is a camera index, a video file or a folder of images
    (:func:`orthonav.tracking.aruco.calibrate_camera_to_file`).
    """
    cal, n_read = calibrate_camera_to_file(source, out, board=board)
    k = cal.camera_matrix
    return (
        f"calibrated from {cal.n_images} of {n_read} images: RMS {cal.rms_px:.3f} px, "
        f"fx {k[0, 0]:.1f} fy {k[1, 1]:.1f} cx {k[0, 2]:.1f} cy {k[1, 2]:.1f} px; wrote {out}"
    )


__all__ = ["calibrate_camera_cli"]
