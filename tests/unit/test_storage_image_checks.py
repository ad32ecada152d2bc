"""What an image file must be to be imported, judged from parsed ``qemu-img info`` output,
and where it may be imported from."""

from __future__ import annotations

import os

import pytest

from services.storage.image_checks import ImageLimits, check_image_info, check_source_path
from shared.errors import InvalidRequest
from shared.storage_models import ImageFormat

GIB = 1024**3
LIMITS = ImageLimits(max_virtual_gib=10, max_file_gib=2)


def qcow2_info(**extra) -> dict:
    info = {"format": "qcow2", "virtual-size": GIB, "actual-size": 200_704,
            "format-specific": {"type": "qcow2", "data": {"compat": "1.1", "corrupt": False}}}
    return {**info, **extra}


def test_a_standalone_image_of_the_declared_format_passes():
    checked = check_image_info(qcow2_info(), ImageFormat.QCOW2, 200_704, LIMITS)
    assert checked.format is ImageFormat.QCOW2
    assert checked.virtual_size_gib == 1.0
    raw = check_image_info({"format": "raw", "virtual-size": 64 * 1024**2}, ImageFormat.RAW, 64 * 1024**2, LIMITS)
    assert raw.virtual_size_gib == 0.062


@pytest.mark.parametrize(
    ("info", "declared", "reason"),
    [
        # A raw file that looks like qcow2 inside (a guest could write such a header): refused.
        (qcow2_info(), ImageFormat.RAW, "format: the file is qcow2, not raw"),
        ({"format": "raw", "virtual-size": GIB}, ImageFormat.QCOW2, "format: the file is raw, not qcow2"),
        ({"format": "vmdk", "virtual-size": GIB}, ImageFormat.QCOW2, "the file is vmdk, not qcow2"),
        (qcow2_info(**{"backing-filename": "/etc/shadow"}), ImageFormat.QCOW2, "has a backing file"),
        (qcow2_info(**{"full-backing-filename": "/x"}), ImageFormat.QCOW2, "has a backing file"),
        (qcow2_info(**{"format-specific": {"type": "qcow2", "data": {"data-file": "/dev/sda"}}}),
         ImageFormat.QCOW2, "external file"),
        (qcow2_info(encrypted=True), ImageFormat.QCOW2, "encrypted"),
        (qcow2_info(**{"virtual-size": 11 * GIB}), ImageFormat.QCOW2, "virtual size 11.0 GiB exceeds 10 GiB"),
        (qcow2_info(**{"virtual-size": 0}), ImageFormat.QCOW2, "no virtual size"),
    ],
)
def test_unsafe_or_mismatched_images_are_refused(info, declared, reason):
    with pytest.raises(InvalidRequest, match=reason):
        check_image_info(info, declared, 1000, LIMITS)


def test_file_size_limit_and_all_reasons_at_once():
    with pytest.raises(InvalidRequest) as caught:
        check_image_info(qcow2_info(**{"backing-filename": "b"}), ImageFormat.RAW, 3 * GIB, LIMITS)
    message = caught.value.message
    assert "not raw" in message and "backing file" in message and "file size 3.0 GiB exceeds 2 GiB" in message


def test_source_paths_must_be_files_inside_an_import_dir(tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "disk.img").write_bytes(b"\0" * 512)
    (tmp_path / "secret").write_text("no")
    os.symlink(tmp_path / "secret", incoming / "link")
    assert check_source_path("source_path", str(incoming / "disk.img"), [incoming]) == incoming / "disk.img"
    for path, reason in [
        ("disk.img", "must be an absolute path"),
        (str(tmp_path / "secret"), "must lie inside an import directory"),
        (str(incoming / ".." / "secret"), "must lie inside an import directory"),
        (str(incoming / "link"), "must lie inside an import directory"),  # symlinks are followed first
        ("/etc/shadow", "must lie inside an import directory"),
        (str(incoming / "missing.img"), "no such file"),
        (str(incoming), "no such file"),
    ]:
        with pytest.raises(InvalidRequest, match=reason):
            check_source_path("source_path", path, [incoming])
