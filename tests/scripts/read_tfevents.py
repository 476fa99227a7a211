#!/usr/bin/env python3
"""Reads TensorBoard event files with the standard library only, independently of the C++ writer.

  read_tfevents.py FILE...   prints one JSON object per record:
                             {"file", "wall_time", "step", "file_version"?, "values": {tag: float}}

Every record's framing is checked (uint64 length, masked CRC-32C of the length, data, masked
CRC-32C of the data); any damage is an error (exit status 1) naming the file and the offset.
"""
import json
import struct
import sys


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def varint(buf, pos):
    result, shift = 0, 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def fields(buf):
    """(field number, wire type, value) of a protobuf message; value is int, float bytes or bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = varint(buf, pos)
        field, wt = key >> 3, key & 7
        if wt == 0:
            v, pos = varint(buf, pos)
        elif wt == 1:
            v, pos = buf[pos:pos + 8], pos + 8
        elif wt == 5:
            v, pos = buf[pos:pos + 4], pos + 4
        elif wt == 2:
            n, pos = varint(buf, pos)
            v, pos = buf[pos:pos + n], pos + n
        else:
            raise ValueError("wire type %d" % wt)
        yield field, wt, v


def decode_event(buf):
    ev = {"wall_time": 0.0, "step": 0, "values": {}}
    for field, wt, v in fields(buf):
        if field == 1 and wt == 1:
            ev["wall_time"] = struct.unpack("<d", v)[0]
        elif field == 2 and wt == 0:
            ev["step"] = v if v < 1 << 63 else v - (1 << 64)
        elif field == 3 and wt == 2:
            ev["file_version"] = v.decode()
        elif field == 5 and wt == 2:
            for sf, swt, value in fields(v):
                if sf != 1 or swt != 2:
                    continue
                tag, simple = None, None
                for vf, vwt, x in fields(value):
                    if vf == 1 and vwt == 2:
                        tag = x.decode()
                    elif vf == 2 and vwt == 5:
                        simple = struct.unpack("<f", x)[0]
                if tag is not None and simple is not None:
                    ev["values"][tag] = simple
    return ev


def read(path):
    with open(path, "rb") as f:
        data = f.read()
    pos, out = 0, []
    while pos < len(data):
        if len(data) - pos < 12:
            raise ValueError("%s: truncated record header at offset %d" % (path, pos))
        (length,) = struct.unpack_from("<Q", data, pos)
        (len_crc,) = struct.unpack_from("<I", data, pos + 8)
        if masked(data[pos:pos + 8]) != len_crc:
            raise ValueError("%s: bad length CRC at offset %d" % (path, pos))
        body = data[pos + 12:pos + 12 + length]
        if len(body) != length or len(data) < pos + 16 + length:
            raise ValueError("%s: truncated record at offset %d" % (path, pos))
        (data_crc,) = struct.unpack_from("<I", data, pos + 12 + length)
        if masked(body) != data_crc:
            raise ValueError("%s: bad data CRC at offset %d" % (path, pos))
        ev = decode_event(body)
        ev["file"] = path
        out.append(ev)
        pos += 16 + length
    return out


def main(argv):
    # Known answer of CRC-32C (RFC 3720, B.4): the reader itself must be right.
    assert crc32c(b"123456789") == 0xE3069283
    try:
        for path in argv[1:]:
            for ev in read(path):
                print(json.dumps(ev))
    except (ValueError, IndexError, struct.error, OSError) as e:
        print("read_tfevents: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
