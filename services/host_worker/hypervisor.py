"""The only module that imports libvirt.

Every method is blocking and idempotent; callers run them off the event loop. libvirt errors
are translated here, once, into ``shared.errors`` types.
"""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

import libvirt
import structlog

from services.host_worker.domain_xml import METADATA_NS, domain_name, metadata_fields
from shared.errors import Conflict, HostUnavailable, HypervisorError, NotFound, VmflowError
from shared.models import DomainSummary

log = structlog.get_logger(__name__)

_STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",  # idle vCPUs: the guest runs
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting_down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}
_LIFECYCLE_NAMES = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}
_UNREACHABLE_CODES = {
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_AUTH_FAILED,
}


@dataclass(frozen=True)
class LifecycleEvent:
    vm_id: str
    event: str
    detail: int


def translate(exc: libvirt.libvirtError) -> VmflowError:
    """Map a libvirt error to the platform's hierarchy with libvirt's own message."""
    code = exc.get_error_code()
    message = exc.get_error_message() or str(exc)
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return NotFound(message)
    if code in _UNREACHABLE_CODES:
        return HostUnavailable(message)
    return HypervisorError(message)


_event_loop_started = threading.Lock()
_event_loop_running = False


def _ensure_event_loop() -> None:
    """libvirt delivers events and keepalives only while its default event loop runs."""
    global _event_loop_running
    with _event_loop_started:
        if _event_loop_running:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_running = True


