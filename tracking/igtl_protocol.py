"""OpenIGTLink v1/v2 wire format: pure functions that pack and unpack messages.

Implements the OpenIGTLink protocol specification (Tokuda et al. 2009, "OpenIGTLink: an open
network protocol for image-guided therapy environment", Int J Med Robot 5(4); message layout
from openigtlink.org/developers/spec and the reference C headers ``igtl_header.h``,
``igtl_transform.h``, ``igtl_position.h``, ``igtl_tdata.h``, ``igtl_status.h``,
``igtl_string.h``, ``igtl_polydata.h``).

Every message is a 58-byte big-endian header followed by a body::

    uint16   version        1 (v1 body) or 2 (v2 body: extended header + content + metadata)
    char[12] type           e.g. "TRANSFORM", NUL padded
    char[20] device name    e.g. "PointerToTracker", NUL padded
    uint64   timestamp      32.32 fixed point seconds (upper 32 bits s, lower 32 bits fraction)
    uint64   body size      bytes
    uint64   crc            CRC-64 (ECMA-182, polynomial 0x42F0E1EBA9EA3693, init 0) of the body

The matrices here are exactly what is on the wire (RAS-based for Slicer / PLUS peers); the
LPS <-> RAS conversion is done by the client / server, never here.

No sockets in this module: :class:`StreamParser` turns a byte stream into messages,
resynchronising on garbage, and counts what it had to skip.
"""

from __future__ import annotations

import enum
import logging
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from orthonav.core.errors import InputError, TrackingError

log = logging.getLogger(__name__)

HEADER_SIZE = 58
EXTENDED_HEADER_SIZE = 12
#: Largest body accepted by default (bytes); bigger messages are counted as oversized.
DEFAULT_MAX_BODY = 64 * 1024 * 1024
CRC64_POLY = 0x42F0E1EBA9EA3693

_HEADER = struct.Struct(">H12s20sIIQQ")
_EXT_HEADER = struct.Struct(">HHII")
_TRANSFORM = struct.Struct(">12f")
_TDATA_ELEMENT = struct.Struct(">20sBB12f")
_STATUS_HEAD = struct.Struct(">Hq20s")
_POLY_HEAD = struct.Struct(">10I")

#: Message types this module packs and unpacks.
KNOWN_TYPES = frozenset({"TRANSFORM", "POSITION", "STRING", "STATUS", "TDATA", "POLYDATA"})
#: Query / control messages that carry no data we use (GET_*, STT_*, STP_*, RTS_*) are valid too.
_CONTROL_PREFIXES = ("GET_", "STT_", "STP_", "RTS_")

# --- CRC-64 ECMA-182 ----------------------------------------------------------------------------


def _make_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 56
        for _ in range(8):
            crc = ((crc << 1) ^ CRC64_POLY) if crc & (1 << 63) else (crc << 1)
            crc &= 0xFFFFFFFFFFFFFFFF
        table.append(crc)
    return table


_TABLE = _make_table()


def crc64_python(data: bytes | bytearray | memoryview) -> int:
    """Table-driven CRC-64/ECMA-182 (MSB first, init 0, no final xor), as ``igtl_util.c``."""
    crc = 0
    table = _TABLE
    for b in bytes(data):
        crc = table[((crc >> 56) ^ b) & 0xFF] ^ ((crc << 8) & 0xFFFFFFFFFFFFFFFF)
    return crc


try:  # crcmod ships with pyigtl and has a C extension: ~0.5 us for a TRANSFORM body, 3 ns/byte
    import crcmod as _crcmod

    _crc_c = _crcmod.mkCrcFun(0x1_0000_0000_0000_0000 | CRC64_POLY, initCrc=0, rev=False, xorOut=0)

    def crc64(data: bytes | bytearray | memoryview) -> int:
        """CRC-64/ECMA-182 of ``data`` (the OpenIGTLink body checksum)."""
        return _crc_c(bytes(data) if isinstance(data, memoryview) else data)

except ImportError:  # pragma: no cover - crcmod is a pyigtl dependency
    crc64 = crc64_python


# --- Header ---------------------------------------------------------------------------------


class IGTLProtocolError(TrackingError):
    """A message that cannot be decoded (bad header, bad CRC, malformed body)."""


