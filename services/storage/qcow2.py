"""Reading a qcow2 header directly: virtual size, backing file and snapshot count of every
volume of a pool, without one qemu-img process per file."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"QFI\xfb"
_HEADER = struct.Struct(">4sIQIIQIIQQIIQ")  # the fields of version 2, common to version 3
_MAX_BACKING_NAME = 1023  # qemu's own limit
_FIRST_READ_BYTES = 64 * 1024


@dataclass(frozen=True)
class Qcow2Header:
    virtual_size_bytes: int
    backing_file: str | None
    snapshot_count: int


def parse_header(data: bytes) -> Qcow2Header | None:
    """The header of a qcow2 image given its first bytes (at least 72, plus the backing file
    name if it has one); None when the data is not qcow2."""
    if len(data) < _HEADER.size or data[:4] != MAGIC:
        return None
    (_magic, _version, backing_offset, backing_size, _cluster_bits, size, _crypt, _l1_size,
     _l1_offset, _refcount_offset, _refcount_clusters, snapshot_count, _snap_offset) = _HEADER.unpack_from(data)
    backing = None
    if backing_offset and 0 < backing_size <= _MAX_BACKING_NAME:
        raw = data[backing_offset: backing_offset + backing_size]
        backing = raw.decode("utf-8", errors="replace") if len(raw) == backing_size else None
    return Qcow2Header(size, backing, snapshot_count)


def read_header(path: Path) -> Qcow2Header | None:
    """None when the file is missing or not qcow2. qemu keeps the header and the backing file
    name inside the first cluster (64 KiB unless an image chose otherwise)."""
    try:
        with open(path, "rb") as f:
            return parse_header(f.read(_FIRST_READ_BYTES))
    except FileNotFoundError:
        return None
