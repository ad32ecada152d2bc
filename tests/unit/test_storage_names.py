"""Names of volumes, images and snapshots: what is accepted, what is refused and why, and the
ids and subjects built from them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.api.routes.operations import OPERATION_ID
from services.api.storage_models import ImageCreate, SnapshotCreate, VolumeCreate
from shared.errors import InvalidRequest
from shared.names import (
    image_operation_id,
    vm_storage_operation_id,
    volume_operation_id,
)
from shared.storage_models import (
    check_name,
    check_snapshot_name,
    check_volume_name,
    image_event,
    root_vm_id,
    volume_event,
)

VM_ID = "6c280603-c8d2-416e-9055-62035da46861"
BAD_NAMES = ["", "x" * 64, "../etc", "a/b", "a.b", "-a", "a-", "a b", "$(reboot)", "a\nb", "é", "a;b", ".."]


@pytest.mark.parametrize("name", ["a", "data-1", "A9", "x" * 63])
def test_good_names(name):
    assert check_name("volume", name) == name
    assert check_volume_name(name) == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_path_like_long_or_odd_names_are_refused(name):
    with pytest.raises(InvalidRequest, match="volume name must be 1-63 letters"):
        check_volume_name(name)


def test_root_volume_names_are_reserved():
    with pytest.raises(InvalidRequest, match="reserved for VM root disks"):
        check_volume_name(f"vm-{VM_ID}-root")
    assert root_vm_id(f"vm-{VM_ID}-root") == VM_ID
    assert root_vm_id("data-1") is None


@pytest.mark.parametrize("name", ["s1", "before_upgrade", "a", "x" * 63])
def test_good_snapshot_names(name):
    assert check_snapshot_name(name) == name


@pytest.mark.parametrize("name", ["1", "7up", "_a", "a_", *BAD_NAMES])
def test_bad_snapshot_names(name):
    # A leading digit is refused: qemu-img would also match it against snapshot ids.
    with pytest.raises(InvalidRequest, match="snapshot name must be"):
        check_snapshot_name(name)


def test_request_models_report_the_field():
    with pytest.raises(ValidationError, match="volume name must be"):
        VolumeCreate(name="../x", pool="shared", size_gib=1)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        VolumeCreate(name="x", pool="shared", size_gib=0)
    with pytest.raises(ValidationError, match="snapshot name must be"):
        SnapshotCreate(name="a/b")
    with pytest.raises(ValidationError, match="Extra inputs"):
        VolumeCreate(name="x", pool="shared", size_gib=1, host="h1")


def test_image_create_needs_exactly_one_source():
    with pytest.raises(ValidationError, match="either source_path"):
        ImageCreate(name="i")
    with pytest.raises(ValidationError, match="either source_path"):
        ImageCreate(name="i", source_path="/a", format="raw", from_vm=VM_ID)
    with pytest.raises(ValidationError, match="format is required"):
        ImageCreate(name="i", source_path="/a")
    with pytest.raises(ValidationError, match="format"):
        ImageCreate(name="i", source_path="/a", format="vmdk")
    assert ImageCreate(name="i", from_vm=VM_ID).from_vm == VM_ID


def test_operation_ids_are_accepted_by_the_operations_route():
    for op_id in (
        image_operation_id("tpl-1", "create"),
        image_operation_id("lab-guest", "delete"),
        volume_operation_id("data-1", "create"),
        volume_operation_id("data-1", "attach", "0123abcd"),
        vm_storage_operation_id(VM_ID, "snapshot", "0123abcd"),
        vm_storage_operation_id(VM_ID, "snapdelete", "0123abcd"),
        f"vm-{VM_ID}-provision",
    ):
        assert OPERATION_ID.fullmatch(op_id), op_id
    for op_id in ("drop-table", "volume-../x-create", "image-a/b-create", "volume--create"):
        assert not OPERATION_ID.fullmatch(op_id), op_id


def test_event_subjects():
    assert volume_event("shared", "data-1", "attached") == "vmflow.evt.volume.shared.data-1.attached"
    assert image_event("shared", "tpl-1", "created") == "vmflow.evt.image.shared.tpl-1.created"
    # Dots would split a subject token; older image names may have them.
    assert image_event("shared", "debian-12.4", "deleted") == "vmflow.evt.image.shared.debian-12_4.deleted"
