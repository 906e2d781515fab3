"""An emulated NDI tracker (Polaris / Vega / Aurora) speaking NDI's Combined API over TCP.

Written from NDI's published Combined API (command/reply framing, CRC16, binary ``BX`` reply)
and checked against what the ``ndicapy`` binding sends and parses (``ndicapi.cxx``:
``ndiCommandVA``, ``ndiBXHelper``, ``ndiPHSRHelper``, ``ndiPHRQHelper``, ``ndiSocketRead``).

Protocol as emulated
--------------------
* Command: ASCII ``NAME:ARGS`` + CRC16 of the text (4 upper-case hex digits) + ``\\r``
  (commands without ``:`` carry no CRC). A bad CRC is answered ``ERROR04``.
* ASCII reply: text + CRC16 (4 hex digits) + ``\\r``; errors are ``ERRORxx``.
* ``BX`` reply (binary, little endian): start sequence 0xA5C4, body length (uint16),
  header CRC16 (of the 4 bytes before it), body, body CRC16. Body: handle count (uint8); per
  handle: handle (uint8), handle status (0x01 valid, 0x02 missing, 0x04 disabled); unless
  disabled: 8 float32 (q0 qx qy qz tx ty tz rms; absent when missing), port status (uint32),
  frame number (uint32); then system status (uint16).
* Port handles: wired tools own a handle from power-up ("occupied, not initialised" in
  ``PHSR:02``); passive tools get one from ``PHRQ`` and need their ROM (``PVWR``, 64 bytes a
  call) before ``PINIT``. ``PENA`` enables, ``TSTART`` / ``TSTOP`` switch tracking, ``BX``
  is only valid while tracking.

``INIT`` returns the tracker to its power-up state (only the wired handles; ROMs and tracking
gone). ``BX`` replies are paced at the tracker frame rate, as a real tracker blocks until its
next frame. The server serves one connection at a time on 127.0.0.1, lives at most
``lifetime_s`` and stops by itself; :meth:`NDIEmulator.drop` cuts the connection of the current client (the
"cable pulled" case).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field

#: Port status bits (NDI Combined API, ndicapi.h).
OCCUPIED, INITIALISED, ENABLED, OUT_OF_VOLUME = 0x01, 0x10, 0x20, 0x40
#: BX handle status values.
HANDLE_VALID, HANDLE_MISSING, HANDLE_DISABLED = 0x01, 0x02, 0x04


def crc16(data: bytes, crc: int = 0) -> int:
    """NDI's running CRC16 (polynomial x^16 + x^15 + x^2 + 1, reflected, initial value 0)."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def ascii_reply(text: str) -> bytes:
    """One ASCII reply frame: ``text`` + CRC16 (4 hex digits) + CR."""
    body = text.encode("ascii")
    return body + f"{crc16(body):04X}\r".encode("ascii")


@dataclass
class EmulatedTool:
    """One tool seen by the emulated tracker.

    Parameters
    ----------
    wired
        True: a wired tool (Aurora sensor / active tool) owning a port handle from power-up,
        no ROM needed. False: a passive tool, needing ``PHRQ`` + ``PVWR`` (its ROM) first.
    pose
        ``(q0, qx, qy, qz, tx, ty, tz, rms)`` sent in every ``BX`` (float32 on the wire).
    missing, out_of_volume
        Reported as handle status MISSING, or with the out-of-volume port-status bit.
    """

    wired: bool
    pose: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    missing: bool = False
    out_of_volume: bool = False


@dataclass
class _Port:
    tool: EmulatedTool | None
    rom: bytearray = field(default_factory=lambda: bytearray(1024))
    rom_written: bool = False
    initialised: bool = False
    enabled: bool = False


