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

Limits of the stream parser (per connection; see :class:`StreamParser`)
------------------------------------------------------------------------
* Header versions 1, 2 and 3 are accepted (OpenIGTLink 3 still sends header version 2; a
  version-3 header is read with the v2 body layout). Type names are upper-case ASCII
  (``A-Z 0-9 _``), NUL padded; device names printable ASCII.
* Pose and small control types keep strict sizes (``_TYPE_MAX``: a v1 TRANSFORM is exactly 48
  bytes, a v2 one at most 48 + 64 KiB of extended header and metadata). A header breaking
  them is corrupt: the parser resynchronises at once (byte scan for the next header).
* Any other well-formed header (IMAGE, VIDEO, POLYDATA, NDARRAY, an unknown type) is a
  message: a body up to ``max_body`` is buffered and delivered; a body up to ``max_message``
  (:data:`DEFAULT_MAX_MESSAGE`, 64 MiB) is *skipped by its declared size* in chunks, never
  buffered whole and not CRC-checked (a PLUS IMAGE costs a receive chunk, not 6 MB);
  a body over ``max_message`` makes the stream unusable (:attr:`StreamParser.fatal`): the
  receiver drops the connection and reconnects at once. This applies to a header met *in
  sync* (at the start of the stream or right after a good message), once the first
  :data:`OVER_LIMIT_WINDOW` (64 KiB) of its body hold no valid pose; one met while
  resynchronising after bad data is garbage by all evidence (e.g. the timestamp bytes
  ``00 01 33 5A`` of a damaged message read as a header) and is only skipped over.
* A header whose body is still arriving is not trusted blindly: the bytes received inside
  that body are searched for a complete, CRC-64-valid pose message (TRANSFORM, POSITION,
  TDATA, STATUS). One found means the header was false (corrupt or garbage): it is dropped
  and parsing resumes at that message, so a bad header never blinds the stream beyond the
  next valid pose. (A genuine body that embeds a whole CRC-valid OpenIGTLink pose message
  would be cut there; no IMAGE or mesh does.)
* A buffered message whose CRC fails is rescanned from the byte after its header start, so
  a header with a corrupted size cannot swallow the messages behind it.
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
#: Largest body a :class:`StreamParser` buffers and delivers by default (bytes).
DEFAULT_MAX_BODY = 64 * 1024 * 1024
#: Largest body a :class:`StreamParser` will skip by its declared size (bytes, per message);
#: a well-formed header announcing more ends the connection (:attr:`StreamParser.fatal`).
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
#: Body bytes of a header announcing more than ``max_message`` that are searched for a valid
#: pose before the header is believed and the stream declared unusable (a real oversized
#: IMAGE delivers them in well under a millisecond; junk that merely looks like such a header
#: is followed by the next pose long before).
OVER_LIMIT_WINDOW = 1 << 16
#: Header versions accepted on receive (3: OpenIGTLink 3 peers; body read as version 2).
HEADER_VERSIONS = (1, 2, 3)
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


