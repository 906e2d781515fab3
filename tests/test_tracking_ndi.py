"""NDI source on the REAL ``ndicapy`` binding (PyPI ``ndicapi``) against an emulated NDI tracker.

The binding runs in the source's worker process and talks NDI's Combined API over TCP
(``ndiOpenNetwork``) to :class:`tests.ndi_emulator.NDIEmulator` in this process: passive tools
with ROMs (PHRQ + PVWR), wired tools without ROM (found with PHSR), a missing tool, an
out-of-volume tool, ERROR replies and a dropped connection.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from orthonav.core.errors import InputError, TrackingError
from orthonav.tracking import NDISource, ToolDefinition, ToolSet, ToolStatus, TrackingFrame
from orthonav.tracking.run import open_source

import ndicapy  # noqa: F401  (the real binding: the test extra installs PyPI's ndicapi)
from ndi_emulator import EmulatedTool, NDIEmulator, crc16


def rotation(axis: tuple[float, float, float], angle_rad: float) -> np.ndarray:
    """Rodrigues' formula (independent of the quaternion code under test)."""
    k = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle_rad) * kx + (1 - math.cos(angle_rad)) * kx @ kx


def ndi_pose(axis: tuple[float, float, float], angle_rad: float, t_mm: tuple[float, float, float], rms_mm: float) -> tuple[float, ...]:
    """(q0, qx, qy, qz, tx, ty, tz, rms) as the tracker sends it (float32 on the wire)."""
    k = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    q = (math.cos(angle_rad / 2), *(math.sin(angle_rad / 2) * k))
    return tuple(float(np.float32(v)) for v in (*q, *t_mm, rms_mm))


POINTER = dict(axis=(1.0, 2.0, 2.0), angle_rad=0.7, t_mm=(12.5, -40.25, -1500.75), rms_mm=0.125)
SENSOR = dict(axis=(0.0, 0.0, 1.0), angle_rad=math.radians(30.0), t_mm=(-3.5, 7.0, 250.0), rms_mm=0.5)


def write_rom(path: Path, seed: int) -> bytes:
    data = bytes((seed + 7 * i) % 256 for i in range(752))  # NDI ROMs are <= 1 kB
    path.write_bytes(data)
    return data


def toolset(tmp_path: Path, *, wired: tuple[str, ...] = ("Sensor", "FarSensor")) -> ToolSet:
    write_rom(tmp_path / "pointer.rom", 1)
    write_rom(tmp_path / "ref.rom", 2)
    tools = [
        ToolDefinition(name="Pointer", kind="pointer", rom_file=str(tmp_path / "pointer.rom"), timeout_s=5.0),
        ToolDefinition(name="Reference", kind="reference", rom_file=str(tmp_path / "ref.rom"), timeout_s=5.0),
    ]
    tools += [ToolDefinition(name=n, kind="reference", timeout_s=5.0) for n in wired]
    return ToolSet(tools=tools)


def emulator(**kw: object) -> NDIEmulator:
    """Pointer visible; Reference MISSING; wired Sensor visible; wired FarSensor out of volume."""
    return NDIEmulator(
        passive=[EmulatedTool(wired=False, pose=ndi_pose(**POINTER)), EmulatedTool(wired=False, missing=True)],
        wired=[EmulatedTool(wired=True, pose=ndi_pose(**SENSOR)),
               EmulatedTool(wired=True, pose=ndi_pose(**SENSOR), out_of_volume=True)],
        **kw,
    )


def wait_for(src: NDISource, pred: Callable[[TrackingFrame], bool], timeout_s: float = 30.0) -> TrackingFrame:
    """Wait on the source's updates until ``pred(latest frame)`` holds."""
    deadline = time.monotonic() + timeout_s
    while not pred(frame := src.latest()):
        assert src.wait_for_update(max(0.0, deadline - time.monotonic())), f"no such frame in time: {src.health()}"
    return frame


def live(*names: str) -> Callable[[TrackingFrame], bool]:
    return lambda f: all(f.status(n) is ToolStatus.LIVE for n in names)


def test_emulator_crc_matches_ndi_reference_values():
    """NDI's documented frames: INIT:E3A5 and OKAYA896 (ndicapi's probe sends / expects them)."""
    assert f"{crc16(b'INIT:'):04X}" == "E3A5" and f"{crc16(b'OKAY'):04X}" == "A896"