@dataclass(frozen=True)
class Header:
    """A decoded 58-byte header. ``timestamp_s`` is the sender's clock (s), 0 if unset."""

    version: int
    type: str
    device: str
    timestamp_s: float
    body_size: int
    crc: int


def timestamp_to_wire(t_s: float) -> tuple[int, int]:
    """Seconds -> (seconds, 2^-32 fraction) of the 32.32 fixed-point timestamp."""
    if not math.isfinite(t_s) or t_s < 0:
        return 0, 0
    sec = int(t_s)
    frac = int(round((t_s - sec) * 4294967296.0))
    if frac >= 1 << 32:
        sec, frac = sec + 1, 0
    return sec & 0xFFFFFFFF, frac


def timestamp_from_wire(sec: int, frac: int) -> float:
    """(seconds, fraction) -> seconds (float64)."""
    return sec + frac / 4294967296.0


def _ascii_field(raw: bytes, what: str) -> str:
    text = raw.split(b"\0", 1)[0]
    try:
        s = text.decode("ascii")
    except UnicodeDecodeError as e:
        raise IGTLProtocolError(f"{what} is not ASCII: {raw!r}") from e
    if not s.isprintable():
        raise IGTLProtocolError(f"{what} has control characters: {raw!r}")
    return s


def _is_type_name(s: str) -> bool:
    return 0 < len(s) and all(c.isupper() or c.isdigit() or c == "_" for c in s)


_V2_META_MAX = 1 << 16  # generous room for v2 extended header + metadata on small messages
#: Largest plausible body per message type (beyond: the header is garbage or hostile).
_TYPE_MAX = {"TRANSFORM": 48, "POSITION": 28, "STATUS": 30 + (1 << 16), "STRING": 4 + 0xFFFF, "TDATA": 70 * 4096}


def _max_size(version: int, msg_type: str, max_body: int) -> int:
    if msg_type.startswith(_CONTROL_PREFIXES):
        return 4096
    limit = _TYPE_MAX.get(msg_type, max_body)
    return limit + _V2_META_MAX if version == 2 and msg_type in _TYPE_MAX else limit


def _size_fits(version: int, msg_type: str, size: int) -> bool:
    """Exact-size rules of fixed-size v1 bodies (a mismatch means a corrupted header)."""
    if version != 1:
        return size >= EXTENDED_HEADER_SIZE
    if msg_type == "TRANSFORM":
        return size == 48
    if msg_type == "POSITION":
        return size in (12, 24, 28)
    if msg_type == "TDATA":
        return size % 70 == 0
    if msg_type == "STATUS":
        return size >= 30
    if msg_type == "STRING":
        return size >= 4
    return True


def pack_header(version: int, msg_type: str, device: str, timestamp_s: float, body: bytes) -> bytes:
    """The 58-byte header for ``body`` (computes size and CRC)."""
    try:
        t = msg_type.encode("ascii")
        d = device.encode("ascii")
    except UnicodeEncodeError as e:
        raise InputError(None, f"OpenIGTLink names must be ASCII: {msg_type!r} / {device!r}") from e
    if len(t) > 12:
        raise InputError(None, f"OpenIGTLink type name longer than 12 bytes: {msg_type!r}")
    if len(d) > 20:
        raise InputError(None, f"OpenIGTLink device name longer than 20 bytes: {device!r} (tool names up to 11 characters)")
    sec, frac = timestamp_to_wire(timestamp_s)
    return _HEADER.pack(version, t, d, sec, frac, len(body), crc64(body))


_NAMES: dict[bytes, tuple[str, str]] = {}  #: validated (type, device) name fields


