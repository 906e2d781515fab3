"""OpenIGTLink wire format: round trips, pyigtl cross-checks, CRC, and a fuzzed stream parser."""

from __future__ import annotations

import numpy as np
import pyigtl
import pytest

from orthonav.core.transforms import random_rigid
from orthonav.tracking import igtl_protocol as P


def test_crc64_matches_reference_check_value_and_python_table():
    # CRC-64/ECMA-182 (init 0, no reflection, no xorout): check value of "123456789"
    assert P.crc64(b"123456789") == 0x6C40DF5F0B497347
    data = bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8))
    assert P.crc64(data) == P.crc64_python(data)


def test_timestamp_32_32_fixed_point_round_trip():
    for t in (0.0, 1.5, 1732500000.123456, 4294967295.9999):
        sec, frac = P.timestamp_to_wire(t)
        assert abs(P.timestamp_from_wire(sec, frac) - t) < 1e-9 * max(1.0, t) + 2.4e-10


def test_transform_round_trip_is_column_major_and_matches_pyigtl():
    m = random_rigid(np.random.default_rng(1), max_translation_mm=300)
    raw = P.transform_message("PointerToTracker", m, timestamp_s=1234.25)
    msg = P.decode_message(raw)
    assert msg.type == "TRANSFORM" and msg.device == "PointerToTracker" and msg.header.timestamp_s == 1234.25
    np.testing.assert_allclose(P.unpack_transform(msg.content), m.astype(np.float32), atol=0)
    # an independent implementation decodes our bytes to the same matrix (and column order)
    header = pyigtl.MessageBase.parse_header(raw[:58])
    theirs = pyigtl.TransformMessage()
    theirs.unpack(header, raw[58:])
    np.testing.assert_allclose(theirs.matrix, m, atol=1e-4)
    # ... and we decode theirs, including v2 metadata and their CRC
    tm = pyigtl.TransformMessage(m, device_name="Saw", timestamp=5.0)
    tm.header_version = 2
    tm.metadata = {"TransformStatus": "INVALID"}
    back = P.decode_message(tm.pack())
    assert back.metadata == {"TransformStatus": "INVALID"}
    np.testing.assert_allclose(P.unpack_transform(back.content), m, atol=1e-4)


def test_position_string_status_tdata_polydata_round_trip():
    m = random_rigid(np.random.default_rng(2))
    np.testing.assert_allclose(P.unpack_position(P.pack_position(m)), m, atol=1e-4)
    assert P.unpack_string(P.pack_string("héllo")) == "héllo"
    st = P.Status(P.StatusCode.NOT_READY, -3, "NotVisible", "gone")
    assert P.unpack_status(P.pack_status(st)) == st
    pairs = P.unpack_tdata(P.pack_tdata([("Pointer", m), ("Saw", np.eye(4))]))
    assert [n for n, _ in pairs] == ["Pointer", "Saw"]
    np.testing.assert_allclose(pairs[0][1], m, atol=1e-4)
    poly = P.PolyData(np.arange(12.0).reshape(4, 3), polygons=np.array([3, 0, 1, 2, 3, 0, 2, 3], np.uint32))
    back = P.unpack_polydata(P.pack_polydata(poly))
    np.testing.assert_array_equal(back.points, poly.points)
    np.testing.assert_array_equal(back.polygons, poly.polygons)


def test_bad_crc_is_rejected():
    raw = bytearray(P.transform_message("A", np.eye(4)))
    raw[-1] ^= 0x01
    with pytest.raises(P.IGTLProtocolError, match="CRC"):
        P.decode_message(bytes(raw))


def _stream(rng: np.random.Generator, n: int) -> tuple[list[bytes], list[np.ndarray]]:
    msgs, poses = [], []
    for i in range(n):
        m = random_rigid(rng, max_translation_mm=200)
        poses.append(m)
        msgs.append(P.transform_message(f"T{i % 7}ToTracker", m, timestamp_s=float(i)))
    return msgs, poses