class NDIEmulator:
    """A bounded TCP NDI tracker; ``with NDIEmulator(...) as emu: emu.port``.

    Parameters
    ----------
    wired
        Tools on wired ports (handles 0x0A, 0x0B, ... from power-up).
    passive
        Tools that answer once a ROM has been loaded into a ``PHRQ`` handle, in request order.
    fail
        Command name -> NDI error code (e.g. ``{"TSTART": 0x12}``): that command is answered
        ``ERRORxx``.
    lifetime_s
        Hard bound on the server's life.
    """

    def __init__(
        self,
        *,
        wired: list[EmulatedTool] | None = None,
        passive: list[EmulatedTool] | None = None,
        fail: dict[str, int] | None = None,
        lifetime_s: float = 60.0,
        first_frame: int = 1000,
        frame_rate_hz: float = 60.0,
    ) -> None:
        self.passive = list(passive or [])
        self.fail = dict(fail or {})
        self.lifetime_s = lifetime_s
        self.frame = first_frame
        self.commands: list[str] = []
        self.lock = threading.Lock()
        self.bx_served = threading.Condition(self.lock)
        self.bx_count = 0
        self.connections = 0
        self.wired = list(wired or [])
        self.frame_period_s = 1.0 / frame_rate_hz
        self.ports: dict[int, _Port] = {}
        self._next_passive = 0
        self.tracking = False
        self._power_up()
        self._srv = socket.create_server(("127.0.0.1", 0))
        self._srv.settimeout(0.2)
        self.port: int = self._srv.getsockname()[1]
        self._stop = threading.Event()
        self._client: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, name="ndi-emulator", daemon=True)

    def _power_up(self) -> None:
        """State after power-up / INIT: only the wired tools own (uninitialised) handles."""
        self.ports = {0x0A + i: _Port(t) for i, t in enumerate(self.wired)}
        self._next_passive = 0
        self.tracking = False

    # -- life cycle ---------------------------------------------------------------------------
    def __enter__(self) -> "NDIEmulator":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self.drop()
        self._thread.join(timeout=5.0)
        self._srv.close()

    def drop(self) -> None:
        """Cut the current connection (the tracker's cable is pulled)."""
        with self.lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            client.close()

    def wait_for_bx(self, count: int, timeout_s: float) -> bool:
        """Wait until ``count`` BX replies have been served in total."""
        with self.bx_served:
            return self.bx_served.wait_for(lambda: self.bx_count >= count, timeout_s)

    def rom_of(self, handle: int) -> bytes:
        with self.lock:
            return bytes(self.ports[handle].rom)

    # -- server -------------------------------------------------------------------------------
    def _serve(self) -> None:
        deadline = time.monotonic() + self.lifetime_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                client, _ = self._srv.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                break
            client.settimeout(0.2)
            with self.lock:
                self._client = client
                self.connections += 1
            self._talk(client, deadline)
            self.drop()

    def _talk(self, client: socket.socket, deadline: float) -> None:
        buf = b""
        next_frame = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                chunk = client.recv(4096)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\r" in buf:
                line, buf = buf.split(b"\r", 1)
                if line.startswith(b"BX"):  # a tracker answers BX at its frame rate
                    next_frame = max(next_frame + self.frame_period_s, time.monotonic())
                    if self._stop.wait(max(0.0, next_frame - time.monotonic())):
                        return
                reply = self._answer(line.decode("ascii", "replace"))
                try:
                    client.sendall(reply)  # one send: the binding reads ASCII replies up to the CR
                except OSError:
                    return

    # -- commands -----------------------------------------------------------------------------
    def _answer(self, line: str) -> bytes:
        if ":" in line:
            text, crc = line[:-4], line[-4:]
            if f"{crc16(text.encode('ascii')):04X}" != crc.upper():
                return ascii_reply("ERROR04")  # invalid CRC calculated for command
        else:
            text = line
        name, _, args = text.partition(":")
        with self.lock:
            self.commands.append(text)
            if name in self.fail:
                return ascii_reply(f"ERROR{self.fail[name]:02X}")
            handler = getattr(self, f"_cmd_{name.lower()}", None)
            if handler is None:
                return ascii_reply("ERROR01")  # invalid command
            return handler(args)

    def _port(self, hh: str) -> _Port | None:
        try:
            return self.ports.get(int(hh[:2], 16))
        except ValueError:
            return None

    def _cmd_init(self, args: str) -> bytes:
        self._power_up()
        return ascii_reply("OKAY")

    def _cmd_comm(self, args: str) -> bytes:
        return ascii_reply("OKAY")

    def _cmd_beep(self, args: str) -> bytes:
        return ascii_reply("0")

    def _cmd_phrq(self, args: str) -> bytes:
        handle = 0x01 + len([h for h in self.ports if h < 0x0A])
        tool = self.passive[self._next_passive] if self._next_passive < len(self.passive) else None
        self._next_passive += 1
        self.ports[handle] = _Port(tool)
        return ascii_reply(f"{handle:02X}")

    def _cmd_pvwr(self, args: str) -> bytes:
        port, addr, data = self._port(args), args[2:6], args[6:]
        if port is None:
            return ascii_reply("ERROR0A")  # invalid port handle (NDI: 0x0A for PVWR)
        a = int(addr, 16)
        chunk = bytes.fromhex(data)
        if len(chunk) != 64 or a % 64 or a + 64 > len(port.rom):
            return ascii_reply("ERROR07")
        port.rom[a:a + 64] = chunk
        port.rom_written = True
        return ascii_reply("OKAY")

    def _cmd_phf(self, args: str) -> bytes:
        if self.ports.pop(int(args[:2], 16), None) is None:
            return ascii_reply("ERROR0A")
        return ascii_reply("OKAY")

    def _cmd_phsr(self, args: str) -> bytes:
        option = int(args or "00", 16)

        def wanted(p: _Port) -> bool:
            if option == 1:  # handles to be freed: none in this emulator
                return False
            if option == 2:
                return not p.initialised and (p.tool is None or p.tool.wired or p.rom_written)
            if option == 3:
                return p.initialised and not p.enabled
            if option == 4:
                return p.enabled
            return True

        handles = sorted(h for h, p in self.ports.items() if wanted(p))
        return ascii_reply(f"{len(handles):02X}" + "".join(f"{h:02X}{self._status(self.ports[h]) & 0xFFF:03X}" for h in handles))

    def _cmd_pinit(self, args: str) -> bytes:
        port = self._port(args)
        if port is None:
            return ascii_reply("ERROR0A")
        if port.tool is None or not (port.tool.wired or port.rom_written):
            return ascii_reply("ERROR0D")  # no tool assigned to the selected port handle
        port.initialised = True
        return ascii_reply("OKAY")

    def _cmd_pena(self, args: str) -> bytes:
        port = self._port(args)
        if port is None:
            return ascii_reply("ERROR0A")
        if not port.initialised:
            return ascii_reply("ERROR0E")  # selected port handle not initialised
        if args[2:3] not in ("S", "D", "B"):
            return ascii_reply("ERROR09")  # invalid tracking priority
        port.enabled = True
        return ascii_reply("OKAY")

    def _cmd_tstart(self, args: str) -> bytes:
        self.tracking = True
        return ascii_reply("OKAY")

    def _cmd_tstop(self, args: str) -> bytes:
        self.tracking = False
        return ascii_reply("OKAY")

    @staticmethod
    def _status(p: _Port) -> int:
        s = OCCUPIED if p.tool is not None else 0
        s |= INITIALISED if p.initialised else 0
        s |= ENABLED if p.enabled else 0
        if p.tool is not None and p.tool.out_of_volume:
            s |= OUT_OF_VOLUME
        return s

    def _cmd_bx(self, args: str) -> bytes:
        if not self.tracking:
            return ascii_reply("ERROR0C")  # command invalid in the current mode
        self.frame += 1
        handles = sorted(h for h, p in self.ports.items() if p.enabled)
        body = bytearray([len(handles)])
        for h in handles:
            p = self.ports[h]
            tool = p.tool
            assert tool is not None  # enabled ports have a tool
            body += bytes([h, HANDLE_MISSING if tool.missing else HANDLE_VALID])
            if not tool.missing:
                body += struct.pack("<8f", *tool.pose)
            body += struct.pack("<II", self._status(p), self.frame)
        body += struct.pack("<H", 0)  # system status
        header = struct.pack("<HH", 0xA5C4, len(body))
        reply = header + struct.pack("<H", crc16(header)) + bytes(body) + struct.pack("<H", crc16(bytes(body)))
        self.bx_count += 1
        self.bx_served.notify_all()
        return reply
