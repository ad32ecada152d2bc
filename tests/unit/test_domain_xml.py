"""Domain XML is a pure function of the spec, compared against golden files.

Regenerate a golden file on purpose with VMFLOW_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from services.host_worker.domain_xml import (
    build_domain_xml,
    interface_bridges,
    interface_macs,
    interface_xml,
    metadata_fields,
)
from services.host_worker.seed import remove_seed, seed_digest, seed_files, write_seed
from shared.errors import InvalidRequest
from shared.guest import SeedSpec
from shared.models import BootSpec, DomainSpec
from shared.networks import NicSpec

GOLDEN = Path(__file__).parent / "golden"
VM_ID = "6f1c2b1e-8d4a-4e0f-9a53-0c7e5d2b9f11"
BOOT = BootSpec("/pool/images/lab-guest/vmlinuz", "/pool/images/lab-guest/initrd.gz",
                "console=ttyS0 panic=-1 quiet")


def spec(**overrides) -> DomainSpec:
    values = dict(vm_id=VM_ID, vm_name="web-1", tenant="default", vcpus=2, memory_mib=256,
                  disk_path=f"/pool/volumes/vm-{VM_ID}-root.qcow2", domain_type="qemu", boot=BOOT,
                  disk_gib=4, group_id="pg-1")
    return DomainSpec(**{**values, **overrides})


def check_golden(name: str, xml: str) -> None:
    path = GOLDEN / name
    if os.environ.get("VMFLOW_UPDATE_GOLDEN"):
        path.write_text(xml)
    assert xml == path.read_text()


def test_kernel_boot_guest_matches_golden():
    check_golden("domain_kernel_boot.xml", build_domain_xml(spec(), "/pool/consoles"))


def test_disk_boot_kvm_guest_matches_golden():
    check_golden("domain_disk_boot_kvm.xml", build_domain_xml(spec(boot=None, domain_type="kvm", group_id=None), "/c"))


@pytest.mark.parametrize("hostile", ["</title><devices/>", "a&b<c>'\"", "$(rm -rf /)`id`"])
def test_special_characters_cannot_change_the_document(hostile: str):
    root = ET.fromstring(build_domain_xml(spec(vm_name=hostile, tenant=hostile), "/c"))
    assert root.findtext("title") == hostile
    assert len(root.findall("devices")) == 1
    meta = root.find("metadata")[0]
    assert metadata_fields(ET.tostring(meta, encoding="unicode")) == {
        "name": hostile, "tenant": hostile, "disk_gib": "4", "group": "pg-1"}


NICS = (NicSpec("port-a", "net-1", 1000, "52:54:00:aa:bb:01", "10.0.0.2"),
        NicSpec("port-b", "net-2", 1001, "52:54:00:aa:bb:02", "10.1.0.2"))


def test_guest_with_nics_and_a_seed_matches_golden():
    xml = build_domain_xml(spec(nics=NICS, seed=True), "/pool/consoles", "/pool/seeds")
    check_golden("domain_nics_seed.xml", xml)
    assert interface_macs(xml) == {"52:54:00:aa:bb:01", "52:54:00:aa:bb:02"}
    assert interface_bridges(xml) == {"vnb-1000", "vnb-1001"}
    assert interface_xml(NICS[0]) in xml.replace("\n", "").replace("  ", "")


def test_a_seed_needs_a_seed_directory():
    with pytest.raises(InvalidRequest, match="seed directory"):
        build_domain_xml(spec(seed=True), "/pool/consoles")


def test_seed_files_follow_the_nocloud_convention():
    seed = SeedSpec("vm-1", "web-1", None, ("ssh-ed25519 AAAA me@x",), ("52:54:00:aa:bb:01",))
    files = seed_files(seed)
    assert set(files) == {"meta-data", "user-data", "network-config"}
    assert files["meta-data"] == ('instance-id: vm-1\nlocal-hostname: web-1\n'
                                  'public-keys:\n  - "ssh-ed25519 AAAA me@x"\n')
    assert files["user-data"].startswith("#cloud-config\n")
    assert json.loads(files["user-data"].split("\n", 1)[1]) == {"ssh_authorized_keys": ["ssh-ed25519 AAAA me@x"]}
    network = json.loads(files["network-config"])
    assert network["ethernets"]["nic0"] == {"match": {"macaddress": "52:54:00:aa:bb:01"}, "dhcp4": True}
    own = seed_files(SeedSpec("vm-1", "web-1", "#!/bin/sh\necho hi\n"))
    assert own["user-data"] == "#!/bin/sh\necho hi\n"
    assert seed_digest(own) != seed_digest(files)


def test_a_seed_image_is_written_once_per_content(tmp_path):
    path = tmp_path / "vm-1.iso"
    seed = SeedSpec("vm-1", "web-1")
    assert write_seed(path, seed) is True
    assert path.read_bytes()[32768 + 40:32768 + 46] == b"cidata"  # the ISO 9660 volume label
    assert write_seed(path, seed) is False
    assert write_seed(path, SeedSpec("vm-1", "web-2")) is True
    remove_seed(path)
    assert list(tmp_path.iterdir()) == []