def test_parser_handles_arbitrary_chunking():
    rng = np.random.default_rng(3)
    msgs, poses = _stream(rng, 200)
    data = b"".join(msgs)
    parser = P.StreamParser()
    out = []
    pos = 0
    while pos < len(data):
        k = int(rng.integers(1, 150))
        out += parser.feed(data[pos : pos + k])
        pos += k
    assert len(out) == 200 and parser.buffered == 0
    for msg, m in zip(out, poses):
        np.testing.assert_allclose(P.unpack_transform(msg.content), m, atol=1e-4)


def test_fuzzed_stream_resynchronises_and_never_raises():
    """Thousands of mutated messages: garbage, flipped bytes, truncation, oversize claims."""
    rng = np.random.default_rng(4)
    msgs, _ = _stream(rng, 3000)
    chunks, intact = [], 0
    kinds = []
    for raw in msgs:
        kind = rng.choice(["ok", "ok", "ok", "garbage", "flip_body", "flip_header", "truncate", "oversize"])
        kinds.append(kind)
        b = bytearray(raw)
        if kind == "ok":
            intact += 1
        elif kind == "garbage":
            chunks.append(bytes(rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8)))
            intact += 1
        elif kind == "flip_body":
            b[58 + int(rng.integers(0, 48))] ^= 1 << int(rng.integers(0, 8))
        elif kind == "flip_header":
            b[int(rng.integers(0, 2))] ^= 0xFF  # version field broken
        elif kind == "truncate":
            b = b[: int(rng.integers(1, len(b)))]
        elif kind == "oversize":
            b[42:50] = (1 << 40).to_bytes(8, "big")
        chunks.append(bytes(b))
    data = b"".join(chunks)
    parser = P.StreamParser(max_body=1 << 20)
    out = []
    for i in range(0, len(data), 997):
        out += parser.feed(data[i : i + 997])
    st = parser.stats
    # every decoded message is genuine (CRC-checked) and most intact ones survive resync
    assert all(m.type == "TRANSFORM" and m.device.endswith("ToTracker") for m in out)
    assert len(out) <= intact
    assert len(out) >= 0.9 * intact, (len(out), intact, st)
    assert st.bad_crc > 0 and st.bad_header > 0 and st.oversized > 0 and st.skipped_bytes > 0
    # the stream is usable after the fuzz: a clean message decodes at once
    tail = parser.feed(P.transform_message("AfterToTracker", np.eye(4)) * 2)
    assert [m.device for m in tail][-1] == "AfterToTracker"


def test_coalesce_keeps_newest_pose_per_device_and_every_status():
    from orthonav.tracking.igtl_receive import coalesce

    def tr(dev, t):
        return P.decode_message(P.transform_message(dev, np.eye(4), timestamp_s=t))

    ok = P.decode_message(P.pack_message("STATUS", "AToTracker", P.pack_status(P.Status(P.StatusCode.OK)), timestamp_s=9))
    msgs = [tr("AToTracker", 1), tr("BToTracker", 2), tr("AToTracker", 3), ok, P.decode_message(P.pack_message("STRING", "S", P.pack_string("x")))]
    kept, skipped = coalesce(msgs)
    assert skipped == 1
    assert [(m.type, m.device, m.header.timestamp_s) for m in kept] == [
        ("TRANSFORM", "BToTracker", 2.0), ("TRANSFORM", "AToTracker", 3.0), ("STATUS", "AToTracker", 9.0), ("STRING", "S", 0.0)]


def test_names_that_do_not_fit_the_header_are_input_errors():
    from orthonav.core.errors import InputError

    with pytest.raises(InputError, match="longer than 20 bytes"):
        P.transform_message(P.as_device_name("AVeryLongToolName"), np.eye(4))
    with pytest.raises(InputError, match="ASCII"):
        P.transform_message("Säge", np.eye(4))


