"""ArUco tracking on rendered frames with known pose, ChArUco camera calibration, the source."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from orthonav.core.errors import InputError
from orthonav.core.transforms import make_rigid, rotation_about_axis, rotation_angle_deg
from orthonav.cli.calibrate import calibrate_camera_cli
from orthonav.tracking import (
    ArucoSource,
    ArucoTracker,
    CameraCalibration,
    CharucoBoardSpec,
    ToolDefinition,
    ToolSet,
    ToolStatus,
    calibrate_camera,
    load_camera_calibration,
    render_plate,
    render_texture,
    save_camera_calibration,
)

K = np.array([[1000.0, 0.0, 639.5], [0.0, 1000.0, 359.5], [0.0, 0.0, 1.0]])
CAL = CameraCalibration(K, np.zeros(5), (1280, 720))
FACING = np.diag([1.0, -1.0, -1.0])  # tool z towards the camera, tool y up in the image


def square(cx: float, cy: float, side: float) -> list[tuple[float, float, float]]:
    h = side / 2
    return [(cx - h, cy + h, 0.0), (cx + h, cy + h, 0.0), (cx + h, cy - h, 0.0), (cx - h, cy - h, 0.0)]


PLATE = {0: square(-30, 30, 40), 1: square(30, 30, 40), 2: square(30, -30, 40), 3: square(-30, -30, 40)}
TOOLS = ToolSet(tools=[ToolDefinition(name="Plate", kind="reference", markers=PLATE),
                       ToolDefinition(name="Pointer", kind="pointer", markers={7: square(0, 0, 50)})])


def random_pose(rng: np.random.Generator, depth_mm: float = 300.0) -> np.ndarray:
    r = FACING @ rotation_about_axis(rng.normal(size=3), np.radians(rng.uniform(0, 35)))
    return make_rigid(r, [rng.uniform(-60, 60), rng.uniform(-40, 40), depth_mm])


def test_pose_accuracy_on_rendered_frames_at_300_mm():
    tracker = ArucoTracker(TOOLS, CAL)
    rng = np.random.default_rng(0)
    rot, trans, reproj = [], [], []
    for i in range(15):
        pose = random_pose(rng)
        det = tracker.track(render_plate(PLATE, pose, CAL, seed=i))["Plate"]
        assert det is not None and det.markers == (0, 1, 2, 3)
        rot.append(rotation_angle_deg(det.camera_from_tool, pose))
        trans.append(np.linalg.norm(det.camera_from_tool[:3, 3] - pose[:3, 3]))
        reproj.append(det.reprojection_px)
    # acceptance: median rotation < 0.3 deg, translation < 1 mm at 300 mm (measured ~0.03 deg, ~0.15 mm)
    assert np.median(rot) < 0.3 and np.median(trans) < 1.0, (np.median(rot), np.median(trans))
    assert max(reproj) < 0.5


def test_single_marker_tool_and_invisible_tool():
    tracker = ArucoTracker(TOOLS, CAL)
    rng = np.random.default_rng(1)
    rot, trans = [], []
    for i in range(10):
        pose = random_pose(rng)
        out = tracker.track(render_plate({7: square(0, 0, 50)}, pose, CAL, seed=i))
        assert out["Plate"] is None  # not in view: no pose, never a stale one
        det = out["Pointer"]
        rot.append(rotation_angle_deg(det.camera_from_tool, pose))
        trans.append(np.linalg.norm(det.camera_from_tool[:3, 3] - pose[:3, 3]))
    assert np.median(rot) < 0.5 and np.median(trans) < 1.0, (np.median(rot), np.median(trans))


def test_bad_tool_definitions_are_rejected():
    with pytest.raises(InputError, match="used by both"):
        ArucoTracker(ToolSet(tools=[ToolDefinition(name="A", kind="pointer", markers={1: square(0, 0, 10)}),
                                    ToolDefinition(name="B", kind="pointer", markers={1: square(0, 0, 10)})]), CAL)
    skewed = square(0, 0, 10)
    skewed[0] = (-5.0, 9.0, 0.0)
    with pytest.raises(InputError, match="not a square"):
        ArucoTracker(ToolSet(tools=[ToolDefinition(name="A", kind="pointer", markers={1: skewed})]), CAL)
    with pytest.raises(InputError, match="no tool"):
        ArucoTracker(ToolSet(tools=[ToolDefinition(name="A", kind="pointer")]), CAL)


def test_camera_calibration_from_rendered_charuco_views(tmp_path):
    spec = CharucoBoardSpec(squares=(7, 5), square_mm=30.0, marker_mm=22.0)
    px_per_mm = 6.0
    texture = spec.board().generateImage((int(210 * px_per_mm), int(150 * px_per_mm)), marginSize=0)
    rng = np.random.default_rng(2)
    images = []
    for i in range(8):
        tilt = rotation_about_axis(rng.normal(size=3), np.radians(rng.uniform(15, 35)))
        # board frame: x right, y down the texture = plane (x, -y): a proper rotation (about x)
        pose = make_rigid(FACING @ tilt, [rng.uniform(-30, 30), rng.uniform(-20, 20), rng.uniform(380, 450)])
        pose = pose @ make_rigid(None, [-105.0, 75.0, 0.0])  # centre the board on the pose origin
        images.append(render_texture(texture, (0.0, 0.0), 1.0 / px_per_mm, pose, CAL, seed=i))
    cal = calibrate_camera(images, board=spec)
    assert cal.n_images == 8 and cal.rms_px < 0.5
    np.testing.assert_allclose(cal.camera_matrix[[0, 1], [0, 1]], [1000.0, 1000.0], rtol=0.01)
    np.testing.assert_allclose(cal.camera_matrix[:2, 2], K[:2, 2], atol=8.0)
    path = save_camera_calibration(tmp_path / "camera.json", cal)
    back = load_camera_calibration(path)
    np.testing.assert_allclose(back.camera_matrix, cal.camera_matrix)
    assert back.image_size == (1280, 720)
    # the CLI entry point on a folder of the same views
    folder = tmp_path / "views"
    folder.mkdir()
    for i, img in enumerate(images):
        cv2.imwrite(str(folder / f"view{i:02d}.png"), img)
    text = calibrate_camera_cli(folder, tmp_path / "cli.json", board=spec)
    assert "from 8 of 8 images" in text
    np.testing.assert_allclose(load_camera_calibration(tmp_path / "cli.json").camera_matrix, cal.camera_matrix, rtol=1e-6)
    with pytest.raises(InputError, match="needs >= 5 images"):
        calibrate_camera([np.full((720, 1280), 128, np.uint8)] * 5, board=spec)


def test_aruco_source_over_a_folder_of_frames(tmp_path):
    rng = np.random.default_rng(3)
    poses = [random_pose(rng) for _ in range(4)]
    for i, pose in enumerate(poses):
        cv2.imwrite(str(tmp_path / f"frame{i:03d}.png"), render_plate(PLATE, pose, CAL, seed=i))
    slow = ToolSet(tools=[t.model_copy(update={"timeout_s": 30.0}) for t in TOOLS.tools])
    src = ArucoSource(tmp_path, slow, CAL, fps=10.0)
    with src:
        assert src.finished.wait(10.0)
        last = src.latest()
        h = src.health()
    np.testing.assert_allclose(last.pose("Plate")[:3, 3], poses[-1][:3, 3], atol=1.0)
    assert last.tools["Plate"].device_time_s == pytest.approx(0.3)  # 4th frame at 10 fps
    assert last.status("Pointer") is ToolStatus.NOT_VISIBLE
    assert last.tools["Plate"].quality < 0.5
    assert h.messages == 2 * len(poses)  # one update per tool per frame


def test_aruco_source_from_a_video_file(tmp_path):
    rng = np.random.default_rng(4)
    poses = [random_pose(rng) for _ in range(3)]
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (1280, 720), isColor=False)
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    for i, pose in enumerate(poses):
        writer.write(render_plate(PLATE, pose, CAL, seed=i))
    writer.release()
    slow = ToolSet(tools=[t.model_copy(update={"timeout_s": 30.0}) for t in TOOLS.tools])
    with ArucoSource(path, slow, CAL) as src:
        assert src.finished.wait(10.0)
        last = src.latest()
    np.testing.assert_allclose(last.pose("Plate")[:3, 3], poses[-1][:3, 3], atol=1.0)  # JPEG-compressed frames
    assert rotation_angle_deg(last.pose("Plate"), poses[-1]) < 0.5
    assert last.tools["Plate"].device_time_s == pytest.approx(0.2, abs=0.02)  # 3rd frame at 10 fps


def test_unreadable_frame_is_counted_and_the_source_goes_on(tmp_path):
    """A corrupt PNG in the folder must not kill the thread: counted, skipped, then finished."""
    rng = np.random.default_rng(5)
    poses = [random_pose(rng) for _ in range(3)]
    for i, pose in enumerate(poses):
        cv2.imwrite(str(tmp_path / f"frame{2 * i:03d}.png"), render_plate(PLATE, pose, CAL, seed=i))
    (tmp_path / "frame001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    slow = ToolSet(tools=[t.model_copy(update={"timeout_s": 30.0}) for t in TOOLS.tools])
    src = ArucoSource(tmp_path, slow, CAL, fps=10.0)
    with src:
        assert src.finished.wait(10.0)
        last = src.latest()
        h = src.health()
    assert h.bad_messages == 1 and "frame001.png" in (h.last_error or "")
    assert not h.connected
    assert h.messages == 2 * len(poses)
    np.testing.assert_allclose(last.pose("Plate")[:3, 3], poses[-1][:3, 3], atol=1.0)
    assert last.tools["Plate"].device_time_s == pytest.approx(0.3)  # 4th file (bad one included) at 10 fps
