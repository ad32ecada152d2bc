"""Domain XML as a pure function of the spec, and the edits made to a definition later (data
disks, disks that moved): no libvirt connection, golden-file tested."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from shared.errors import Conflict, InvalidRequest
from shared.models import DomainSpec
from shared.networks import NicSpec

METADATA_NS = "http://vmflow.local/xmlns/vm/1"
METADATA_PREFIX = "vmflow"
ET.register_namespace(METADATA_PREFIX, METADATA_NS)


def domain_name(vm_id: str) -> str:
    """libvirt names must be unique per host; user-chosen VM names are not, so use the id."""
    return f"vm-{vm_id}"


def console_path(console_dir: str, vm_id: str) -> str:
    """The log of the interactive console (ttyS0)."""
    return f"{console_dir.rstrip('/')}/{vm_id}.log"


def serial_log_path(console_dir: str, vm_id: str) -> str:
    """The file behind the second serial port (ttyS1)."""
    return f"{console_dir.rstrip('/')}/{vm_id}.serial1.log"


def seed_path(seed_dir: str, vm_id: str) -> str:
    """The VM's NoCloud seed image on the host."""
    return f"{seed_dir.rstrip('/')}/{vm_id}.iso"


SEED_TARGET = "vdz"  # the last virtio letter, so data disks keep vdb, vdc, ...


def build_domain_xml(spec: DomainSpec, console_dir: str, seed_dir: str = "") -> str:
    """The persistent definition of ``spec``. Every user-supplied string goes through
    ElementTree, so names with XML special characters cannot change the document's shape.
    ``seed_dir`` is where the host keeps seed images (needed when ``spec.seed``)."""
    domain = ET.Element("domain", type=spec.domain_type)
    ET.SubElement(domain, "name").text = domain_name(spec.vm_id)
    ET.SubElement(domain, "uuid").text = spec.vm_id
    ET.SubElement(domain, "title").text = spec.vm_name
    metadata = ET.SubElement(domain, "metadata")
    vm_meta = ET.SubElement(metadata, f"{{{METADATA_NS}}}vm")
    ET.SubElement(vm_meta, f"{{{METADATA_NS}}}name").text = spec.vm_name
    ET.SubElement(vm_meta, f"{{{METADATA_NS}}}tenant").text = spec.tenant
    # Placement reads these back from every host's heartbeat, so libvirt stays the truth of
    # which group member runs where and how much disk it was given.
    ET.SubElement(vm_meta, f"{{{METADATA_NS}}}disk_gib").text = str(spec.disk_gib)
    if spec.group_id:
        ET.SubElement(vm_meta, f"{{{METADATA_NS}}}group").text = spec.group_id
    ET.SubElement(domain, "memory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(domain, "vcpu").text = str(spec.vcpus)
    _add_os(domain, spec)
    ET.SubElement(ET.SubElement(domain, "features"), "acpi")
    ET.SubElement(domain, "on_poweroff").text = "destroy"
    ET.SubElement(domain, "on_reboot").text = "restart"
    ET.SubElement(domain, "on_crash").text = "destroy"
    _add_devices(domain, spec, console_dir, seed_dir)
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode") + "\n"


def _add_os(domain: ET.Element, spec: DomainSpec) -> None:
    os_el = ET.SubElement(domain, "os")
    ET.SubElement(os_el, "type", arch="x86_64").text = "hvm"
    if spec.boot is None:
        ET.SubElement(os_el, "boot", dev="hd")
        return
    ET.SubElement(os_el, "kernel").text = spec.boot.kernel_path
    ET.SubElement(os_el, "initrd").text = spec.boot.initrd_path
    ET.SubElement(os_el, "cmdline").text = spec.boot.cmdline


def _add_devices(domain: ET.Element, spec: DomainSpec, console_dir: str, seed_dir: str) -> None:
    devices = ET.SubElement(domain, "devices")
    disk = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="qcow2")
    ET.SubElement(disk, "source", file=spec.disk_path)
    ET.SubElement(disk, "target", dev="vda", bus="virtio")
    if spec.seed:
        if not seed_dir:
            raise InvalidRequest("the VM has a seed but the host has no seed directory")
        devices.append(_seed_disk(seed_path(seed_dir, spec.vm_id)))
    for nic in spec.nics:
        devices.append(_interface(nic))
    # The interactive console (ttyS0): a pty libvirt streams to users, logged to a file that
    # survives restarts (append) and that the host-worker reads to tell that the guest booted.
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "log", file=console_path(console_dir, spec.vm_id), append="on")
    ET.SubElement(serial, "target", port="0")
    # A second port (ttyS1), only ever a file: a guest's own diagnostics, kept off the console.
    serial_log = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial_log, "source", path=serial_log_path(console_dir, spec.vm_id), append="on")
    ET.SubElement(serial_log, "target", port="1")
    ET.SubElement(devices, "memballoon", model="none")