def _v2_with_body(body: bytes, device: str = "PointerToTracker") -> bytes:
    """A v2 TRANSFORM with ``body`` and a correct header CRC (so only the body's structure is wrong)."""
    return P.pack_header(2, "TRANSFORM", device, 1.0, body) + body


def test_one_byte_metadata_header_is_a_protocol_error_not_a_crash():
    """Review P1: a valid-CRC v2 message whose metadata header is 1 byte used to raise struct.error."""
    content = P.pack_transform(np.eye(4))
    ext = P._EXT_HEADER.pack(P.EXTENDED_HEADER_SIZE, 1, 0, 0)
    raw = _v2_with_body(ext + content + b"\x00")
    with pytest.raises(P.IGTLProtocolError, match="metadata header"):
        P.decode_message(raw)
    parser = P.StreamParser()
    good = P.transform_message("SawToTracker", np.eye(4), timestamp_s=2.0)
    msgs = parser.feed(raw + good)  # must not raise, and the stream goes on
    assert [m.device for m in msgs] == ["SawToTracker"] and parser.stats.bad_header == 1


def test_fuzzed_v2_extended_header_and_metadata_with_valid_crc():
    """Mutate the v2 extended header and metadata fields, recompute the CRC: only
    IGTLProtocolError may come out of decode_message, and nothing out of StreamParser.feed."""
    rng = np.random.default_rng(11)
    base = P.pack_message("TRANSFORM", "PointerToTracker", P.pack_transform(np.eye(4)), timestamp_s=1.0, version=2,
                          metadata={"TransformStatus": "OK", "Quality": "0.1"})
    body0 = bytearray(base[P.HEADER_SIZE:])
    n_meta_fields = 2 + 8 * 2  # count + two 8-byte entries, right after the 48-byte content
    meta_off = P.EXTENDED_HEADER_SIZE + 48
    tail = P.transform_message("SawToTracker", np.eye(4), timestamp_s=3.0)
    decoded = errors = 0
    for k in range(3000):
        body = bytearray(body0)
        for _ in range(int(rng.integers(1, 4))):
            if rng.random() < 0.5:  # extended header: ext size, meta header size, meta size, msg id
                pos = int(rng.integers(0, P.EXTENDED_HEADER_SIZE))
            else:  # metadata header / key / value bytes
                pos = meta_off + int(rng.integers(0, n_meta_fields + 8))
            body[pos] = int(rng.integers(0, 256)) if rng.random() < 0.7 else rng.choice([0, 1, 2, 255])
        if rng.random() < 0.2:  # also change the length
            body = body[: int(rng.integers(0, len(body)))] if rng.random() < 0.5 else body + bytes(int(rng.integers(1, 20)))
        raw = _v2_with_body(bytes(body))
        try:
            P.decode_message(raw)
            decoded += 1
        except P.IGTLProtocolError:
            errors += 1
        parser = P.StreamParser()
        msgs = parser.feed(raw + tail)  # never raises; the next message still arrives
        assert msgs and msgs[-1].device == "SawToTracker", k
    assert decoded > 0 and errors > 1000  # the fuzz reached both outcomes


def test_position_only_and_3d_tdata_are_not_poses():
    """Review P3: no invented identity rotation for data that carries no orientation."""
    with pytest.raises(P.IGTLProtocolError, match="position-only"):
        P.unpack_position(np.array([1, 2, 3], dtype=">f4").tobytes())
    m = random_rigid(np.random.default_rng(2))
    content = bytearray(P.pack_tdata([("Pointer", m), ("Saw", m)]))
    content[P._TDATA_ELEMENT.size + 20] = P.TDATA_TYPE_3D  # the Saw element says "3D (position only)"
    (pname, pm), (sname, sm) = P.unpack_tdata(bytes(content))
    np.testing.assert_allclose(pm, m, atol=1e-4)
    assert sname == "Saw" and np.isnan(sm).all()