class Hypervisor:
    """One host's libvirt connection, reopened when it drops."""

    def __init__(self, uri: str, on_lifecycle: Callable[[LifecycleEvent], None] | None = None) -> None:
        self._uri = uri
        self._on_lifecycle = on_lifecycle
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._metadata_cache: dict[str, dict[str, str]] = {}

    # -- connection -------------------------------------------------------------------------

    def connection(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is not None and self._conn.isAlive():
                return self._conn
            _ensure_event_loop()
            try:
                conn = libvirt.open(self._uri)
            except libvirt.libvirtError as exc:
                raise HostUnavailable(f"cannot reach libvirt at {self._uri}: {exc.get_error_message()}") from exc
            try:
                conn.setKeepAlive(5, 3)  # notice a dead remote daemon within ~15 s
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:  # local drivers have none
                    conn.close()
                    raise HostUnavailable(f"libvirt at {self._uri}: {exc.get_error_message()}") from exc
            if self._on_lifecycle is not None:
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle_callback, None
                )
            self._conn = conn
            log.info("libvirt connected", uri=self._uri)
            return conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except libvirt.libvirtError:
                    pass
                self._conn = None

    def _lifecycle_callback(self, _conn, dom, event: int, detail: int, _opaque) -> None:
        # Runs on libvirt's event thread: hand the fact over, never call back into libvirt here.
        name = _LIFECYCLE_NAMES.get(event, f"event{event}")
        assert self._on_lifecycle is not None
        self._on_lifecycle(LifecycleEvent(dom.UUIDString(), name, detail))

    def _lookup(self, vm_id: str) -> libvirt.virDomain | None:
        try:
            return self.connection().lookupByUUIDString(vm_id)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise translate(exc) from exc

    # -- host facts -------------------------------------------------------------------------

    def host_capacity(self) -> tuple[int, int]:
        """(vCPUs, memory MiB) of the host."""
        try:
            _model, memory_mib, cpus, *_ = self.connection().getInfo()
        except libvirt.libvirtError as exc:
            raise translate(exc) from exc
        return cpus, memory_mib

    def list_domains(self) -> list[DomainSummary]:
        """Every domain that is defined or runs, with its size and state."""
        try:
            domains = self.connection().listAllDomains()
            result = []
            for dom in domains:
                state, _max_kib, mem_kib, vcpus, _cpu_time = dom.info()
                meta = self._metadata(dom)
                result.append(DomainSummary(
                    vm_id=dom.UUIDString(),
                    state=_STATE_NAMES.get(state, "unknown"),
                    vcpus=vcpus,
                    memory_mib=mem_kib // 1024,
                    disk_gib=int(meta.get("disk_gib") or 0),
                    group=meta.get("group") or None,
                ))
            return result
        except libvirt.libvirtError as exc:
            raise translate(exc) from exc

    def _metadata(self, dom: libvirt.virDomain) -> dict[str, str]:
        """Our metadata of a domain ({} for domains vmflow did not define). Cached: it never
        changes for a given domain UUID."""
        vm_id = dom.UUIDString()
        if vm_id not in self._metadata_cache:
            try:
                xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)
                self._metadata_cache[vm_id] = metadata_fields(xml)
            except libvirt.libvirtError:
                self._metadata_cache[vm_id] = {}
        return self._metadata_cache[vm_id]

    # -- one domain ---------------------------------------------------------------------------

    def define(self, xml: str) -> None:
        """Create or update the persistent definition; same UUID means same VM."""
        try:
            self.connection().defineXML(xml)
        except libvirt.libvirtError as exc:
            raise translate(exc) from exc

    def state(self, vm_id: str) -> str:
        dom = self._lookup(vm_id)
        if dom is None:
            return "absent"
        try:
            state, _reason = dom.state()
        except libvirt.libvirtError as exc:
            raise translate(exc) from exc
        return _STATE_NAMES.get(state, "unknown")

    def start(self, vm_id: str) -> None:
        """Start the defined domain; a running one is left alone."""
        dom = self._require(vm_id)
        try:
            if not dom.isActive():
                dom.create()
        except libvirt.libvirtError as exc:
            raise translate(exc) from exc

    def request_shutdown(self, vm_id: str) -> None:
        """Ask the guest to power off (ACPI). Returns at once; absent or stopped is fine."""
        dom = self._lookup(vm_id)
        try:
            if dom is not None and dom.isActive():
                dom.shutdown()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:  # stopped meanwhile
                raise translate(exc) from exc

    def destroy(self, vm_id: str) -> None:
        """Power off at once; absent or stopped is fine."""
        dom = self._lookup(vm_id)
        try:
            if dom is not None and dom.isActive():
                dom.destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                raise translate(exc) from exc

    def undefine(self, vm_id: str) -> None:
        """Destroy if running, then remove the definition; absent is fine."""
        self.destroy(vm_id)
        dom = self._lookup(vm_id)
        if dom is None:
            return
        self._metadata_cache.pop(vm_id, None)
        flags = (
            libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        )
        try:
            dom.undefineFlags(flags)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise translate(exc) from exc

    def tenant_of(self, vm_id: str) -> str | None:
        dom = self._lookup(vm_id)
        if dom is None:
            return None
        return self._metadata(dom).get("tenant")

    def _require(self, vm_id: str) -> libvirt.virDomain:
        dom = self._lookup(vm_id)
        if dom is None:
            raise NotFound(f"domain {domain_name(vm_id)} is not defined on this host")
        return dom

    # -- data disks ---------------------------------------------------------------------------

    def _disk_maps(self, dom: libvirt.virDomain) -> tuple[bool, dict[str, str], dict[str, str]]:
        """(running, persistent target->file, live target->file)."""
        running = bool(dom.isActive())
        persistent = disk_sources(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        live = disk_sources(dom.XMLDesc(0)) if running else {}
        return running, persistent, live

    def attach_disk(self, vm_id: str, disk_path: str) -> str:
        """Attach a qcow2 file as a virtio disk: to the running guest and to its definition, or
        only to the definition while it is stopped. Already attached is fine. Returns the
        target (vdb, vdc, ...). Raises NotFound, Conflict (no free target), HypervisorError."""
        dom = self._require(vm_id)
        try:
            running, persistent, live = self._disk_maps(dom)
            target = (_target_of(disk_path, persistent) or _target_of(disk_path, live)
                      or free_disk_target(set(persistent) | set(live)))
            flags = 0
            if disk_path not in persistent.values():
                flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
            if running and disk_path not in live.values():
                flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
            if flags:
                dom.attachDeviceFlags(disk_device_xml(disk_path, target), flags)
        except libvirt.libvirtError as exc:
            raise translate(exc) from exc
        log.info("disk attached", vm_id=vm_id, disk=disk_path, target=target, live=running)
        return target

    def detach_disk(self, vm_id: str, disk_path: str) -> None:
        """Remove the disk from the definition and ask the running guest to release it (which
        completes when the guest agrees: see ``has_live_disk``). Absent is fine."""
        dom = self._lookup(vm_id)
        if dom is None:
            return
        try:
            running, persistent, live = self._disk_maps(dom)
            if (target := _target_of(disk_path, persistent)) is not None:
                dom.detachDeviceFlags(disk_device_xml(disk_path, target), libvirt.VIR_DOMAIN_AFFECT_CONFIG)
            if running and (target := _target_of(disk_path, live)) is not None:
                dom.detachDeviceFlags(disk_device_xml(disk_path, target), libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            raise translate(exc) from exc
        log.info("disk detached", vm_id=vm_id, disk=disk_path, live=running)

    def has_live_disk(self, vm_id: str, disk_path: str) -> bool:
        """Whether the running guest still has the disk (an unplug waits for the guest)."""
        dom = self._lookup(vm_id)
        try:
            return dom is not None and bool(dom.isActive()) and disk_path in disk_sources(dom.XMLDesc(0)).values()
        except libvirt.libvirtError as exc:
            raise translate(exc) from exc


# -- data disk XML (pure) ---------------------------------------------------------------------

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


def _target_of(disk_path: str, sources: dict[str, str]) -> str | None:
    return next((target for target, path in sources.items() if path == disk_path), None)


def free_disk_target(used: set[str]) -> str:
    """The first virtio target no disk uses (vda is the root disk). Raises Conflict."""
    for target in DATA_DISK_TARGETS:
        if target not in used:
            return target
    raise Conflict(f"no free disk slot: {len(DATA_DISK_TARGETS)} data disks are attached already")


def disk_device_xml(disk_path: str, target: str) -> str:
    disk = ET.Element("disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="qcow2")
    ET.SubElement(disk, "source", file=disk_path)
    ET.SubElement(disk, "target", dev=target, bus="virtio")
    return ET.tostring(disk, encoding="unicode")