def crc64_python(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """Table-driven CRC-64/ECMA-182 (MSB first, init 0, no final xor), as ``igtl_util.c``.

    ``crc`` continues a CRC over earlier bytes (``crc64(a + b) == crc64(b, crc64(a))``)."""
    table = _TABLE
    for b in bytes(data):
        crc = table[((crc >> 56) ^ b) & 0xFF] ^ ((crc << 8) & 0xFFFFFFFFFFFFFFFF)
    return crc


try:  # crcmod ships with pyigtl and has a C extension: ~0.5 us for a TRANSFORM body, 3 ns/byte
    import crcmod as _crcmod

    _crc_c = _crcmod.mkCrcFun(0x1_0000_0000_0000_0000 | CRC64_POLY, initCrc=0, rev=False, xorOut=0)

    def crc64(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
        """CRC-64/ECMA-182 of ``data`` (the OpenIGTLink body checksum); ``crc`` continues a
        CRC over earlier bytes (``crc64(a + b) == crc64(b, crc64(a))``)."""
        return _crc_c(bytes(data) if isinstance(data, memoryview) else data, crc)

except ImportError:  # pragma: no cover - crcmod is a pyigtl dependency
    crc64 = crc64_python


# --- Header ---------------------------------------------------------------------------------


class IGTLProtocolError(TrackingError):
    """A message that cannot be decoded (bad header, bad CRC, malformed body)."""


class IGTLOversizeError(IGTLProtocolError):
    """A header announcing a body over a limit.

    ``strict`` is True when the size breaks the type's own limit (a 6 MB TRANSFORM: the
    header is corrupt) and False when only the receiver's ``max_body`` is exceeded (a
    well-formed header of a bulk type, e.g. a huge IMAGE); then ``header`` is the decoded
    header (otherwise None).
    """

    def __init__(self, problem: str, *, strict: bool, header: "Header | None" = None) -> None:
        super().__init__(problem)
        self.strict = strict
        self.header = header


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
    """Upper-case ASCII letters, digits and ``_``, starting with a letter (every type of the
    specification does; a leading digit is a timestamp or size byte seen out of sync)."""
    return 0 < len(s) and "A" <= s[0] <= "Z" and all(c.isupper() or c.isdigit() or c == "_" for c in s)


_V2_META_MAX = 1 << 16  # generous room for v2 extended header + metadata on small messages
#: Largest plausible body per message type (beyond: the header is garbage or hostile).
_TYPE_MAX = {"TRANSFORM": 48, "POSITION": 28, "STATUS": 30 + (1 << 16), "STRING": 4 + 0xFFFF, "TDATA": 70 * 4096}


def _type_limit(version: int, msg_type: str) -> int | None:
    """Largest plausible body of a pose / control type (bytes), None for bulk types."""
    if msg_type.startswith(_CONTROL_PREFIXES):
        return 4096
    limit = _TYPE_MAX.get(msg_type)
    if limit is None:
        return None
    return limit + _V2_META_MAX if version >= 2 else limit


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
    IGTLOversizeError
        A body larger than its type allows (``strict``) or than ``max_body`` bytes.
    IGTLProtocolError
        Unknown version (not 1-3), a type name that is not upper-case ASCII, a non-ASCII
        device name, or a size a fixed-size v1 body cannot have.
    """
    if len(raw) < HEADER_SIZE:
        raise IGTLProtocolError(f"header needs {HEADER_SIZE} bytes, got {len(raw)}")
    version, t, d, sec, frac, size, crc = _HEADER.unpack_from(raw)
    if version not in HEADER_VERSIONS:
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
    type_limit = _type_limit(version, msg_type)
    if type_limit is not None and size > type_limit:
        raise IGTLOversizeError(f"{msg_type} body of {size} bytes exceeds the limit of its type ({type_limit})", strict=True)
    if not _size_fits(version, msg_type, size):
        raise IGTLProtocolError(f"{msg_type} v{version} body cannot be {size} bytes")
    header = Header(version, msg_type, device, timestamp_from_wire(sec, frac), size, crc)
    if size > max_body:
        raise IGTLOversizeError(f"{msg_type} body of {size} bytes exceeds the limit ({max_body})", strict=False, header=header)
    return header


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

#: Type fields (12 bytes, NUL padded) of the pose-carrying messages searched for inside a body
#: the parser is still waiting for (a hit proves the pending header false).
_POSE_SIGNATURES = tuple(t.encode("ascii").ljust(12, b"\0") for t in ("TRANSFORM", "POSITION", "TDATA", "STATUS"))


@dataclass
class ParserStats:
    """What the parser accepted and what it had to skip."""

    messages: int = 0
    bad_crc: int = 0
    bad_header: int = 0  #: implausible or false headers (each costs a resync)
    oversized: int = 0  #: headers announcing a body above their type's limit or ``max_message``
    skipped_bytes: int = 0  #: bytes discarded while resynchronising
    skipped_messages: int = 0  #: well-formed messages above ``max_body``, skipped by declared size
    skipped_body_bytes: int = 0  #: bytes of those bodies
    false_headers: int = 0  #: pending headers dropped because a valid pose started inside their body


class StreamParser:
    """Incremental decoder of one connection's OpenIGTLink byte stream.

    :meth:`feed` appends received bytes and returns every complete message. Bad data never
    raises; it is counted in :attr:`stats` (last problem in :attr:`last_error`):

    * an implausible header (bad version, type or name, a pose type with an impossible size)
      costs a byte scan to the next plausible header (resynchronisation, same buffer chunk);
    * a body up to ``max_body`` bytes is buffered, CRC-checked and delivered; a CRC failure
      rescans from the byte after the header start (the header may be the corrupt part);
    * a well-formed body over ``max_body`` but within ``max_message`` is skipped by its
      declared size in chunks, never buffered whole, and not CRC-checked (CRC-64 runs at
      ~260 MB/s here: PLUS' 6 MB frames at 30 Hz would cost most of a core; the search for
      embedded poses below is what catches a false header);
    * a well-formed header announcing more than ``max_message`` met in sync (stream start or
      right after a good message) sets :attr:`fatal` once ``OVER_LIMIT_WINDOW`` bytes of its
      body held no valid pose (the stream cannot be followed: the caller drops the
      connection); :meth:`feed` then ignores further data. Met while resynchronising, it
      counts as oversized and the scan goes on;
    * while a body is pending, its received bytes are searched for a complete CRC-valid pose
      message: one found means the pending header was false; parsing resumes there.

    Memory per parser: at most ``max_body`` + one received chunk + one pending pose message
    (< 400 kB); a skipped body costs nothing beyond the received chunk.

    Parameters
    ----------
    max_body
        Largest body buffered and delivered (bytes).
    max_message
        Largest body skipped by declared size (bytes; at least ``max_body``).
    """

    def __init__(self, *, max_body: int = DEFAULT_MAX_BODY, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_body = int(max_body)
        self.max_message = max(int(max_message), self.max_body)
        self.stats = ParserStats()
        self._buf = bytearray()
        self._header: Header | None = None  #: header at the start of the buffer, body pending
        self._done = 0  #: body bytes of ``_header`` already skipped (discarded)
        self._scan_rel = 1  #: embedded-message search resumes at header start + this
        self._over_limit = False  #: ``_header`` announces more than ``max_message``
        self._in_sync = True  #: at the stream start or right after a good message
        self.last_error: str | None = None
        #: Why the stream cannot be followed (a body over ``max_message``), else None.
        self.fatal: str | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Append received bytes; return the messages completed by them (in stream order)."""
        if self.fatal is not None:
            return []
        buf = self._buf
        buf += data
        out: list[Message] = []
        pos = 0
        while True:
            h = self._header
            if h is None:
                if len(buf) - pos < HEADER_SIZE:
                    break
                try:
                    h = unpack_header(memoryview(buf)[pos : pos + HEADER_SIZE], max_body=self.max_message)
                except IGTLOversizeError as e:
                    self.stats.oversized += 1
                    self._note(str(e))
                    if e.strict or not self._in_sync or e.header is None:
                        pos = self._resync(buf, pos)
                        continue
                    # in sync: skip its body while searching it, believe it after the window
                    h = e.header
                    self._header, self._done, self._scan_rel, self._over_limit = h, 0, 1, True
                except IGTLProtocolError as e:
                    self.stats.bad_header += 1
                    self._note(str(e))
                    pos = self._resync(buf, pos)
                    continue
                end = pos + HEADER_SIZE + h.body_size
                if end <= len(buf) and h.body_size <= self.max_body:  # the common case: all here
                    pos = self._decode(buf, pos, h, out)
                    continue
                self._header, self._done, self._scan_rel = h, 0, 1
            # a body that is skipped (over max_body) or still arriving
            start = pos + HEADER_SIZE  # buf[pos:start] is h; buf[start:] the rest of its body
            left = h.body_size - self._done
            complete = len(buf) - start >= left
            if complete and h.body_size <= self.max_body:
                self._header = None
                pos = self._decode(buf, pos, h, out)
                continue
            # is there a valid pose message inside (what we have of) the body?
            hit, safe = self._find_embedded(buf, pos + self._scan_rel, min(len(buf), start + left))
            if hit is not None:
                self.stats.bad_header += 1
                self.stats.false_headers += 1
                self.stats.skipped_bytes += hit - pos
                self._note(f"{h.type} header announcing {h.body_size} bytes is false: a valid message starts inside its body")
                self._header = None
                self._over_limit = False
                self._in_sync = False
                pos = hit
                continue
            if complete:  # a skipped body, whole: not CRC-checked (the search above stands for it)
                self._header = None
                self.stats.skipped_messages += 1
                self.stats.skipped_body_bytes += left
                self._in_sync = True
                pos = start + left
                continue
            self._scan_rel = safe - pos
            if h.body_size > self.max_body and safe > start:  # skip what has been searched
                n = safe - start
                del buf[start:safe]
                self._done += n
                self.stats.skipped_body_bytes += n
                self._scan_rel -= n
            if self._over_limit and self._done >= OVER_LIMIT_WINDOW:
                self.fatal = f"{h.type} body of {h.body_size} bytes is over the per-message limit of this connection ({self.max_message})"
                self._header, self._over_limit = None, False
                pos = len(buf)
                buf.clear()
                return out
            break
        del buf[:pos]
        return out

    def _decode(self, buf: bytearray, pos: int, h: Header, out: list[Message]) -> int:
        """Decode the complete message at ``pos`` into ``out``; the offset to go on from."""
        end = pos + HEADER_SIZE + h.body_size
        try:
            msg = decode_body(h, bytes(buf[pos + HEADER_SIZE : end]))
        except (IGTLProtocolError, struct.error, ValueError) as e:  # no decoder slip escapes feed()
            self._note(str(e))
            if "CRC" in str(e):  # the header may be the corrupt part: rescan from its next byte
                self.stats.bad_crc += 1
                return self._resync(buf, pos)
            self.stats.bad_header += 1
            return end
        self.stats.messages += 1
        self._in_sync = True
        out.append(msg)
        return end

    def _resync(self, buf: bytearray, pos: int) -> int:
        """Offset of the next plausible header after ``pos``; counts the bytes skipped."""
        self._in_sync = False
        nxt = self._find_candidate(buf, pos + 1)
        self.stats.skipped_bytes += nxt - pos
        return nxt

    @staticmethod
    def _find_candidate(buf: bytearray, start: int) -> int:
        """Next offset whose first two bytes could be a header version (0x00 then 1, 2 or 3).

        With none, the end of the buffer, keeping a final 0x00 (it may start a header)."""
        i, n = start, len(buf)
        while True:
            j = buf.find(b"\x00", i)
            if j < 0:
                return max(start, n)
            if j == n - 1 or buf[j + 1] in HEADER_VERSIONS:
                return j
            i = j + 1

    def _find_embedded(self, buf: bytearray, lo: int, hi: int) -> tuple[int | None, int]:
        """Search ``buf[lo:hi]`` for the start of a complete, CRC-valid pose message.

        Returns (its offset or None, the offset up to which the search is final: a candidate
        whose header or body is not complete yet, or a type field not fully received, holds it).
        """
        safe = min(hi, max(lo, len(buf) - 13))  # a type field at c + 2 needs buf[c + 2 : c + 14]
        if hi <= lo:
            return None, max(lo, min(hi, safe))
        cands: list[int] = []
        for sig in _POSE_SIGNATURES:
            i = buf.find(sig, lo + 2, hi + 13)
            while i >= 0:
                cands.append(i - 2)
                i = buf.find(sig, i + 1, hi + 13)
        for c in sorted(cands):
            if buf[c] != 0 or buf[c + 1] not in HEADER_VERSIONS:
                continue
            if c + HEADER_SIZE > len(buf):
                return None, min(safe, c)
            try:
                ch = unpack_header(memoryview(buf)[c : c + HEADER_SIZE], max_body=self.max_body)
            except IGTLProtocolError:
                continue
            end = c + HEADER_SIZE + ch.body_size
            if end > len(buf):
                safe = min(safe, c)  # decide when it is complete; later ones may be complete now
                continue
            if crc64(buf[c + HEADER_SIZE : end]) == ch.crc:
                return c, safe
        return None, safe

    def _note(self, problem: str) -> None:
        self.last_error = problem
        log.debug("OpenIGTLink stream: %s", problem)

    @property
    def buffered(self) -> int:
        """Bytes held (an incomplete header or body)."""
        return len(self._buf)

    @property
    def in_message(self) -> bool:
        """True while part of a message has been received (a read timeout applies)."""
        return self.fatal is None and (self._header is not None or bool(self._buf))


def as_device_name(tool: str) -> str:
    """Tool name -> OpenIGTLink device name (``Pointer`` -> ``PointerToTracker``)."""
    return f"{tool}ToTracker"


def tool_from_device(device: str) -> str:
    """``PointerToTracker`` -> ``Pointer``; other names are returned unchanged."""
    return device[: -len("ToTracker")] if device.endswith("ToTracker") and len(device) > 9 else device


__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_MESSAGE",
    "HEADER_SIZE",
    "HEADER_VERSIONS",
    "Header",
    "OVER_LIMIT_WINDOW",
    "IGTLOversizeError",
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
