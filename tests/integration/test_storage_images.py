"""Importing image files through the REST API: checked with qemu-img before anything is
copied, stored as qcow2, deleted when unused; every bad import is refused and changes nothing."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from tests.integration.test_storage_volumes import (
    EventTap,
    expect_error,
    qemu_info,
    succeeded,
    unique,
)


@pytest.fixture
def incoming(stack_cfg):
    """The storage service's import directory, with files made for the test."""
    directory = stack_cfg.pool_dir / "incoming"
    made = []

    def make(name: str, *qemu_img_create: str, raw_mib: int | None = None):
        path = directory / f"{uuid.uuid4().hex[:6]}-{name}"
        if raw_mib is not None:
            with open(path, "wb") as f:
                f.truncate(raw_mib * 1024**2)
        else:
            subprocess.run(["qemu-img", "create", "-q", *qemu_img_create, str(path)], check=True)
        made.append(path)
        return path

    yield make
    for path in made:
        path.unlink(missing_ok=True)


@pytest.fixture
def image_world(stack_cfg, api):
    def snapshot():
        return (sorted(i["name"] for i in api.call("GET", "/v1/images")),
                sorted(p.name for p in (stack_cfg.pool_dir / "images").iterdir()))

    return snapshot


def test_raw_and_qcow2_files_become_qcow2_images_and_are_deleted(stack_cfg, admin_token, api, incoming):
    tap = EventTap(stack_cfg.api_url, "vmflow.evt.image.>", token=admin_token)
    raw = incoming("disk.raw", raw_mib=64)
    qcow2 = incoming("disk.qcow2", "-f", "qcow2", "-o", "size=128M")
    for source, fmt in ((raw, "raw"), (qcow2, "qcow2")):
        name = unique(f"imp-{fmt}")
        accepted = api.call("POST", "/v1/images", json={
            "name": name, "source_path": str(source), "format": fmt, "min_memory_mib": 96,
            "description": f"imported {fmt}",
        })
        assert accepted["operation_id"] == f"image-{name}-create"
        assert succeeded(api, accepted)["kind"] == "ImportImage"
        image = api.call("GET", f"/v1/images/{name}")
        assert (image["kind"], image["min_memory_mib"], image["boot"]) == ("imported", 96, "disk")
        disk = stack_cfg.pool_dir / "images" / name / "disk.qcow2"
        info = qemu_info(str(disk))
        assert info["format"] == "qcow2" and "backing-filename" not in info
        assert info["virtual-size"] == (64 if fmt == "raw" else 128) * 1024**2
        # The same name again is a conflict; the source file is left as it was.
        expect_error(api, "POST", "/v1/images", 409, f"an image named '{name}' already exists",
                     json={"name": name, "source_path": str(source), "format": fmt})
        assert source.exists()
        succeeded(api, api.call("DELETE", f"/v1/images/{name}"))
        assert not disk.parent.exists()
        assert name not in [i["name"] for i in api.call("GET", "/v1/images")]
        tap.wait_for(f"vmflow.evt.image.shared.{name}.created")
        tap.wait_for(f"vmflow.evt.image.shared.{name}.deleted")


def test_bad_imports_are_refused_and_change_nothing(stack_cfg, api, incoming, image_world):
    raw = incoming("disk.raw", raw_mib=1)
    qcow2 = incoming("base.qcow2", "-f", "qcow2", "-o", "size=64M")
    overlay = incoming("overlay.qcow2", "-f", "qcow2", "-F", "qcow2", "-b", str(qcow2), "-o", "size=64M")
    huge = incoming("huge.qcow2", "-f", "qcow2", "-o", "size=300G")
    outside = stack_cfg.pool_dir / "not-incoming.raw"
    outside.write_bytes(b"\0" * 4096)
    cases = [
        ({"source_path": str(raw), "format": "qcow2"}, "format: the file is raw, not qcow2"),
        # qcow2 inside a file declared raw: what a guest-written header would look like.
        ({"source_path": str(qcow2), "format": "raw"}, "format: the file is qcow2, not raw"),
        ({"source_path": str(overlay), "format": "qcow2"}, "has a backing file"),
        ({"source_path": str(huge), "format": "qcow2"}, "virtual size 300.0 GiB exceeds"),
        ({"source_path": str(outside), "format": "raw"}, "must lie inside an import directory"),
        ({"source_path": str(raw.parent / ".." / "not-incoming.raw"), "format": "raw"}, "import directory"),
        ({"source_path": "/etc/shadow", "format": "raw"}, "must lie inside an import directory"),
        ({"source_path": "disk.raw", "format": "raw"}, "must be an absolute path"),
        ({"source_path": str(raw.parent / "missing.raw"), "format": "raw"}, "no such file"),
        ({"source_path": str(raw)}, "format is required"),
        ({"source_path": str(raw), "format": "vmdk"}, "format: Input should be 'qcow2' or 'raw'"),
        ({}, "give either source_path"),
        ({"source_path": str(raw), "format": "raw", "name": "../x"}, "image name must be"),
        ({"source_path": str(raw), "format": "raw", "name": "y" * 64}, "image name must be"),
        ({"source_path": str(raw), "format": "raw", "min_memory_mib": 0}, "min_memory_mib"),
        ({"from_vm": str(uuid.uuid4())}, "from_vm: no VM with id"),
    ]
    try:
        before = image_world()
        for body, reason in cases:
            error = expect_error(api, "POST", "/v1/images", 422, reason, json={"name": unique("bad"), **body})
            assert error.code == "invalid_request"
        assert image_world() == before
    finally:
        outside.unlink()


def test_unknown_images(api):
    expect_error(api, "GET", "/v1/images/nope", 404, "unknown image 'nope'")
    expect_error(api, "DELETE", "/v1/images/nope", 404, "unknown image 'nope'")
    expect_error(api, "GET", "/v1/operations/image-nope-create", 404, "no operation")
