"""NDI source through a fake ndicapi binding, in the real worker process."""

from __future__ import annotations

import math
import sys
import textwrap
import time

import numpy as np
import pytest

from orthonav.core.errors import InputError, TrackingError
from orthonav.tracking import NDISource, ToolDefinition, ToolSet, ToolStatus

FAKE = textwrap.dedent(
    '''
    """A fake ndicapi: two ROM tools; handle 1 visible at a fixed pose, handle 2 MISSING."""
    import math
    NDI_OKAY = 0
    NDI_115200 = 7
    NDI_8N1 = 0
    NDI_NOHANDSHAKE = 0
    NDI_OUT_OF_VOLUME = 0x0040
    FAKE_PACING_S = 0.005
    FAIL_OPEN = False
    OUT_OF_VOLUME = False  # when True, handle 1 is reported (pose and all) but flagged out of volume

    class Dev:
        def __init__(self):
            self.next_handle = 1
            self.frame = 100
            self.commands = []

    def ndiDeviceName(i):
        return "/dev/ttyFAKE%d" % i

    def ndiProbe(name):
        return 0 if name.endswith("3") else 1

    def ndiOpen(name):
        return None if FAIL_OPEN else Dev()

    def ndiOpenNetwork(host, port):
        return Dev()

    def ndiClose(d):
        pass

    def ndiCloseNetwork(d):
        pass

    def ndiGetError(d):
        return 0

    def ndiErrorString(e):
        return "error %d" % e

    def ndiCommand(d, cmd):
        d.commands.append(cmd)
        if cmd.startswith("BX"):
            d.frame += 1
        return "OKAY"

    def ndiGetPHRQHandle(d):
        h = d.next_handle
        d.next_handle += 1
        return h

    def ndiPVWRFromFile(d, ph, path):
        open(path, "rb").read()

    def ndiGetPHSRNumberOfHandles(d):
        return 2

    def ndiGetPHSRHandle(d, i):
        return i + 1

    def ndiGetBXTransform(d, ph):
        if ph == 2:
            return "MISSING"
        c, s = math.cos(0.25), math.sin(0.25)  # 30 deg about z: q = (cos 15, 0, 0, sin 15)
        return (c, 0.0, 0.0, s, 10.0, -20.0, -1500.0, 0.12)

    def ndiGetBXPortStatus(d, ph):
        status = 0x01 | 0x10 | 0x20  # tool in port, initialised, enabled
        return status | NDI_OUT_OF_VOLUME if OUT_OF_VOLUME else status

    def ndiGetBXFrame(d, ph):
        return d.frame
    '''
)


@pytest.fixture
def fake_binding(tmp_path, monkeypatch):
    (tmp_path / "fake_ndicapi.py").write_text(FAKE)
    monkeypatch.syspath_prepend(str(tmp_path))  # the spawned worker inherits sys.path
    yield "fake_ndicapi"
    sys.modules.pop("fake_ndicapi", None)


def toolset(tmp_path) -> ToolSet:
    for n in ("pointer.rom", "ref.rom"):
        (tmp_path / n).write_bytes(b"\x00" * 16)
    return ToolSet(tools=[
        ToolDefinition(name="Pointer", kind="pointer", rom_file=str(tmp_path / "pointer.rom"), timeout_s=5.0),
        ToolDefinition(name="Reference", kind="reference", rom_file=str(tmp_path / "ref.rom"), timeout_s=5.0),
    ])


def test_ndi_worker_process_streams_poses(fake_binding, tmp_path):
    src = NDISource("/dev/ttyFAKE0", toolset(tmp_path), binding_module=fake_binding, start_timeout_s=30)
    with src:
        assert src.info["handles"] == {"01": "Pointer", "02": "Reference"}
        deadline = time.monotonic() + 10
        while src.latest().status("Pointer") is not ToolStatus.LIVE:
            assert src.wait_for_update(max(0.0, deadline - time.monotonic()))
        frame = src.latest()
    pose = frame.pose("Pointer")
    a = 0.5  # rotation angle 2 * 0.25 rad about z
    np.testing.assert_allclose(pose[:3, :3], [[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(pose[:3, 3], [10.0, -20.0, -1500.0])
    assert frame.tools["Pointer"].quality == pytest.approx(0.12)
    assert frame.tools["Pointer"].device_time_s > 100 / 60.0
    assert frame.status("Reference") is ToolStatus.NOT_VISIBLE and frame.pose("Reference") is None
    # after stop the worker is gone and nothing is shown as live
    assert src.latest().status("Pointer") is ToolStatus.NOT_VISIBLE


def test_ndi_open_failure_is_a_clear_error(fake_binding, tmp_path):
    (tmp_path / "fake_ndicapi.py").write_text(FAKE.replace("FAIL_OPEN = False", "FAIL_OPEN = True"))
    src = NDISource("/dev/ttyFAKE0", toolset(tmp_path), binding_module=fake_binding)
    with pytest.raises(TrackingError, match="cannot open serial port"):
        src.start()


def test_missing_rom_and_missing_binding(tmp_path):
    with pytest.raises(InputError, match="ROM file"):
        NDISource("/dev/ttyUSB0", ToolSet(tools=[ToolDefinition(name="P", kind="pointer", rom_file=str(tmp_path / "x.rom"))]))
    src = NDISource("/dev/ttyUSB0", ToolSet(tools=[ToolDefinition(name="P", kind="pointer")]))
    with pytest.raises(TrackingError, match="ndicapi|NDI"):
        src.start()


def test_out_of_volume_pose_is_not_visible(fake_binding, tmp_path):
    """BX:0801 returns poses of out-of-volume tools too; the port status bit must hide them."""
    (tmp_path / "fake_ndicapi.py").write_text(FAKE.replace("OUT_OF_VOLUME = False", "OUT_OF_VOLUME = True"))
    src = NDISource("/dev/ttyFAKE0", toolset(tmp_path), binding_module=fake_binding, start_timeout_s=30)
    with src:
        deadline = time.monotonic() + 10
        while "Pointer" not in src.latest().tools:
            assert src.wait_for_update(max(0.0, deadline - time.monotonic()))
        frame = src.latest()
    assert frame.status("Pointer") is ToolStatus.NOT_VISIBLE and frame.pose("Pointer") is None