def metadata_fields(metadata_xml: str) -> dict[str, str]:
    """Parse the element libvirt returns for our metadata namespace: {'name': .., 'tenant': ..}."""
    root = ET.fromstring(metadata_xml)
    return {child.tag.rsplit("}", 1)[-1]: child.text or "" for child in root}


# -- editing definitions: data disks, moved disks ---------------------------------------------------------------------

DATA_DISK_TARGETS = tuple(f"vd{letter}" for letter in "bcdefghijklmnopqrstuvwxyz")


def disk_sources(domain_xml: str) -> dict[str, str]:
    """target dev -> source file of each file-backed disk of a domain definition."""
    root = ET.fromstring(domain_xml)
    sources = {}
    for disk in root.findall("devices/disk"):
        target, source = disk.find("target"), disk.find("source")
        if target is not None and source is not None and source.get("file"):
            sources[target.get("dev", "")] = source.get("file", "")
    return sources


def target_of(disk_path: str, sources: dict[str, str]) -> str | None:
    return next((target for target, path in sources.items() if path == disk_path), None)


def free_disk_target(used: set[str]) -> str:
    """The first virtio target no disk uses (vda is the root disk). Raises Conflict."""
    for target in DATA_DISK_TARGETS:
        if target not in used:
            return target
    raise Conflict(f"no free disk slot: {len(DATA_DISK_TARGETS)} data disks are attached already")


def with_disk_sources(domain_xml: str, moves: dict[str, str]) -> str:
    """The definition with each disk whose source file is a key of ``moves`` pointed at its value.
    Raises InvalidRequest when a move names no disk of the domain."""
    root = ET.fromstring(domain_xml)
    missing = set(moves)
    for source in root.findall("devices/disk/source"):
        path = source.get("file")
        if path in moves:
            source.set("file", moves[path])
            missing.discard(path)
    if missing:
        raise InvalidRequest(f"the domain has no disk at {', '.join(sorted(missing))}")
    return ET.tostring(root, encoding="unicode")


def _seed_disk(path: str) -> ET.Element:
    # A raw ISO 9660 image labelled cidata on a read-only virtio disk: what cloud-init's NoCloud
    # datasource looks for. Read-only disks are not copied by a storage migration.
    disk = ET.Element("disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="raw")
    ET.SubElement(disk, "source", file=path)
    ET.SubElement(disk, "target", dev=SEED_TARGET, bus="virtio")
    ET.SubElement(disk, "readonly")
    return disk


# -- NICs -------------------------------------------------------------------------------------------------------------

NIC_ALIAS_PREFIX = "ua-"  # libvirt keeps user aliases that start so: the NIC's port id finds it again


def _interface(nic: NicSpec) -> ET.Element:
    interface = ET.Element("interface", type="bridge")
    ET.SubElement(interface, "mac", address=nic.mac)
    ET.SubElement(interface, "source", bridge=nic.bridge)
    ET.SubElement(interface, "model", type="virtio")
    ET.SubElement(interface, "mtu", size=str(nic.mtu))
    ET.SubElement(interface, "alias", name=NIC_ALIAS_PREFIX + nic.port_id)
    return interface


def interface_xml(nic: NicSpec) -> str:
    """The device XML to hot-plug ``nic``."""
    return ET.tostring(_interface(nic), encoding="unicode")


def interface_macs(domain_xml: str) -> set[str]:
    """The MACs of a definition's NICs, lower case."""
    root = ET.fromstring(domain_xml)
    return {(mac.get("address") or "").lower() for mac in root.findall("devices/interface/mac")}


def interface_bridges(domain_xml: str) -> set[str]:
    """The bridges a definition's NICs are on."""
    root = ET.fromstring(domain_xml)
    return {source.get("bridge", "") for source in root.findall("devices/interface/source") if source.get("bridge")}


def disk_device_xml(disk_path: str, target: str) -> str:
    disk = ET.Element("disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="qcow2")
    ET.SubElement(disk, "source", file=disk_path)
    ET.SubElement(disk, "target", dev=target, bus="virtio")
    return ET.tostring(disk, encoding="unicode")
