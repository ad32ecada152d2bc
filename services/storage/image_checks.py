"""What an image file must be before it may become an image, judged from ``qemu-img info``.

Pure: takes the parsed JSON and the limits, raises InvalidRequest with every reason at once.
The checks follow what clouds learned the hard way: trust the probed format, never the
declared one; no backing file and no external data file (either would make the image read
some other file of the host); sizes within limits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import InvalidRequest
from shared.storage_models import ImageFormat, ImportCheck
from shared.units import GIB


@dataclass(frozen=True)
class ImageLimits:
    max_virtual_gib: int
    max_file_gib: int


def check_image_info(info: dict[str, Any], declared: ImageFormat, file_size_bytes: int,
                     limits: ImageLimits) -> ImportCheck:
    problems = []
    probed = info.get("format")
    if probed != declared.value:
        problems.append(f"format: the file is {probed or 'of an unknown format'}, not {declared.value}")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        problems.append("the image has a backing file; import a standalone image")
    data = (info.get("format-specific") or {}).get("data") or {}
    if data.get("data-file"):
        problems.append("the image keeps its data in an external file; import a standalone image")
    if data.get("encrypt") or info.get("encrypted"):
        problems.append("encrypted images are not supported")
    virtual_bytes = int(info.get("virtual-size") or 0)
    if virtual_bytes <= 0:
        problems.append("the image has no virtual size")
    elif virtual_bytes > limits.max_virtual_gib * GIB:
        problems.append(f"virtual size {virtual_bytes / GIB:.1f} GiB exceeds {limits.max_virtual_gib} GiB")
    if file_size_bytes > limits.max_file_gib * GIB:
        problems.append(f"file size {file_size_bytes / GIB:.1f} GiB exceeds {limits.max_file_gib} GiB")
    if problems:
        raise InvalidRequest("; ".join(problems))
    return ImportCheck(declared, round(virtual_bytes / GIB, 3), file_size_bytes)


def check_source_path(field: str, path: str, allowed_dirs: list[Path]) -> Path:
    """``path`` resolved, if it is a regular file inside one of ``allowed_dirs`` (symlinks
    followed first, so a link cannot lead outside). Raises InvalidRequest."""
    if not os.path.isabs(path):
        raise InvalidRequest(f"{field} must be an absolute path")
    resolved = Path(os.path.realpath(path))
    if not any(resolved.is_relative_to(Path(os.path.realpath(d))) for d in allowed_dirs):
        where = ", ".join(str(d) for d in allowed_dirs)
        raise InvalidRequest(f"{field} must lie inside an import directory ({where})")
    if not resolved.is_file():
        raise InvalidRequest(f"{field}: no such file {path}")
    return resolved
