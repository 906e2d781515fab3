"""Clear states when there is no tracker or no display (issue 12, "No tracker")."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from orthonav.navigation import navigate_case
from orthonav.phantoms.scenario import write_toy_case
from orthonav.tracking.igtl_client import IGTLClientSource


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, read, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_navigate_without_a_tracker_says_cannot_connect_within_a_second(tmp_path):
    """`navigate --igtl 127.0.0.1:<closed>` was silent for as long as it ran: the refusal must be
    reported (with "retrying") within 1 s of navigation starting, once, and navigation go on."""
    write_toy_case(tmp_path / "case", resolution=30)
    port = _closed_port()
    said: list[tuple[float, str]] = []
    t0 = time.monotonic()
    summary = navigate_case(tmp_path / "case", IGTLClientSource("127.0.0.1", port), duration_s=1.5, render=False,
                            progress=lambda text: said.append((time.monotonic() - t0, text)))
    problems = [(t, text) for t, text in said if "cannot connect" in text]
    assert problems, said
    t, text = problems[0]
    assert t < 1.0 + 0.5, said  # 1 s, plus reading the case on a loaded machine
    assert f"127.0.0.1:{port}" in text and "retrying" in text and "refused" in text.lower()
    assert len(problems) == 1  # reported when it changes, not every frame
    assert not summary.registered


def test_navigate_without_a_display_exits_2_with_one_line(tmp_path):
    write_toy_case(tmp_path / "case", resolution=30)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    code = "from orthonav.cli.main import main; main()"
    out = subprocess.run([sys.executable, "-c", code, "navigate", str(tmp_path / "case"), "--igtl", f"127.0.0.1:{_closed_port()}"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--off-screen" in lines[0] and "Traceback" not in out.stderr, out.stderr