def test_real_binding_tracks_passive_and_wired_tools(tmp_path):
    with emulator() as emu:
        src = open_source(ndi=f"127.0.0.1:{emu.port}", tools=toolset(tmp_path))
        assert isinstance(src, NDISource)
        with src:
            assert src.info["handles"] == {"01": "Pointer", "02": "Reference", "0A": "Sensor", "0B": "FarSensor"}
            frame = wait_for(src, live("Pointer", "Sensor"))
            health = src.health()
        commands = list(emu.commands)
        roms = {h: emu.rom_of(h) for h in (0x01, 0x02)}
    # poses: quaternion + translation -> matrix, exactly (float32 on the wire)
    for name, p in (("Pointer", POINTER), ("Sensor", SENSOR)):
        pose = frame.pose(name)
        np.testing.assert_allclose(pose[:3, :3], rotation(p["axis"], p["angle_rad"]), atol=1e-6)
        np.testing.assert_allclose(pose[:3, 3], p["t_mm"], atol=1e-6)
        np.testing.assert_array_equal(pose[3], [0, 0, 0, 1])
        assert frame.tools[name].quality == pytest.approx(p["rms_mm"], abs=1e-9)
        assert frame.tools[name].device_time_s > 1000 / 60.0  # frame number / 60 Hz
    # missing tool (BX handle status MISSING) and out-of-volume tool (port status bit) are not shown
    for name in ("Reference", "FarSensor"):
        assert frame.status(name) is ToolStatus.NOT_VISIBLE and frame.pose(name) is None
    assert health.connected and health.last_error is None
    # ROMs uploaded (PVWR, 64-byte chunks) into the passive handles, zero-padded to 1 kB
    for h, rom in ((0x01, (tmp_path / "pointer.rom").read_bytes()), (0x02, (tmp_path / "ref.rom").read_bytes())):
        assert roms[h] == rom + bytes(1024 - len(rom))
    assert not any(c.startswith(("PVWR:0A", "PVWR:0B")) for c in commands)  # wired tools need no ROM
    # the protocol sequence: INIT, ROMs, PHSR-driven PINIT / PENA, TSTART, BX ..., TSTOP
    assert commands[0] == "INIT:"
    for c in ("PHSR:02", "PINIT:01", "PINIT:0A", "PINIT:0B", "PHSR:03", "PENA:01D", "PENA:0BD", "TSTART:", "BX:0801"):
        assert c in commands
    assert commands.index("PHSR:02") > max(i for i, c in enumerate(commands) if c.startswith("PVWR"))
    assert commands.index("TSTART:") < commands.index("BX:0801")
    assert commands[-1] == "TSTOP:"
    # after stop the worker is gone and nothing is shown as live
    assert all(src.latest().status(n) is ToolStatus.NOT_VISIBLE for n in ("Pointer", "Sensor"))


def test_error_reply_is_a_clear_start_error(tmp_path):
    with emulator(fail={"TSTART": 0x12}) as emu:
        src = NDISource(f"127.0.0.1:{emu.port}", toolset(tmp_path), reconnect_delay_s=None)
        with pytest.raises(TrackingError, match="TSTART.*Unable to start tracking"):
            src.start()
        assert "TSTART:" in emu.commands and "BX:0801" not in emu.commands
    assert not src.health().connected


def test_wired_tool_without_port_is_a_clear_start_error(tmp_path):
    with emulator() as emu:
        src = NDISource(f"127.0.0.1:{emu.port}", toolset(tmp_path, wired=("Sensor", "FarSensor", "Third")))
        with pytest.raises(TrackingError, match=r"no port handle for wired tools \['Third'\]"):
            src.start()


def test_dropped_connection_is_reported_then_reconnected(tmp_path):
    with emulator() as emu:
        src = NDISource(f"127.0.0.1:{emu.port}", toolset(tmp_path), reconnect_delay_s=0.5)
        with src:
            wait_for(src, live("Pointer", "Sensor"))
            emu.drop()  # the cable is pulled mid-stream
            assert src.store.wait_for_health(lambda h: not h.connected and h.last_error is not None, 30.0)
            lost = src.latest()
            assert src.health().last_error.startswith("NDI")
            assert all(lost.status(n) is ToolStatus.NOT_VISIBLE for n in ("Pointer", "Sensor"))
            assert src.store.wait_for_health(lambda h: h.connected and h.reconnects == 1, 30.0)
            frame = wait_for(src, live("Pointer", "Sensor"))
        assert emu.connections == 2 and emu.commands.count("INIT:") == 2
    np.testing.assert_allclose(frame.pose("Pointer")[:3, 3], POINTER["t_mm"], atol=1e-6)


def test_without_reconnect_a_dropped_connection_leaves_the_source_disconnected(tmp_path):
    with emulator() as emu:
        src = NDISource(f"127.0.0.1:{emu.port}", toolset(tmp_path), reconnect_delay_s=None)
        with src:
            wait_for(src, live("Pointer"))
            emu.drop()
            assert src.store.wait_for_health(lambda h: not h.connected and h.last_error is not None, 30.0)
            assert src.latest().status("Pointer") is ToolStatus.NOT_VISIBLE
            assert emu.connections == 1


def test_unreachable_tracker_and_serial_port(tmp_path):
    with emulator() as emu:
        port = emu.port
    with pytest.raises(TrackingError, match="cannot connect"):
        NDISource(f"127.0.0.1:{port}", toolset(tmp_path), start_timeout_s=30).start()
    with pytest.raises(TrackingError, match="cannot open serial port"):
        NDISource("/dev/ttyNDI_absent", toolset(tmp_path)).start()


def test_missing_rom_and_missing_binding(tmp_path):
    with pytest.raises(InputError, match="ROM file"):
        NDISource("/dev/ttyUSB0", ToolSet(tools=[ToolDefinition(name="P", kind="pointer", rom_file=str(tmp_path / "x.rom"))]))
    src = NDISource("/dev/ttyUSB0", ToolSet(tools=[ToolDefinition(name="P", kind="pointer")]), binding_module="ndicapy_absent")
    with pytest.raises(TrackingError, match="pip install 'orthonav\\[ndi\\]'"):
        src.start()
