"""Reading qcow2 headers: on bytes, and on files qemu-img made."""

from __future__ import annotations

import struct
import subprocess

from services.storage.qcow2 import MAGIC, parse_header, read_header


def header_bytes(size: int, backing: bytes = b"", snapshots: int = 0) -> bytes:
    offset = 104 if backing else 0
    head = struct.pack(">4sIQIIQIIQQIIQ", MAGIC, 3, offset, len(backing), 16, size, 0, 1, 0x30000, 0x10000, 1,
                       snapshots, 0)
    return head.ljust(104, b"\0") + backing


def test_parse_header():
    h = parse_header(header_bytes(5 * 1024**3, b"/pool/images/a/disk.qcow2", 2))
    assert (h.virtual_size_bytes, h.backing_file, h.snapshot_count) == (5 * 1024**3, "/pool/images/a/disk.qcow2", 2)
    assert parse_header(header_bytes(1024)).backing_file is None
    assert parse_header(b"\0" * 512) is None  # raw
    assert parse_header(MAGIC) is None  # too short


def test_read_header_of_real_files(tmp_path):
    base, overlay = tmp_path / "base.qcow2", tmp_path / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1G"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay), "3G"],
                   check=True)
    subprocess.run(["qemu-img", "snapshot", "-c", "s1", str(overlay)], check=True)
    assert read_header(base).backing_file is None
    h = read_header(overlay)
    assert (h.virtual_size_bytes, h.backing_file, h.snapshot_count) == (3 * 1024**3, str(base), 1)
    assert read_header(tmp_path / "missing.qcow2") is None
