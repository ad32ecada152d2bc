"""Domain XML is a pure function of the spec, compared against golden files.

Regenerate a golden file on purpose with VMFLOW_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from services.host_worker.domain_xml import build_domain_xml, metadata_fields
from shared.models import BootSpec, DomainSpec

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