def unpack_header(raw: bytes | bytearray | memoryview, *, max_body: int = DEFAULT_MAX_BODY) -> Header:
    """Decode and sanity-check a 58-byte header.

    Raises
    ------
    IGTLProtocolError
        Unknown version, a type name that is not upper-case ASCII, a non-ASCII device name,
        or a body larger than ``max_body`` bytes.
    """
    if len(raw) < HEADER_SIZE:
        raise IGTLProtocolError(f"header needs {HEADER_SIZE} bytes, got {len(raw)}")
    version, t, d, sec, frac, size, crc = _HEADER.unpack_from(raw)
    if version not in (1, 2):
        raise IGTLProtocolError(f"unsupported header version {version}")
    names = _NAMES.get(t + d)  # hot path: a stream repeats a handful of (type, device) pairs
    if names is None:
        msg_type = _ascii_field(t, "type")
        if not _is_type_name(msg_type) or t[len(msg_type) :].strip(b"\0"):  # names are NUL padded
            raise IGTLProtocolError(f"implausible message type {t!r}")
        device = _ascii_field(d, "device name")
        if len(_NAMES) > 4096:
            _NAMES.clear()
        _NAMES[t + d] = (msg_type, device)
    else:
        msg_type, device = names
    if size > min(max_body, _max_size(version, msg_type, max_body)):
        raise IGTLProtocolError(f"{msg_type} body of {size} bytes exceeds the limit")
    if not _size_fits(version, msg_type, size):
        raise IGTLProtocolError(f"{msg_type} v{version} body cannot be {size} bytes")
    return Header(version, msg_type, device, timestamp_from_wire(sec, frac), size, crc)


# --- Messages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """A received (or to-be-sent) message: header fields, type-specific content, v2 metadata."""

    header: Header
    content: bytes
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return self.header.type

    @property
    def device(self) -> str:
        return self.header.device


def pack_metadata(metadata: Mapping[str, str]) -> tuple[bytes, bytes]:
    """v2 metadata header (index count + 8-byte entries) and body (keys then values, UTF-8)."""
    head = struct.pack(">H", len(metadata))
    body = b""
    for k, v in metadata.items():
        kb, vb = k.encode("utf-8"), v.encode("utf-8")
        head += struct.pack(">HHI", len(kb), 106, len(vb))  # 106 = IANA MIBenum for UTF-8
        body += kb + vb
    return head, body


def pack_message(
    msg_type: str,
    device: str,
    content: bytes,
    *,
    timestamp_s: float = 0.0,
    version: int = 1,
    metadata: Mapping[str, str] | None = None,
    message_id: int = 0,
) -> bytes:
    """Header + body. Version 2 adds the 12-byte extended header and the metadata block."""
    if version == 1:
        if metadata:
            raise ValueError("metadata needs header version 2")
        body = content
    elif version == 2:
        mhead, mbody = pack_metadata(metadata or {}) if metadata else (b"", b"")
        ext = _EXT_HEADER.pack(EXTENDED_HEADER_SIZE, len(mhead), len(mbody), message_id)
        body = ext + content + mhead + mbody
    else:
        raise ValueError(f"header version must be 1 or 2, got {version}")
    return pack_header(version, msg_type, device, timestamp_s, body) + body


def decode_body(header: Header, body: bytes) -> Message:
    """Check the CRC and split a v2 body into content and metadata.

    Raises
    ------
    IGTLProtocolError
        CRC mismatch or an inconsistent v2 extended header / metadata block.
    """
    if len(body) != header.body_size:
        raise IGTLProtocolError(f"{header.type} body is {len(body)} bytes, header says {header.body_size}")
    if crc64(body) != header.crc:
        raise IGTLProtocolError(f"{header.type} '{header.device}': CRC-64 mismatch")
    if header.version == 1:
        return Message(header, bytes(body))
    if len(body) < EXTENDED_HEADER_SIZE:
        raise IGTLProtocolError(f"v2 {header.type} body shorter than its extended header")
    ext_size, meta_head_size, meta_size, _msg_id = _EXT_HEADER.unpack_from(body)
    end = len(body) - meta_head_size - meta_size
    if ext_size < EXTENDED_HEADER_SIZE or end < ext_size:
        raise IGTLProtocolError(f"v2 {header.type}: inconsistent extended header ({ext_size}, {meta_head_size}, {meta_size})")
    content = bytes(body[ext_size:end])
    metadata: dict[str, str] = {}
    if meta_head_size:
        if meta_head_size < 2:
            raise IGTLProtocolError(f"v2 {header.type}: metadata header of {meta_head_size} bytes (needs at least 2)")
        mh = body[end : end + meta_head_size]
        (count,) = struct.unpack_from(">H", mh)
        if meta_head_size != 2 + 8 * count:
            raise IGTLProtocolError(f"v2 {header.type}: metadata header of {meta_head_size} bytes for {count} entries")
        pos = end + meta_head_size
        for i in range(count):
            ksize, _enc, vsize = struct.unpack_from(">HHI", mh, 2 + 8 * i)
            if pos + ksize + vsize > len(body):
                raise IGTLProtocolError(f"v2 {header.type}: metadata runs past the body")
            key = bytes(body[pos : pos + ksize]).decode("utf-8", "replace")
            val = bytes(body[pos + ksize : pos + ksize + vsize]).decode("utf-8", "replace")
            metadata[key] = val
            pos += ksize + vsize
    return Message(header, content, metadata)


