"""A source's health after a failed and then successful connection: no stale error in `orthonav track`."""

from __future__ import annotations

import socket

import numpy as np

from orthonav.cli.track_view import tool_table
from orthonav.tracking import IGTLClientSource, IGTLServer, ToolDefinition, ToolSet

#: The server sends the pose once, and what is checked is that it arrives (and the error text),
#: not the timeout: with the default 0.25 s a busy CI machine can read it TIMED_OUT. Long timeout.
POINTER = ToolSet(tools=[ToolDefinition(name="Pointer", kind="pointer", timeout_s=120.0)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _title(source: IGTLClientSource) -> str:
    return str(tool_table(source.latest(), source.health()).title)


def test_track_view_drops_cannot_connect_once_connected_and_shows_a_new_error_with_its_age(wait_until):
    port = _free_port()
    client = IGTLClientSource("127.0.0.1", port, reconnect=True, max_backoff_s=0.05, tools=POINTER)
    client.start()
    try:
        assert client.store.wait_for_health(lambda h: bool(h.last_error) and "cannot connect" in h.last_error, 5.0)
        assert "cannot connect" in _title(client) and "s ago" in _title(client)
        with IGTLServer(port) as server:
            assert client.wait_connected(5.0) and server.wait_for_clients(1, 5.0)
            h = client.health()
            assert h.connected and h.last_error is None
            title = _title(client)
            assert title.startswith("connected") and "last error" not in title and "cannot connect" not in title
            server.send_poses({"Pointer": np.eye(4)}, 1.0)
            wait_until(client, lambda f: f.pose("Pointer") is not None)
            assert "last error" not in _title(client)
        # The server went away: that is a new, current error, shown (with its age) while disconnected.
        assert client.store.wait_for_health(lambda h: not h.connected and h.last_error is not None, 5.0)
        title = _title(client)
        assert title.startswith("NOT CONNECTED") and "last error (" in title
    finally:
        client.stop()
