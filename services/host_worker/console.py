"""Reading a guest's file-backed serial console."""

from __future__ import annotations

from pathlib import Path


def count_marker(path: Path, marker: str) -> int:
    """How many times ``marker`` appears on the console; 0 if the file does not exist yet."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    return data.count(marker.encode())