def decode_message(data: bytes) -> Message:
    """Decode one complete message (header + body) from ``data``."""
    header = unpack_header(data)
    if len(data) != HEADER_SIZE + header.body_size:
        raise IGTLProtocolError(f"message is {len(data)} bytes, header says {HEADER_SIZE + header.body_size}")
    return decode_body(header, data[HEADER_SIZE:])


# --- TRANSFORM ------------------------------------------------------------------------------


def pack_transform(matrix: ArrayLike) -> bytes:
    """(4, 4) matrix -> 48-byte TRANSFORM content: R11 R21 R31 R12 R22 R32 R13 R23 R33 TX TY TZ."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"TRANSFORM needs a 4x4 matrix, got {m.shape}")
    return _TRANSFORM.pack(*m[:3, :4].T.ravel())  # column-major 3x4


def unpack_transform(content: bytes) -> NDArray[np.float64]:
    """48-byte TRANSFORM content -> (4, 4) float64 matrix (as on the wire, not validated)."""
    if len(content) != _TRANSFORM.size:
        raise IGTLProtocolError(f"TRANSFORM content must be 48 bytes, got {len(content)}")
    m = np.eye(4)
    m[:3, :4] = np.asarray(_TRANSFORM.unpack(content), dtype=np.float64).reshape(4, 3).T
    return m


def transform_message(
    device: str,
    matrix: ArrayLike,
    *,
    timestamp_s: float = 0.0,
    version: int = 1,
    status_ok: bool | None = None,
) -> bytes:
    """A complete TRANSFORM message. With ``status_ok`` set, version 2 carries the PLUS-style
    ``TransformStatus`` metadata ("OK" / "INVALID")."""
    meta = None
    if status_ok is not None:
        version = 2
        meta = {"TransformStatus": "OK" if status_ok else "INVALID"}
    return pack_message("TRANSFORM", device, pack_transform(matrix), timestamp_s=timestamp_s, version=version, metadata=meta)


# --- POSITION -------------------------------------------------------------------------------


def quaternion_from_matrix(r: ArrayLike) -> NDArray[np.float64]:
    """(3, 3) rotation -> unit quaternion (x, y, z, w), w >= 0 (Shepperd's method)."""
    m = np.asarray(r, dtype=np.float64)
    tr = np.trace(m)
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    qa = np.asarray(q)
    qa /= np.linalg.norm(qa)
    return -qa if qa[3] < 0 else qa


def matrix_from_quaternion(q_xyzw: ArrayLike) -> NDArray[np.float64]:
    """Unit quaternion (x, y, z, w) -> (3, 3) rotation."""
    x, y, z, w = np.asarray(q_xyzw, dtype=np.float64) / np.linalg.norm(q_xyzw)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def pack_position(matrix: ArrayLike) -> bytes:
    """(4, 4) rigid matrix -> 28-byte POSITION content: X Y Z OX OY OZ W (float32)."""
    m = np.asarray(matrix, dtype=np.float64)
    q = quaternion_from_matrix(m[:3, :3])
    return struct.pack(">7f", *m[:3, 3], *q)


def unpack_position(content: bytes) -> NDArray[np.float64]:
    """POSITION content (12, 24 or 28 bytes, per the spec) -> (4, 4) matrix.

    24 bytes: quaternion without W (W = sqrt(1 - |v|^2)). 12 bytes (position only) carries no
    orientation: inventing an identity rotation would put the tip of any tool with a tip
    offset in the wrong place, so it raises :class:`IGTLProtocolError` (counted as a bad
    message by receivers).
    """
    n = len(content)
    if n == 12:
        raise IGTLProtocolError("POSITION of 12 bytes is position-only (no orientation): not usable as a pose")
    elif n == 24:
        x, y, z, ox, oy, oz = struct.unpack(">6f", content)
        q = (ox, oy, oz, math.sqrt(max(0.0, 1.0 - ox * ox - oy * oy - oz * oz)))
    elif n == 28:
        x, y, z, *q = struct.unpack(">7f", content)
    else:
        raise IGTLProtocolError(f"POSITION content must be 12, 24 or 28 bytes, got {n}")
    if not np.isfinite(q).all() or np.linalg.norm(q) < 1e-6:
        raise IGTLProtocolError("POSITION quaternion is zero or not finite")
    m = np.eye(4)
    m[:3, :3] = matrix_from_quaternion(q)
    m[:3, 3] = (x, y, z)
    return m


# --- STRING ---------------------------------------------------------------------------------


def pack_string(text: str) -> bytes:
    """STRING content: uint16 encoding (MIBenum 106 = UTF-8), uint16 length, bytes."""
    b = text.encode("utf-8")
    if len(b) > 0xFFFF:
        raise ValueError("STRING longer than 65535 bytes")
    return struct.pack(">HH", 106, len(b)) + b


def unpack_string(content: bytes) -> str:
    if len(content) < 4:
        raise IGTLProtocolError("STRING content shorter than 4 bytes")
    enc, n = struct.unpack_from(">HH", content)
    if 4 + n > len(content):
        raise IGTLProtocolError(f"STRING says {n} bytes, has {len(content) - 4}")
    codec = "ascii" if enc == 3 else "utf-8"
    return content[4 : 4 + n].decode(codec, "replace")


# --- STATUS ---------------------------------------------------------------------------------


class StatusCode(enum.IntEnum):
    """OpenIGTLink STATUS codes (spec, ``igtl_status.h``)."""

    INVALID = 0
    OK = 1
    UNKNOWN_ERROR = 2
    PANIC = 3
    NOT_FOUND = 4
    ACCESS_DENIED = 5
    BUSY = 6
    TIME_OUT = 7
    OVERFLOW = 8
    CHECKSUM_ERROR = 9
    CONFIG_ERROR = 10
    RESOURCE_ERROR = 11
    UNKNOWN_INSTRUCTION = 12
    NOT_READY = 13
    MANUAL_MODE = 14
    DISABLED = 15
    NOT_PRESENT = 16
    UNKNOWN_VERSION = 17
    HARDWARE_FAILURE = 18
    SHUTTING_DOWN = 19


@dataclass(frozen=True)
class Status:
    code: int
    subcode: int = 0
    error_name: str = ""
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.code == StatusCode.OK


def pack_status(status: Status) -> bytes:
    """STATUS content: uint16 code, int64 subcode, char[20] error name, NUL-terminated text."""
    return _STATUS_HEAD.pack(status.code, status.subcode, status.error_name.encode("ascii")[:20]) + status.message.encode("utf-8") + b"\0"


def unpack_status(content: bytes) -> Status:
    if len(content) < _STATUS_HEAD.size:
        raise IGTLProtocolError(f"STATUS content shorter than {_STATUS_HEAD.size} bytes")
    code, sub, name = _STATUS_HEAD.unpack_from(content)
    text = content[_STATUS_HEAD.size :].split(b"\0", 1)[0].decode("utf-8", "replace")
    return Status(code, sub, name.split(b"\0", 1)[0].decode("ascii", "replace"), text)


# --- TDATA ----------------------------------------------------------------------------------

TDATA_TYPE_3D = 1
TDATA_TYPE_6D = 2


def pack_tdata(elements: Iterable[tuple[str, ArrayLike]]) -> bytes:
    """TDATA content: per tool char[20] name, uint8 type (2 = 6D), uint8 reserved, 12 float32."""
    out = bytearray()
    for name, matrix in elements:
        m = np.asarray(matrix, dtype=np.float64)
        out += _TDATA_ELEMENT.pack(name.encode("ascii")[:20], TDATA_TYPE_6D, 0, *m[:3, :4].T.ravel())
    return bytes(out)


def unpack_tdata_elements(content: bytes) -> list[tuple[str, int, NDArray[np.float64]]]:
    """TDATA content -> [(tool name, element type, (4, 4) matrix)] (type 1 = 3D, 2 = 6D)."""
    size = _TDATA_ELEMENT.size
    if len(content) % size:
        raise IGTLProtocolError(f"TDATA content of {len(content)} bytes is not a multiple of {size}")
    out = []
    for off in range(0, len(content), size):
        name, kind, _res, *vals = _TDATA_ELEMENT.unpack_from(content, off)
        m = np.eye(4)
        m[:3, :4] = np.asarray(vals, dtype=np.float64).reshape(4, 3).T
        out.append((name.split(b"\0", 1)[0].decode("ascii", "replace"), int(kind), m))
    return out


def unpack_tdata(content: bytes) -> list[tuple[str, NDArray[np.float64]]]:
    """TDATA content -> [(tool name, (4, 4) matrix)].

    A 3D-type element (position only) has no orientation; its matrix is all NaN (not a pose)
    rather than an invented identity rotation.
    """
    return [(name, m if kind != TDATA_TYPE_3D else np.full((4, 4), np.nan)) for name, kind, m in unpack_tdata_elements(content)]


# --- POLYDATA -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolyData:
    """Geometry of a POLYDATA message: points (n, 3) float32-precision, cells as VTK arrays
    ``[n, i1..in, n, ...]`` (uint32)."""

    points: NDArray[np.float64]
    vertices: NDArray[np.uint32] = field(default_factory=lambda: np.zeros(0, np.uint32))
    lines: NDArray[np.uint32] = field(default_factory=lambda: np.zeros(0, np.uint32))
    polygons: NDArray[np.uint32] = field(default_factory=lambda: np.zeros(0, np.uint32))
    strips: NDArray[np.uint32] = field(default_factory=lambda: np.zeros(0, np.uint32))


def _count_cells(cells: NDArray[np.uint32], what: str) -> int:
    n, i = 0, 0
    while i < len(cells):
        i += int(cells[i]) + 1
        n += 1
    if i != len(cells):
        raise ValueError(f"POLYDATA {what} array is not a valid [n, i1..in, ...] cell array")
    return n


def pack_polydata(poly: PolyData) -> bytes:
    """POLYDATA content (no attributes): header, float32 points, uint32 cell arrays."""
    pts = np.ascontiguousarray(poly.points, dtype=">f4").reshape(-1, 3)
    arrays = [np.ascontiguousarray(a, dtype=">u4").ravel() for a in (poly.vertices, poly.lines, poly.polygons, poly.strips)]
    names = ("vertices", "lines", "polygons", "strips")
    head = [len(pts)]
    for a, name in zip(arrays, names):
        head += [_count_cells(a.astype(np.int64), name), 4 * a.size]
    head.append(0)
    return _POLY_HEAD.pack(*head) + pts.tobytes() + b"".join(a.tobytes() for a in arrays)


def unpack_polydata(content: bytes) -> PolyData:
    """POLYDATA content -> :class:`PolyData` (attributes are skipped)."""
    if len(content) < _POLY_HEAD.size:
        raise IGTLProtocolError("POLYDATA content shorter than its header")
    h = _POLY_HEAD.unpack_from(content)
    npts = h[0]
    sizes = [h[2], h[4], h[6], h[8]]
    need = _POLY_HEAD.size + 12 * npts + sum(sizes)
    if need > len(content) or any(s % 4 for s in sizes):
        raise IGTLProtocolError(f"POLYDATA header announces {need} bytes, content has {len(content)}")
    pos = _POLY_HEAD.size
    pts = np.frombuffer(content, ">f4", 3 * npts, pos).reshape(-1, 3).astype(np.float64)
    pos += 12 * npts
    arrays = []
    for s in sizes:
        arrays.append(np.frombuffer(content, ">u4", s // 4, pos).astype(np.uint32))
        pos += s
    return PolyData(pts, *arrays)


def polydata_from_mesh(mesh: object) -> PolyData:
    """A :class:`PolyData` from a pyvista.PolyData (points and faces / lines / verts as stored)."""
    pts = np.asarray(mesh.points, dtype=np.float64)  # type: ignore[attr-defined]
    return PolyData(
        pts,
        vertices=np.asarray(getattr(mesh, "verts", np.zeros(0)), dtype=np.uint32),
        lines=np.asarray(getattr(mesh, "lines", np.zeros(0)), dtype=np.uint32),
        polygons=np.asarray(getattr(mesh, "faces", np.zeros(0)), dtype=np.uint32),
        strips=np.asarray(getattr(mesh, "strips", np.zeros(0)), dtype=np.uint32),
    )


# --- Stream parser --------------------------------------------------------------------------


@dataclass
class ParserStats:
    """What the parser accepted and what it had to skip."""

    messages: int = 0
    bad_crc: int = 0
    bad_header: int = 0  #: implausible headers (each costs a resync)
    oversized: int = 0  #: headers announcing a body above the limit
    skipped_bytes: int = 0  #: bytes discarded while resynchronising


class StreamParser:
    """Incremental decoder of an OpenIGTLink byte stream.

    :meth:`feed` appends received bytes and returns every complete message. A header that
    is implausible (bad version, type or name, or a body over ``max_body``) costs one byte:
    the parser slides forward until the next plausible header (resynchronisation). A message
    whose CRC fails is skipped whole. Problems are counted in :attr:`stats` and logged; no
    exception escapes :meth:`feed` for bad data.
    """

    def __init__(self, *, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.max_body = max_body
        self.stats = ParserStats()
        self._buf = bytearray()
        self._header: Header | None = None
        self.last_error: str | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        buf = self._buf
        pos = 0
        while True:
            if self._header is None:
                if len(buf) - pos < HEADER_SIZE:
                    break
                try:
                    self._header = unpack_header(memoryview(buf)[pos : pos + HEADER_SIZE], max_body=self.max_body)
                except IGTLProtocolError as e:
                    if "exceeds the limit" in str(e):
                        self.stats.oversized += 1
                    else:
                        self.stats.bad_header += 1
                    self._note(str(e))
                    nxt = self._find_candidate(buf, pos + 1)
                    self.stats.skipped_bytes += nxt - pos
                    pos = nxt
                    continue
                pos += HEADER_SIZE
            h = self._header
            if len(buf) - pos < h.body_size:
                break
            body = bytes(buf[pos : pos + h.body_size])
            pos += h.body_size
            self._header = None
            try:
                msg = decode_body(h, body)
            except (IGTLProtocolError, struct.error, ValueError) as e:  # no decoder slip escapes feed()
                if "CRC" in str(e):
                    self.stats.bad_crc += 1
                else:
                    self.stats.bad_header += 1
                self._note(str(e))
                continue
            self.stats.messages += 1
            out.append(msg)
        del buf[:pos]
        return out

    @staticmethod
    def _find_candidate(buf: bytearray, start: int) -> int:
        """Next offset whose first two bytes could be a header version (0x00 0x01 / 0x00 0x02)."""
        i = start
        n = len(buf)
        while i < n - 1:
            j = buf.find(b"\x00", i, n - 1)
            if j < 0:
                return max(start, n - 1)
            if buf[j + 1] in (1, 2):
                return j
            i = j + 1
        return max(start, n - 1) if n > start else start

    def _note(self, problem: str) -> None:
        self.last_error = problem
        log.debug("OpenIGTLink stream: %s", problem)

    @property
    def buffered(self) -> int:
        return len(self._buf)


def as_device_name(tool: str) -> str:
    """Tool name -> OpenIGTLink device name (``Pointer`` -> ``PointerToTracker``)."""
    return f"{tool}ToTracker"


def tool_from_device(device: str) -> str:
    """``PointerToTracker`` -> ``Pointer``; other names are returned unchanged."""
    return device[: -len("ToTracker")] if device.endswith("ToTracker") and len(device) > 9 else device


__all__ = [
    "HEADER_SIZE",
    "Header",
    "IGTLProtocolError",
    "Message",
    "ParserStats",
    "PolyData",
    "Status",
    "StatusCode",
    "StreamParser",
    "as_device_name",
    "crc64",
    "decode_message",
    "pack_header",
    "pack_message",
    "pack_polydata",
    "pack_position",
    "pack_status",
    "pack_string",
    "pack_tdata",
    "pack_transform",
    "polydata_from_mesh",
    "tool_from_device",
    "transform_message",
    "unpack_header",
    "unpack_polydata",
    "unpack_position",
    "unpack_status",
    "unpack_string",
    "unpack_tdata",
    "unpack_tdata_elements",
    "unpack_transform",
]
