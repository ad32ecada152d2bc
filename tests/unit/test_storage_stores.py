"""The storage service's stores on real files in a temporary pool, with the real qemu-img:
data volumes, attachment claims, image imports, templates, deletes and snapshots. Every change is
checked for idempotency (a retried activity) and for refusing what must be refused."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from services.storage import qemu_img
from services.storage.catalog import ImageCatalog
from services.storage.data_volumes import VolumeStore
from services.storage.image_checks import ImageLimits
from services.storage.images import ImageStore
from services.storage.pools import PoolRegistry
from services.storage.snapshots import VmSnapshots
from services.storage.volumes import RootVolumes, root_volume_name
from shared.errors import Conflict, InvalidRequest, NotFound, StorageError
from shared.models import VolumeRequest
from shared.storage_models import (
    AttachmentClaim,
    CloneMode,
    ImageFormat,
    ImportRequest,
    TemplateRequest,
    VolumeCreateRequest,
    VolumeDeleteRequest,
    VolumeKind,
    VolumeResizeRequest,
)

VM_A, VM_B = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"


def qemu(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


class Pools:
    def __init__(self, root: Path) -> None:
        self.registry = PoolRegistry.from_settings("shared", str(root / "shared"), {"h1": str(root / "h1"), "h2": str(root / "h2")})
        self.registry.ensure_dirs()
        shared = self.registry.shared
        base = shared.images_dir / "base"
        base.mkdir()
        qemu("qemu-img", "create", "-q", "-f", "qcow2", str(base / "disk.qcow2"), "1G")
        (base / "vmlinuz").write_bytes(b"kernel")
        (base / "initrd.gz").write_bytes(b"initrd")
        (base / "image.json").write_text(json.dumps({
            "name": "base", "disk": "disk.qcow2", "kernel": "vmlinuz", "initrd": "initrd.gz",
            "cmdline": "console=ttyS0", "min_memory_mib": 96, "min_disk_gib": 1, "boot_marker": "BOOTED",
        }))
        self.incoming = shared.path / "incoming"
        self.incoming.mkdir()
        self.catalog = ImageCatalog(shared.images_dir)
        self.roots = RootVolumes(self.registry, self.catalog)
        self.volumes = VolumeStore(self.registry, self.catalog, max_volume_gib=8)
        self.images = ImageStore(shared, self.catalog, ImageLimits(4, 1), [self.incoming])
        self.snapshots = VmSnapshots(self.root_disk, self.volumes, 30.0)

    def root_disk(self, vm_id: str) -> Path:
        return self.roots.disk_of(vm_id)


@pytest.fixture
def pools(tmp_path) -> Pools:
    return Pools(tmp_path)


async def test_data_volumes_empty_thin_and_full(pools):
    v = pools.volumes
    empty, created = await v.create(VolumeCreateRequest("e1", "local-h1", 2), "op-1")
    assert created and empty.kind is VolumeKind.DATA and empty.size_gib == 2 and empty.host_id == "h1"
    assert (await v.create(VolumeCreateRequest("e1", "local-h1", 2), "op-1")) == (empty, False)  # a retry
    with pytest.raises(Conflict, match="already exists"):
        await v.create(VolumeCreateRequest("e1", "shared", 2), "op-2")  # names are unique across pools
    thin, _ = await v.create(VolumeCreateRequest("t1", "shared", 3, "base", CloneMode.THIN), "op-3")
    full, _ = await v.create(VolumeCreateRequest("f1", "shared", 2, "base", CloneMode.FULL), "op-4")
    assert (thin.image, thin.clone, thin.size_gib) == ("base", CloneMode.THIN, 3)
    assert "backing-filename" not in json.loads(qemu("qemu-img", "info", "--output=json", full.path))
    assert json.loads(qemu("qemu-img", "info", "--output=json", full.path))["virtual-size"] == 2 * 1024**3
    base_disk = pools.catalog.get("base").disk_path
    assert v.backed_by(base_disk) == ["t1"]
    assert {x.name for x in v.list()} == {"e1", "t1", "f1"}
    assert not list(pools.registry.shared.volumes_dir.glob("*.partial"))


@pytest.mark.parametrize(
    ("req", "error", "reason"),
    [
        (VolumeCreateRequest("x", "nope", 1), InvalidRequest, "unknown pool 'nope'"),
        (VolumeCreateRequest("../x", "shared", 1), InvalidRequest, "volume name must be"),
        (VolumeCreateRequest("x", "shared", 9), InvalidRequest, "between 1 and 8"),
        (VolumeCreateRequest("x", "shared", 1, "missing"), NotFound, "unknown image 'missing'"),
        (VolumeCreateRequest(f"vm-{VM_A}-root", "shared", 1), InvalidRequest, "reserved"),
    ],
)
async def test_bad_volume_requests_change_nothing(pools, req, error, reason):
    with pytest.raises(error, match=reason):
        await pools.volumes.create(req, "op")
    assert pools.volumes.list() == []


async def test_resize_grows_only(pools):
    v = pools.volumes
    await v.create(VolumeCreateRequest("d1", "shared", 1), "op")
    grown, changed = await v.resize(VolumeResizeRequest("d1", 3))
    assert changed and grown.size_gib == 3
    assert (await v.resize(VolumeResizeRequest("d1", 3)))[1] is False  # a retry
    with pytest.raises(InvalidRequest, match="volumes only grow"):
        await v.resize(VolumeResizeRequest("d1", 2))
    with pytest.raises(NotFound):
        await v.resize(VolumeResizeRequest("nope", 2))
    await pools.roots.create(VolumeRequest(VM_A, "base", 1))
    with pytest.raises(Conflict, match="root disk"):
        await v.resize(VolumeResizeRequest(root_volume_name(VM_A), 2))


async def test_claims_keep_a_volume_on_one_vm(pools):
    v = pools.volumes
    await v.create(VolumeCreateRequest("d1", "shared", 1), "op")
    assert (await v.claim(AttachmentClaim("d1", VM_A))).vm_id == VM_A
    assert (await v.claim(AttachmentClaim("d1", VM_A))).vm_id == VM_A  # a retry
    with pytest.raises(Conflict, match=f"attached to VM {VM_A}"):
        await v.claim(AttachmentClaim("d1", VM_B))
    with pytest.raises(Conflict, match="detach it first"):
        await v.delete(VolumeDeleteRequest("d1"))
    assert await v.release(AttachmentClaim("d1", VM_B)) is False  # not B's to release
    # VM A is gone (the caller checked): B may take the volume over, and only then.
    assert (await v.claim(AttachmentClaim("d1", VM_B, stale_attachment=VM_A))).vm_id == VM_B
    assert await v.release(AttachmentClaim("d1", VM_B)) is True
    assert await v.release(AttachmentClaim("d1", VM_B)) is False
    assert (await v.delete(VolumeDeleteRequest("d1"))).name == "d1"
    assert await v.delete(VolumeDeleteRequest("d1")) is None  # absent is fine
    assert list(pools.registry.shared.volumes_dir.iterdir()) == []

    # A host's own pool is for VMs on that host only.
    await v.create(VolumeCreateRequest("d2", "local-h1", 1), "op")
    with pytest.raises(Conflict, match="in pool local-h1, which host h2 cannot reach"):
        await v.claim(AttachmentClaim("d2", VM_A, host_id="h2"))
    assert (await v.claim(AttachmentClaim("d2", VM_A, host_id="h1"))).vm_id == VM_A


async def test_import_checks_converts_and_is_idempotent(pools):
    qemu("truncate", "-s", "64M", str(pools.incoming / "disk.raw"))
    req = ImportRequest("imp", str(pools.incoming / "disk.raw"), ImageFormat.RAW, min_memory_mib=128)
    view, created = await pools.images.import_image(req, "op-1")
    assert created and view.kind == "imported" and view.virtual_size_gib == 0.062 and view.min_disk_gib == 1
    assert json.loads(qemu("qemu-img", "info", "--output=json", view.disk_path))["format"] == "qcow2"
    assert (await pools.images.import_image(req, "op-1"))[1] is False  # a retry
    with pytest.raises(Conflict, match="already exists"):
        await pools.images.import_image(req, "op-2")
    assert [i.name for i in pools.catalog.list()] == ["base", "imp"]
    assert not list((pools.registry.shared.path / ".staging").iterdir())


async def test_import_refuses_without_copying(pools):
    qemu("qemu-img", "create", "-q", "-f", "qcow2", str(pools.incoming / "big.qcow2"), "5G")
    qemu("truncate", "-s", "1M", str(pools.incoming / "disk.raw"))
    for req, reason in [
        (ImportRequest("i1", str(pools.incoming / "big.qcow2"), ImageFormat.QCOW2), "exceeds 4 GiB"),
        (ImportRequest("i2", str(pools.incoming / "disk.raw"), ImageFormat.QCOW2), "the file is raw, not qcow2"),
        (ImportRequest("base", str(pools.incoming / "disk.raw"), ImageFormat.RAW), "already exists"),
        (ImportRequest("i3", "/etc/passwd", ImageFormat.RAW), "import directory"),
        (ImportRequest("i4", str(pools.incoming / "disk.raw"), ImageFormat.RAW, kernel_path="/x"), "go together"),
    ]:
        with pytest.raises((InvalidRequest, Conflict), match=reason):
            await pools.images.import_image(req, "op")
    assert [i.name for i in pools.catalog.list()] == ["base"]


async def test_delete_image_only_when_unused(pools):
    volume, _ = await pools.roots.create(VolumeRequest(VM_A, "base", 1))
    with pytest.raises(Conflict, match=f"in use by 1 volume.*{root_volume_name(VM_A)}"):
        await pools.images.delete("base", pools.volumes.backed_by)
    Path(volume.path).unlink()
    assert (await pools.images.delete("base", pools.volumes.backed_by)).name == "base"
    assert await pools.images.delete("base", pools.volumes.backed_by) is None
    assert pools.catalog.list() == []


async def test_template_flattens_the_disk_and_keeps_the_boot_spec(pools):
    volume, _ = await pools.roots.create(VolumeRequest(VM_A, "base", 2))
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 64k", volume.path)
    req = TemplateRequest("tpl", VM_A, "web", "base")
    view, created = await pools.images.create_template(req, Path(volume.path), "op-1")
    assert created and view.kind == "template" and view.source_vm == VM_A and view.min_disk_gib == 2
    info = json.loads(qemu("qemu-img", "info", "--output=json", view.disk_path))
    assert "backing-filename" not in info
    qemu("qemu-io", "-f", "qcow2", "-c", "read -P 0xab 0 64k", view.disk_path)  # the VM's data is in it
    template = pools.catalog.get("tpl")
    assert template.boot.cmdline == "console=ttyS0" and template.boot_marker == "BOOTED"
    assert Path(template.boot.kernel_path).read_bytes() == b"kernel"
    assert template.boot.kernel_path.startswith(str(Path(view.disk_path).parent))  # its own copy
    assert (await pools.images.create_template(req, Path(volume.path), "op-1"))[1] is False
    with pytest.raises(Conflict, match="already exists"):
        pools.images.check_template(req, Path(volume.path))
    with pytest.raises(NotFound, match="no root disk"):
        pools.images.check_template(TemplateRequest("t2", VM_B, "x", "base"), pools.root_disk(VM_B))


async def test_snapshots_cover_root_and_attached_disks(pools):
    root, _ = await pools.roots.create(VolumeRequest(VM_A, "base", 1))
    data, _ = await pools.volumes.create(VolumeCreateRequest("d1", "local-h1", 1), "op")
    await pools.volumes.claim(AttachmentClaim("d1", VM_A))
    snap, taken = await pools.snapshots.create(VM_A, "s1")
    assert taken == [root.name, "d1"] and snap.disks == (root.name, "d1")
    assert (await pools.snapshots.create(VM_A, "s1"))[1] == []  # a retry takes nothing twice
    for path in (root.path, data.path):
        qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 64k", path)
    assert await pools.snapshots.revert(VM_A, "s1") == [root.name, "d1"]
    for path in (root.path, data.path):
        qemu("qemu-io", "-f", "qcow2", "-c", "read -P 0x00 0 64k", path)
    with pytest.raises(NotFound, match="no snapshot named 'nope'"):
        await pools.snapshots.revert(VM_A, "nope")
    assert [s.name for s in (await pools.snapshots.list(VM_A)).snapshots] == ["s1"]
    assert await pools.snapshots.delete(VM_A, "s1") == [root.name, "d1"]
    assert await pools.snapshots.delete(VM_A, "s1") == []
    assert (await pools.snapshots.list(VM_A)).snapshots == ()
    with pytest.raises(NotFound, match="no root disk"):
        await pools.snapshots.list(VM_B)


async def test_root_volumes_live_in_a_local_pool_and_follow_their_vm(pools):
    root, created = await pools.roots.create(VolumeRequest(VM_A, "base", 2, pool="local-h1"))
    assert created and root.pool == "local-h1" and pools.roots.describe(VM_A).host_id == "h1"
    assert pools.roots.disk_of(VM_A) == Path(root.path)  # snapshots and templates find it there
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0xcd 1M 64k", root.path)
    await pools.snapshots.create(VM_A, "before-move")

    # Cold: the whole file, data and snapshots, lands in h2's pool; the image stays shared.
    def progress(_copied_bytes: int, _total_bytes: int) -> None:
        pass  # a copy this small ends before its first report

    copy, created = await pools.roots.copy_to(VM_A, "local-h1", "local-h2", progress)
    assert created and copy.pool == "local-h2" and copy.host_id == "h2" and copy.snapshot_count == 1
    qemu("qemu-io", "-f", "qcow2", "-c", "read -P 0xcd 1M 64k", copy.path)
    assert json.loads(qemu("qemu-img", "info", "--output=json", copy.path))["backing-filename"].endswith("disk.qcow2")
    assert (await pools.roots.copy_to(VM_A, "local-h1", "local-h2", progress))[1] is False  # a retry copies nothing
    with pytest.raises(Conflict, match="1 snapshot"):  # a live copy would lose them
        await pools.roots.prepare_in(VM_A, "local-h1", "local-h2")
    assert await pools.roots.delete(VM_A, "local-h1") == ["local-h1"]
    assert pools.roots.describe(VM_A).pool == "local-h2"

    # Live: an empty overlay on the same image, the same virtual size, for the migration to fill.
    await pools.snapshots.delete(VM_A, "before-move")
    target = await pools.roots.prepare_in(VM_A, "local-h2", "local-h1")
    info = json.loads(qemu("qemu-img", "info", "--output=json", target.path))
    assert info["virtual-size"] == 2 * 1024**3 and info["backing-filename"].endswith("disk.qcow2")
    qemu("qemu-io", "-f", "qcow2", "-c", "read -P 0x00 1M 64k", target.path)
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0xee 1M 64k", target.path)  # an abandoned copy's data
    target = await pools.roots.prepare_in(VM_A, "local-h2", "local-h1")  # a retry starts clean
    qemu("qemu-io", "-f", "qcow2", "-c", "read -P 0x00 1M 64k", target.path)
    with pytest.raises(Conflict, match=r"in several pools \(local-h1, local-h2\)"):
        pools.roots.describe(VM_A)  # until the move settles which copy is the VM's
    with pytest.raises(InvalidRequest, match="unknown pool 'local-h9'"):
        await pools.roots.copy_to(VM_A, "local-h2", "local-h9", progress)
    assert sorted(await pools.roots.delete(VM_A)) == ["local-h1", "local-h2"]
    with pytest.raises(NotFound, match="no root volume"):
        pools.roots.describe(VM_A)


async def test_a_locked_disk_is_a_conflict(tmp_path):
    disk = tmp_path / "d.qcow2"
    qemu("qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1G")
    # qemu-io holds the write lock while it waits on stdin, as a running guest would.
    holder = subprocess.Popen(["qemu-io", "-f", "qcow2", str(disk)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not _has_open(holder.pid, disk):  # racing it for the lock would make it give up
            assert holder.poll() is None and time.monotonic() < deadline, "qemu-io did not open the disk"
            time.sleep(0.05)
        time.sleep(0.3)  # it locks just after opening
        with pytest.raises(Conflict, match="in use"):
            await qemu_img.snapshot("-c", str(disk), "s1")
        with pytest.raises(Conflict, match="in use"):
            await qemu_img.resize(str(disk), 2)
    finally:
        holder.communicate(b"quit\n", timeout=10)
    with pytest.raises(StorageError, match="qemu-img resize failed"):
        await qemu_img.resize(str(tmp_path / "missing.qcow2"), 2)


def _has_open(pid: int, path: Path) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.path.realpath(fd) == str(path) for fd in fds.iterdir())
    except FileNotFoundError:
        return False


async def test_importing_never_follows_a_backing_file(tmp_path):
    # Checked standalone, then swapped for an overlay of a secret before the copy: the copy
    # still reads nothing of the secret.
    secret, overlay, copy = tmp_path / "secret.qcow2", tmp_path / "overlay.qcow2", tmp_path / "copy.qcow2"
    qemu("qemu-img", "create", "-q", "-f", "qcow2", str(secret), "64M")
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", str(secret))
    qemu("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(secret), str(overlay))
    await qemu_img.convert(str(overlay), "qcow2", str(copy), standalone=True)
    qemu("qemu-io", "-f", "qcow2", "-c", "read -P 0x00 0 64k", str(copy))
    assert "backing-filename" not in json.loads(qemu("qemu-img", "info", "--output=json", str(copy)))
