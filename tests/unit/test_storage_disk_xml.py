"""Data disks in domain XML, without a libvirt connection: which disks a domain has, which
target a new one gets, and the device XML an attach or detach sends."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from services.host_worker.domain_xml import (
    DATA_DISK_TARGETS,
    build_domain_xml,
    disk_device_xml,
    disk_sources,
    free_disk_target,
)
from shared.errors import Conflict
from shared.models import DomainSpec

SPEC = DomainSpec(vm_id="6c280603-c8d2-416e-9055-62035da46861", vm_name="web", tenant="t", vcpus=1,
                  memory_mib=128, disk_path="/pool/volumes/root.qcow2", domain_type="qemu")


def with_disks(xml: str, disks: dict[str, str]) -> str:
    root = ET.fromstring(xml)
    devices = root.find("devices")
    for target, path in disks.items():
        devices.append(ET.fromstring(disk_device_xml(path, target)))
    return ET.tostring(root, encoding="unicode")


def test_disk_sources_of_a_vmflow_domain():
    xml = build_domain_xml(SPEC, "/consoles")
    assert disk_sources(xml) == {"vda": "/pool/volumes/root.qcow2"}
    xml = with_disks(xml, {"vdb": "/pool/volumes/data-1.qcow2"})
    assert disk_sources(xml) == {"vda": "/pool/volumes/root.qcow2", "vdb": "/pool/volumes/data-1.qcow2"}


def test_free_target_fills_gaps_and_runs_out():
    assert free_disk_target({"vda"}) == "vdb"
    assert free_disk_target({"vda", "vdb", "vdd"}) == "vdc"
    with pytest.raises(Conflict, match="no free disk slot"):
        free_disk_target({"vda", *DATA_DISK_TARGETS})


def test_disk_device_xml_escapes_paths():
    xml = disk_device_xml("/pool/volumes/a'b<c>.qcow2", "vdb")
    disk = ET.fromstring(xml)
    assert disk.get("device") == "disk" and disk.find("driver").get("type") == "qcow2"
    assert disk.find("source").get("file") == "/pool/volumes/a'b<c>.qcow2"
    assert disk.find("target").attrib == {"dev": "vdb", "bus": "virtio"}
