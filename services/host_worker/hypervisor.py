"""The only module that imports libvirt.

Every method is blocking and idempotent; callers run them off the event loop. libvirt errors
are translated here, once, into ``shared.errors`` types.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import libvirt
import structlog

from services.host_worker.domain_xml import (
    METADATA_NS,
    disk_device_xml,
    disk_sources,
    domain_name,
    free_disk_target,
    interface_bridges,
    interface_macs,
    interface_xml,
    metadata_fields,
    target_of,
    with_disk_sources,
)
from services.host_worker.migration import CompletedMigration
from shared.errors import (
    Conflict,
    HostUnavailable,
    HypervisorError,
    InvalidRequest,
    NotFound,
    Timeout,
    VmflowError,
)
from shared.migration import MigrationProgress
from shared.models import DomainSummary
from shared.networks import NicSpec
from shared.units import MIB as _MIB

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
# libvirt's detail of a lifecycle event, by event: why a domain stopped, how it started.
_LIFECYCLE_REASONS = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED: {
        libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: "shutdown",
        libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: "destroyed",
        libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: "crashed",
        libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: "migrated",
        libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED: "saved",
        libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: "failed",
        libvirt.VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: "from_snapshot",
    },
    libvirt.VIR_DOMAIN_EVENT_STARTED: {
        libvirt.VIR_DOMAIN_EVENT_STARTED_BOOTED: "booted",
        libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED: "migrated",
        libvirt.VIR_DOMAIN_EVENT_STARTED_RESTORED: "restored",
        libvirt.VIR_DOMAIN_EVENT_STARTED_FROM_SNAPSHOT: "from_snapshot",
        libvirt.VIR_DOMAIN_EVENT_STARTED_WAKEUP: "wakeup",
    },
    libvirt.VIR_DOMAIN_EVENT_CRASHED: {libvirt.VIR_DOMAIN_EVENT_CRASHED_PANICKED: "panicked"},
}
# Why a domain is shut off, as its state says (the heartbeat's view of a crash).
_SHUTOFF_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED: "migrated",
    libvirt.VIR_DOMAIN_SHUTOFF_SAVED: "saved",
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: "failed",
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
    reason: str
    at_s: float


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
        # Every error reaches the caller as an exception; libvirt's own print to stderr would
        # only repeat it, and call expected answers ("no such domain") errors.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

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
            conn = self._open_connection()
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
        reason = _LIFECYCLE_REASONS.get(event, {}).get(detail, str(detail))
        assert self._on_lifecycle is not None
        self._on_lifecycle(LifecycleEvent(dom.UUIDString(), name, reason, time.time()))

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
        except libvirt.libvirtError as exc:
            raise translate(exc) from exc
        result = []
        for dom in domains:
            try:
                state, _max_kib, mem_kib, vcpus, _cpu_time = dom.info()
                _state, reason = dom.state()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # gone since the listing (undefined, or migrated away)
                raise translate(exc) from exc
            meta = self._metadata(dom)
            result.append(DomainSummary(
                vm_id=dom.UUIDString(),
                state=_STATE_NAMES.get(state, "unknown"),
                reason=_SHUTOFF_REASONS.get(reason, "") if state == libvirt.VIR_DOMAIN_SHUTOFF else "",
                vcpus=vcpus,
                memory_mib=mem_kib // 1024,
                disk_gib=int(meta.get("disk_gib") or 0),
                group=meta.get("group") or None,
                managed=bool(meta.get("tenant")),
            ))
        return result

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
        self._if_running(vm_id, lambda dom: dom.shutdown())

    def destroy(self, vm_id: str) -> None:
        """Power off at once; absent or stopped is fine."""
        self._if_running(vm_id, lambda dom: dom.destroy())

    def _if_running(self, vm_id: str, action: Callable[[libvirt.virDomain], object]) -> None:
        dom = self._lookup(vm_id)
        try:
            if dom is not None and dom.isActive():
                action(dom)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:  # stopped meanwhile
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
            target = (target_of(disk_path, persistent) or target_of(disk_path, live)
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
            if (target := target_of(disk_path, persistent)) is not None:
                dom.detachDeviceFlags(disk_device_xml(disk_path, target), libvirt.VIR_DOMAIN_AFFECT_CONFIG)
            if running and (target := target_of(disk_path, live)) is not None:
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

    # -- NICs ---------------------------------------------------------------------------------------

    def _nic_maps(self, dom: libvirt.virDomain) -> tuple[bool, set[str], set[str]]:
        """(running, MACs in the definition, MACs in the running guest)."""
        running = bool(dom.isActive())
        persistent = interface_macs(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        live = interface_macs(dom.XMLDesc(0)) if running else set()
        return running, persistent, live

    def attach_interface(self, vm_id: str, nic: NicSpec) -> None:
        """Plug the NIC into the running guest and the definition (only the definition while
        stopped). Already plugged is fine. Raises NotFound, HypervisorError."""
        dom = self._require(vm_id)
        try:
            running, persistent, live = self._nic_maps(dom)
            flags = 0 if nic.mac.lower() in persistent else libvirt.VIR_DOMAIN_AFFECT_CONFIG
            if running and nic.mac.lower() not in live:
                flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
            if flags:
                dom.attachDeviceFlags(interface_xml(nic), flags)
        except libvirt.libvirtError as exc:
            raise translate(exc) from exc
        log.info("NIC plugged", vm_id=vm_id, mac=nic.mac, bridge=nic.bridge, live=running)

    def detach_interface(self, vm_id: str, nic: NicSpec) -> None:
        """Remove the NIC from the definition and ask the running guest to let go of it (done
        when the guest agrees: see ``has_live_interface``). Absent is fine."""
        dom = self._lookup(vm_id)
        if dom is None:
            return
        try:
            running, persistent, live = self._nic_maps(dom)
            if nic.mac.lower() in persistent:
                dom.detachDeviceFlags(interface_xml(nic), libvirt.VIR_DOMAIN_AFFECT_CONFIG)
            if running and nic.mac.lower() in live:
                dom.detachDeviceFlags(interface_xml(nic), libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            raise translate(exc) from exc
        log.info("NIC unplug asked", vm_id=vm_id, mac=nic.mac, live=running)

    def has_live_interface(self, vm_id: str, mac: str) -> bool:
        dom = self._lookup(vm_id)
        try:
            return dom is not None and bool(dom.isActive()) and mac.lower() in interface_macs(dom.XMLDesc(0))
        except libvirt.libvirtError as exc:
            raise translate(exc) from exc

    def bridges_in_use(self) -> set[str]:
        """Every bridge a domain on this host is plugged into, running or only defined."""
        bridges: set[str] = set()
        try:
            for dom in self.connection().listAllDomains():
                try:
                    bridges |= interface_bridges(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
                    if dom.isActive():
                        bridges |= interface_bridges(dom.XMLDesc(0))
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
        except libvirt.libvirtError as exc:
            raise translate(exc) from exc
        return bridges

    # -- migration ------------------------------------------------------------------------------

    def migrate_live(self, vm_id: str, dest_uri: str, *, disk_moves: dict[str, str] | None = None,
                     auto_converge: bool = False, post_copy: bool = False, bandwidth_mib_s: int = 0,
                     initial_downtime_ms: int | None = None) -> CompletedMigration | None:
        """Live-migrate the running domain to ``dest_uri`` (reached by this host's libvirtd, peer to
        peer) and block until libvirt is done: on return the domain runs and is defined on the
        destination only. ``disk_moves`` (source path -> destination path) names the disks on
        this host's own storage: their top layer is copied along into the destination's files,
        which exist already on the same image. Returns the completed job's figures as the source
        saw them, None when libvirt did not report them in time. On any error the domain still
        runs here (outside post-copy). Raises NotFound, HostUnavailable, HypervisorError (also
        when aborted)."""
        self._require(vm_id)
        finished = threading.Event()
        final: dict[str, int] = {}

        def on_job_completed(_conn, _dom, params: dict[str, int], _opaque) -> None:
            final.update(params)  # runs on libvirt's event thread: no libvirt calls here
            finished.set()

        params: dict = {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: bandwidth_mib_s} if bandwidth_mib_s else {}
        flags = migration_flags(live=True, copy_disks=bool(disk_moves), auto_converge=auto_converge,
                                post_copy=post_copy)
        # A connection of its own: while one thread blocked in migrateToURI3, other calls on the
        # same connection (job stats, heartbeats) were seen stalling for the keepalive interval (5 s).
        conn = self._open_connection()
        try:
            dom = conn.lookupByUUIDString(vm_id)
            conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, on_job_completed, None)
            if initial_downtime_ms is not None:
                dom.migrateSetMaxDowntime(initial_downtime_ms)  # QEMU keeps it for the coming job
            if disk_moves:
                running = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_MIGRATABLE)
                persistent = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_INACTIVE
                                         | libvirt.VIR_DOMAIN_XML_MIGRATABLE)
                params.update(disk_move_params(running, persistent, disk_moves))
            log.info("live migration starting", vm_id=vm_id, dest_uri=dest_uri, flags=flags)
            dom.migrateToURI3(dest_uri, params, flags)
            log.info("live migration finished", vm_id=vm_id, dest_uri=dest_uri)
            finished.wait(_COMPLETED_EVENT_WAIT_S)
        except libvirt.libvirtError as exc:
            raise _migration_error(exc, vm_id, dest_uri) from exc
        finally:
            try:
                conn.close()  # drops the event callback with it
            except libvirt.libvirtError:
                pass
        return completed_from_job_stats(final) if final else None

    def _open_connection(self) -> libvirt.virConnect:
        """A new connection to this host, with keepalive (a dead remote daemon is noticed within
        ~15 s); the caller closes it. Raises HostUnavailable."""
        _ensure_event_loop()
        try:
            conn = libvirt.open(self._uri)
        except libvirt.libvirtError as exc:
            raise HostUnavailable(f"cannot reach libvirt at {self._uri}: {exc.get_error_message()}") from exc
        try:
            conn.setKeepAlive(5, 3)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:  # local drivers have none
                conn.close()
                raise HostUnavailable(f"libvirt at {self._uri}: {exc.get_error_message()}") from exc
        return conn

    def migrate_offline(self, vm_id: str, dest_uri: str, *, disk_moves: dict[str, str] | None = None) -> None:
        """Move the definition of a stopped domain to ``dest_uri`` (peer to peer): on return it is
        defined there and no longer here. Disks are not copied: ``disk_moves`` (source path ->
        destination path) points the destination's definition at copies made beforehand.
        Raises NotFound, HostUnavailable, HypervisorError (e.g. the domain runs)."""
        flags = migration_flags(live=False, copy_disks=False)
        dom = self._require(vm_id)
        try:
            params = {}
            if disk_moves:
                xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_INACTIVE
                                  | libvirt.VIR_DOMAIN_XML_MIGRATABLE)
                params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = with_disk_sources(xml, disk_moves)
            dom.migrateToURI3(dest_uri, params, flags)
        except libvirt.libvirtError as exc:
            raise _migration_error(exc, vm_id, dest_uri) from exc
        log.info("offline migration done", vm_id=vm_id, dest_uri=dest_uri)

    def job_stats(self, vm_id: str) -> MigrationProgress | None:
        """The running outgoing migration of the domain, None when there is none (no job, another
        kind of job, the domain stopped or gone)."""
        dom = self._lookup(vm_id)
        if dom is None:
            return None
        try:
            stats = dom.jobStats()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in _NO_JOB_CODES:
                return None
            raise translate(exc) from exc
        if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
            return None
        if stats.get(libvirt.VIR_DOMAIN_JOB_OPERATION) != libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT:
            return None
        return progress_from_job_stats(stats)

    def completed_job_stats(self, vm_id: str) -> CompletedMigration | None:
        """The figures of the domain's last completed job as this host saw it (e.g. an incoming
        migration, read on the destination), kept for later readers; None when there are none."""
        dom = self._lookup(vm_id)
        if dom is None:
            return None
        try:
            stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED
                                 | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in _NO_JOB_CODES:
                return None
            raise translate(exc) from exc
        if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
            return None
        return completed_from_job_stats(stats)

    def set_max_downtime(self, vm_id: str, downtime_ms: int) -> None:
        """Let the running (or next) migration pause the guest up to ``downtime_ms`` at its end."""
        dom = self._require(vm_id)
        try:
            dom.migrateSetMaxDowntime(downtime_ms)
        except libvirt.libvirtError as exc:
            raise translate(exc) from exc

    def start_post_copy(self, vm_id: str) -> None:
        """Switch the running migration (started with post_copy=True) to post-copy: the guest runs
        on the destination from now on, fetching the pages it misses from here."""
        dom = self._require(vm_id)
        try:
            dom.migrateStartPostCopy(0)
        except libvirt.libvirtError as exc:
            raise translate(exc) from exc

    def abort_job(self, vm_id: str) -> None:
        """Abort the domain's running job (a pre-copy migration: the guest keeps running here).
        No job, or no domain, is fine."""
        dom = self._lookup(vm_id)
        if dom is None:
            return
        try:
            dom.abortJob()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() not in _NO_JOB_CODES:
                raise translate(exc) from exc
        log.info("job aborted", vm_id=vm_id)

    # -- serial console (a libvirt stream; see ConsoleStream) ------------------------------------

    def open_console(self, vm_id: str, loop: asyncio.AbstractEventLoop, on_output: Callable[[bytes], None],
                     on_end: Callable[[str], None]) -> ConsoleStream:
        """Attach to the running domain's console (serial port 0) as a non-blocking stream on
        the shared connection. ``on_output`` gets each chunk the guest writes, ``on_end`` is
        called once when the stream ends by itself ("" at its end, else libvirt's error), both
        on ``loop``. VIR_DOMAIN_CONSOLE_SAFE: refused while any other client (a second session,
        a ``virsh console``) holds the console. The caller closes the stream. Raises NotFound,
        Conflict (not running, or the console is taken), HostUnavailable, HypervisorError."""
        dom = self._require(vm_id)
        try:
            stream = self.connection().newStream(libvirt.VIR_STREAM_NONBLOCK)
        except libvirt.libvirtError as exc:
            raise translate(exc) from exc
        console = ConsoleStream(stream, loop, on_output, on_end)
        try:
            dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_SAFE)
            console.watch()
        except libvirt.libvirtError as exc:
            console.close()
            raise _console_error(exc, vm_id) from exc
        log.info("console opened", vm_id=vm_id)
        return console

    def state_and_reason(self, vm_id: str) -> tuple[str, str]:
        """(state, why it is shut off: "migrated", "destroyed", ... or ""); ("absent", "") for
        a domain not defined here."""
        dom = self._lookup(vm_id)
        if dom is None:
            return "absent", ""
        try:
            state, reason = dom.state()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return "absent", ""
            raise translate(exc) from exc
        shutoff_reason = _SHUTOFF_REASONS.get(reason, "") if state == libvirt.VIR_DOMAIN_SHUTOFF else ""
        return _STATE_NAMES.get(state, "unknown"), shutoff_reason


# -- migration (pure) ---------------------------------------------------------------------------

# The source's job-completed event carries the final stats (downtime); after UNDEFINE_SOURCE the
# source domain is gone, so it is the only place the source side can read them. It normally
# arrives within milliseconds of migrateToURI3 returning.
_COMPLETED_EVENT_WAIT_S = 2.0
_NO_JOB_CODES = {libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID}


def disk_move_params(running_xml: str, persistent_xml: str, moves: dict[str, str]) -> dict:
    """Migration parameters that copy the moved disks (and only those) into their new paths, in
    the running domain and in the definition the destination keeps for the next boot."""
    targets = [target for target, path in disk_sources(running_xml).items() if path in moves]
    return {
        libvirt.VIR_MIGRATE_PARAM_DEST_XML: with_disk_sources(running_xml, moves),
        libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: with_disk_sources(persistent_xml, moves),
        libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS: targets,
    }


def migration_flags(*, live: bool, copy_disks: bool = False, auto_converge: bool = False,
                    post_copy: bool = False) -> int:
    """libvirt flags of a peer-to-peer migration that leaves the domain defined on the
    destination only. A plain shared directory needs UNSAFE (libvirt trusts only network
    filesystems as shared). ``copy_disks``: a live migration copies the top layer of the disks
    it is told of (their images are shared); an offline one never copies (InvalidRequest)."""
    flags = libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
    flags |= libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    if not live:
        if copy_disks:
            raise InvalidRequest("an offline migration copies no disks: copy them first")
        return flags | libvirt.VIR_MIGRATE_OFFLINE
    flags |= libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_UNSAFE
    if copy_disks:
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
    if auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if post_copy:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    return flags


def progress_from_job_stats(stats: dict[str, int]) -> MigrationProgress:
    """A look at a running migration from ``virDomainGetJobStats`` (bytes, pages/s)."""
    page_size = stats.get(libvirt.VIR_DOMAIN_JOB_MEMORY_PAGE_SIZE) or 4096
    return MigrationProgress(
        elapsed_ms=stats.get(libvirt.VIR_DOMAIN_JOB_TIME_ELAPSED, 0),
        iteration=stats.get(libvirt.VIR_DOMAIN_JOB_MEMORY_ITERATION, 0),
        data_total_mib=stats.get(libvirt.VIR_DOMAIN_JOB_DATA_TOTAL, 0) // _MIB,
        data_processed_mib=stats.get(libvirt.VIR_DOMAIN_JOB_DATA_PROCESSED, 0) // _MIB,
        data_remaining_mib=stats.get(libvirt.VIR_DOMAIN_JOB_DATA_REMAINING, 0) // _MIB,
        dirty_rate_mib_s=stats.get(libvirt.VIR_DOMAIN_JOB_MEMORY_DIRTY_RATE, 0) * page_size / _MIB,
    )


def completed_from_job_stats(stats: dict[str, int]) -> CompletedMigration:
    """The final figures of a finished migration (completed job stats or the completion event)."""
    return CompletedMigration(
        elapsed_ms=stats.get(libvirt.VIR_DOMAIN_JOB_TIME_ELAPSED, 0),
        downtime_ms=stats.get(libvirt.VIR_DOMAIN_JOB_DOWNTIME),
        data_processed_mib=stats.get(libvirt.VIR_DOMAIN_JOB_DATA_PROCESSED, 0) // _MIB,
        iterations=stats.get(libvirt.VIR_DOMAIN_JOB_MEMORY_ITERATION, 0),
        post_copy_requests=stats.get(libvirt.VIR_DOMAIN_JOB_MEMORY_POSTCOPY_REQS, 0),
    )


def _migration_error(exc: libvirt.libvirtError, vm_id: str, dest_uri: str) -> VmflowError:
    translated = translate(exc)
    return type(translated)(f"migrating {domain_name(vm_id)} to {dest_uri}: {translated.message}")


# -- serial console streams ------------------------------------------------------------------------

_CONSOLE_CHUNK = 64 * 1024
_CONSOLE_SEND_TIMEOUT_S = 5.0


def _console_error(exc: libvirt.libvirtError, vm_id: str) -> VmflowError:
    code = exc.get_error_code()
    if code == libvirt.VIR_ERR_OPERATION_INVALID:  # "domain is not running"
        return Conflict(f"{domain_name(vm_id)} is not running")
    if code == libvirt.VIR_ERR_OPERATION_FAILED:  # "Active console session exists for this domain"
        return Conflict(f"a console session is already open for this VM ({exc.get_error_message()})")
    return translate(exc)


class ConsoleStream:
    """One open console. Output is read on libvirt's event thread, as it becomes readable, and
    handed to asyncio with ``call_soon_threadsafe``; ``write`` and ``close`` block (run them in
    a thread). The stream ends once: ``on_end`` is never called after ``close``."""

    _EVENTS = libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP

    def __init__(self, stream: libvirt.virStream, loop: asyncio.AbstractEventLoop,
                 on_output: Callable[[bytes], None], on_end: Callable[[str], None]) -> None:
        self._stream = stream
        self._loop = loop
        self._on_output = on_output
        self._on_end = on_end
        self._lock = threading.Lock()
        self._watching = False
        self._ended = False  # by the stream itself (end of file, error) or by close()
        self._at_eof = False
        self._closed = False

    def watch(self) -> None:
        self._stream.eventAddCallback(self._EVENTS, self._on_event, None)
        self._watching = True

    def _on_event(self, stream: libvirt.virStream, events: int, _opaque: object) -> None:
        # libvirt's event thread: read what is there, never block.
        if self._ended:
            return
        while True:
            try:
                data = stream.recv(_CONSOLE_CHUNK)
            except libvirt.libvirtError as exc:
                self._end(translate(exc).message)
                return
            if data == -2:  # nothing more for now
                break
            if not data:
                self._end("", at_eof=True)
                return
            self._loop.call_soon_threadsafe(self._on_output, data)
        if events & (libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP):
            self._end("the console stream hung up" if events & libvirt.VIR_STREAM_EVENT_HANGUP
                      else "the console stream failed")

    def _end(self, message: str, at_eof: bool = False) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended, self._at_eof = True, at_eof
        self._unwatch()
        self._loop.call_soon_threadsafe(self._on_end, message)

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            try:
                self._stream.eventRemoveCallback()
            except libvirt.libvirtError:
                pass

    def write(self, data: bytes) -> None:
        """Send ``data`` to the guest. Raises Conflict once the stream has ended, Timeout when
        libvirt takes none of it for a while, HostUnavailable or HypervisorError."""
        view = memoryview(data)
        deadline = time.monotonic() + _CONSOLE_SEND_TIMEOUT_S
        while view:
            if self._ended:
                raise Conflict("the console session has ended")
            try:
                sent = self._stream.send(bytes(view))
            except libvirt.libvirtError as exc:
                raise translate(exc) from exc
            if sent == -2:  # the stream is full: the guest reads slowly
                if time.monotonic() > deadline:
                    raise Timeout(f"the guest took no console input for {_CONSOLE_SEND_TIMEOUT_S:g} s")
                time.sleep(0.01)
                continue
            view = view[sent:]

    def close(self) -> None:
        """Release the console (finish a stream at its end, abort one still open) so another
        session may open it. Idempotent; never raises."""
        with self._lock:
            if self._closed:
                return
            self._closed, self._ended = True, True
        self._unwatch()
        try:
            if self._at_eof:
                self._stream.finish()
            else:
                self._stream.abort()
        except libvirt.libvirtError:
            pass  # the stream failed already: nothing left to release
