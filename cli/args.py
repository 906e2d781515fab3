"""Parsing of command-line argument values shared by several commands."""

from __future__ import annotations

from orthonav.core.errors import InputError

DEFAULT_HOST = "127.0.0.1"


def parse_host_port(text: str, *, default_port: int = 18944, allow_zero: bool = False) -> tuple[str, int]:
    """Parse an OpenIGTLink endpoint given on the command line.

    Parameters
    ----------
    text
        ``"HOST:PORT"``, ``"HOST"`` (port ``default_port``) or ``":PORT"`` (host 127.0.0.1).
    default_port
        The port used when ``text`` names none.
    allow_zero
        Accept port 0 ("any free port", for a server that listens).

    Returns
    -------
    tuple[str, int]
        The host name or address and the TCP port.

    Raises
    ------
    InputError
        The port is not a number or is out of range (1..65535, or 0..65535 with ``allow_zero``).
    """
    host, sep, port_s = text.rpartition(":")
    if not sep:
        host, port_s = text, str(default_port)
    host = host.strip() or DEFAULT_HOST
    port_s = port_s.strip()
    if not port_s.isdigit():
        raise InputError(None, f"expected HOST:PORT (e.g. 127.0.0.1:18944), got {text!r} (port must be a number)")
    port = int(port_s)
    lowest = 0 if allow_zero else 1
    if not lowest <= port < 65536:
        raise InputError(None, f"expected HOST:PORT (e.g. 127.0.0.1:18944), got {text!r} "
                               f"(port {port} out of range {lowest}..65535)")
    return host, port


def require_display(command: str) -> None:
    """Refuse to open a window where there is no display (one clear line, not a VTK traceback).

    Raises
    ------
    InputError
        On Linux with neither ``DISPLAY`` nor ``WAYLAND_DISPLAY`` set: says to pass
        ``--off-screen`` (pictures are written as PNGs instead) or to start an X server.
    """
    import os
    import sys

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise InputError(None, f"'{command}' needs a display to open its window and there is none (DISPLAY is not set): "
                               f"run it with --off-screen, or on a machine with a screen / an X server (e.g. xvfb-run)")
