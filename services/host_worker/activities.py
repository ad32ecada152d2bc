"""Temporal activities of one host, on the task queue ``host.<host_id>``.

Each is idempotent, keyed by the VM id (= domain UUID): asking for a state the domain is already
in succeeds. Blocking libvirt calls run in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, replace
from pathlib import Path

import structlog
from temporalio import activity

from services.host_worker.console import count_marker
from services.host_worker.domain_xml import (
    build_domain_xml,
    console_path,
    serial_log_path,
)
from services.host_worker.hypervisor import Hypervisor
from services.host_worker.migration import LiveMigration, disk_moves, observe_migration
from services.host_worker.settings import HostWorkerSettings
from shared import subjects
from shared.errors import Conflict, HypervisorError, InvalidRequest, NotFound, Timeout
from shared.messaging import EventPublisher
from shared.migration import MigrateRequest, MigrateResult, MigrationProgress
from shared.models import (
    BootWaitRequest,
    DomainRef,
    DomainSpec,
    DomainStatus,
    StopRequest,
)
from shared.storage_models import DiskAttachment

log = structlog.get_logger(__name__)
HEARTBEAT_INTERVAL_S = 2.0


@asynccontextmanager
async def heartbeating(interval_s: float = HEARTBEAT_INTERVAL_S):
    """Heartbeat the current activity from a task of its own, so a libvirt call that takes long
    on a busy host does not look like a dead worker; the activity's own deadline still bounds it."""

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(interval_s)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()


class HostActivities:
    def __init__(self, settings: HostWorkerSettings, hypervisor: Hypervisor, domain_type: str,
                 events: EventPublisher | None = None,
                 departed: Callable[[str], Awaitable[None]] | None = None) -> None:
        """``departed(vm_id)``: drops what this host carried for a VM that has left it."""
        self._settings = settings
        self._hv = hypervisor
        self.domain_type = domain_type
        self._events = events
        self._departed = departed
        self.tenants: dict[str, str] = {}  # vm_id -> tenant, for events after undefine

    def _console(self, vm_id: str) -> Path:
        return Path(console_path(self._settings.console_dir, vm_id))

    @activity.defn(name="host.define_domain")
    async def define_domain(self, spec: DomainSpec) -> None:
        """Create or update the definition. Raises HypervisorError if libvirt refuses it."""
        if spec.domain_type != self.domain_type:
            raise HypervisorError(
                f"host {self._settings.host_id} runs '{self.domain_type}' domains, not '{spec.domain_type}'"
            )
        self.tenants[spec.vm_id] = spec.tenant
        Path(self._settings.console_dir).mkdir(parents=True, exist_ok=True)
        xml = build_domain_xml(spec, self._settings.console_dir, self._settings.seed_dir)
        await asyncio.to_thread(self._hv.define, xml)

    @activity.defn(name="host.create_domain")
    async def create_domain(self, spec: DomainSpec) -> None:
        """Define the domain and start it: one call where provisioning made two. A retry after a
        lost answer finds it defined and running, and leaves it so."""
        await self.define_domain(spec)
        await asyncio.to_thread(self._hv.start, spec.vm_id)

    @activity.defn(name="host.start_domain")
    async def start_domain(self, ref: DomainRef) -> None:
        await asyncio.to_thread(self._hv.start, ref.vm_id)

    @activity.defn(name="host.stop_domain")
    async def stop_domain(self, req: StopRequest) -> DomainStatus:
        """Graceful (ACPI) power-off, waiting up to ``timeout_s``, then destroy."""
        if not req.force:
            await asyncio.to_thread(self._hv.request_shutdown, req.vm_id)
            deadline = time.monotonic() + req.timeout_s
            async with heartbeating():
                while time.monotonic() < deadline:
                    state = await asyncio.to_thread(self._hv.state, req.vm_id)
                    if state in ("shutoff", "absent"):
                        return DomainStatus(req.vm_id, state)
                    await asyncio.sleep(0.5)
            log.info("graceful shutdown timed out, destroying", vm_id=req.vm_id, timeout_s=req.timeout_s)
        await asyncio.to_thread(self._hv.destroy, req.vm_id)
        return DomainStatus(req.vm_id, await asyncio.to_thread(self._hv.state, req.vm_id))

    @activity.defn(name="host.reboot_domain")
    async def reboot_domain(self, req: StopRequest) -> DomainStatus:
        """A full power cycle: stop as ``stop_domain`` does, then start. A retry after a lost
        answer cycles once more, which a reboot request tolerates."""
        await self.stop_domain(req)
        await asyncio.to_thread(self._hv.start, req.vm_id)
        return DomainStatus(req.vm_id, await asyncio.to_thread(self._hv.state, req.vm_id))

    @activity.defn(name="host.destroy_domain")
    async def destroy_domain(self, ref: DomainRef) -> None:
        await asyncio.to_thread(self._hv.destroy, ref.vm_id)

    @activity.defn(name="host.undefine_domain")
    async def undefine_domain(self, ref: DomainRef) -> None:
        """Destroy, undefine, and remove the serial ports' logs. Absent is fine."""
        await asyncio.to_thread(self._hv.undefine, ref.vm_id)
        self._console(ref.vm_id).unlink(missing_ok=True)
        Path(serial_log_path(self._settings.console_dir, ref.vm_id)).unlink(missing_ok=True)

    @activity.defn(name="host.evict_domain")
    async def evict_domain(self, ref: DomainRef) -> None:
        """Remove a stale copy of a VM that now lives on another host: destroy and undefine it,
        keeping the console log and the disk (both belong to the copy that lives on). Absent
        is fine."""
        await asyncio.to_thread(self._hv.undefine, ref.vm_id)
        log.info("stale copy removed", vm_id=ref.vm_id)

    @activity.defn(name="host.domain_status")
    async def domain_status(self, req: BootWaitRequest) -> DomainStatus:
        state = await asyncio.to_thread(self._hv.state, req.vm_id)
        markers = count_marker(self._console(req.vm_id), req.boot_marker) if req.boot_marker else 0
        return DomainStatus(req.vm_id, state, markers)

    @activity.defn(name="host.wait_booted")
    async def wait_booted(self, req: BootWaitRequest) -> DomainStatus:
        """Wait until the domain runs and its console shows the boot marker often enough.
        Raises Timeout, or HypervisorError if the domain stops while booting."""
        started_s = time.monotonic()
        deadline = started_s + req.timeout_s
        console = self._console(req.vm_id)
        async with heartbeating():
            while True:
                state = await asyncio.to_thread(self._hv.state, req.vm_id)
                markers = count_marker(console, req.boot_marker) if req.boot_marker else 0
                if state == "running" and (req.boot_marker is None or markers >= req.min_marker_count):
                    log.info("guest booted", vm_id=req.vm_id, waited_s=round(time.monotonic() - started_s, 2))
                    return DomainStatus(req.vm_id, state, markers)
                if state in ("shutoff", "crashed", "absent"):
                    raise HypervisorError(f"the guest stopped while booting (domain {state})")
                if time.monotonic() > deadline:
                    raise Timeout(f"the guest did not boot within {req.timeout_s:g} s (domain {state})")
                await asyncio.sleep(self._settings.console_poll_interval_s)

    @activity.defn(name="host.attach_disk")
    async def attach_disk(self, req: DiskAttachment) -> str:
        """Attach a volume to the domain: live and persistent while it runs, persistent while it
        is stopped. Already attached is fine. Returns the target (vdb, ...)."""
        return await asyncio.to_thread(self._hv.attach_disk, req.vm_id, req.disk_path)

    @activity.defn(name="host.detach_disk")
    async def detach_disk(self, req: DiskAttachment) -> None:
        """Detach a volume and, while the domain runs, wait up to ``timeout_s`` for the guest to
        release it. Absent is fine. Raises Timeout when the guest keeps the disk."""
        await asyncio.to_thread(self._hv.detach_disk, req.vm_id, req.disk_path)
        deadline = time.monotonic() + req.timeout_s
        while await asyncio.to_thread(self._hv.has_live_disk, req.vm_id, req.disk_path):
            if time.monotonic() > deadline:
                raise Timeout(f"the guest did not release {req.disk_path} within {req.timeout_s:g} s")
            activity.heartbeat("waiting for the guest to release the disk")
            await asyncio.sleep(0.2)

    @activity.defn(name="host.migrate_domain")
    async def migrate_domain(self, req: MigrateRequest) -> MigrateResult:
        """Move the VM to ``req.dest_host_id``: live while it runs (driven by ``req.policy``,
        heartbeating its progress), as libvirt's offline migration of its definition while it is
        stopped. On success the VM is defined on the destination only.

        Raises NotFound when the VM is not on this host (an earlier attempt may have moved it:
        the caller checks the destination), Conflict when its state does not fit (live needs it
        running, cold needs it stopped), InvalidRequest for a bad destination, Timeout when the
        policy gave up (the VM still runs here), the hypervisor's errors otherwise (the message
        says where the VM is). Cancelling aborts libvirt's job before the activity ends."""
        host_id, vm_id = self._settings.host_id, req.vm_id
        if req.dest_host_id == host_id:
            raise InvalidRequest(f"VM {vm_id} is on {host_id} already: migrate it to another host")
        if not req.dest_uri:
            raise InvalidRequest(f"host {req.dest_host_id} publishes no migration URI")
        state = await asyncio.to_thread(self._hv.state, vm_id)
        if state == "absent":
            raise NotFound(f"VM {vm_id} is not on host {host_id}: nothing to migrate (an earlier "
                           f"attempt may have moved it to {req.dest_host_id})")
        # Lifecycle events after the move (stopped, undefined) still name the right tenant.
        if vm_id not in self.tenants:
            self.tenants[vm_id] = await asyncio.to_thread(self._hv.tenant_of, vm_id) or "unknown"
        wanted = "running" if req.live else "shutoff"
        if state != wanted:
            kind = "live" if req.live else "cold"
            raise Conflict(f"VM {vm_id} is {state} on {host_id}: a {kind} migration needs it {wanted}")
        result = await (self._migrate_live(req) if req.live else self._migrate_cold(req))
        return replace(result, source_released=await self._release_departed(vm_id))

    async def _release_departed(self, vm_id: str) -> bool:
        """Drop what this host carried for the VM that left it; a failure here never fails the
        move (False: the workflow asks again, the reconcile loop catches up)."""
        if self._departed is None:
            return False
        try:
            await self._departed(vm_id)
        except Exception as exc:
            log.warning("could not release what the VM left here", vm_id=vm_id, error=str(exc))
            return False
        return True

    async def _publish_progress(self, vm_id: str, progress: dict) -> None:
        """The migration's progress as an event of its operation, every couple of seconds."""
        if self._events is None or not progress:
            return
        subject = subjects.op_event(self.tenants.get(vm_id, "unknown"), activity.info().workflow_id, "progress")
        try:
            await self._events.publish(subject, {"vm_id": vm_id, "step": "migrate", "migration": progress})
        except Exception as exc:  # NATS away: the heartbeat still carries the progress
            log.warning("migration progress not published", error=str(exc), vm_id=vm_id)

    async def _migrate_cold(self, req: MigrateRequest) -> MigrateResult:
        started_s = time.monotonic()
        async with heartbeating():
            await asyncio.to_thread(self._hv.migrate_offline, req.vm_id, req.dest_uri,
                                    disk_moves=disk_moves(req))
        observe_migration("cold", time.monotonic() - started_s)
        return MigrateResult(req.vm_id, req.dest_host_id, int((time.monotonic() - started_s) * 1000),
                             downtime_ms=None, data_transferred_mib=0, final_downtime_limit_ms=0)

    async def _migrate_live(self, req: MigrateRequest) -> MigrateResult:
        latest: dict = {}

        def report(progress: MigrationProgress) -> None:
            latest.update(asdict(progress), percent=progress.percent)
            activity.heartbeat(dict(latest))

        async def keep_beating() -> None:  # a slow libvirt call between two looks is no dead worker
            while True:
                await asyncio.sleep(HEARTBEAT_INTERVAL_S)
                activity.heartbeat(dict(latest))
                await self._publish_progress(req.vm_id, dict(latest))

        beating = asyncio.create_task(keep_beating())
        try:
            return await LiveMigration(self._hv, req, self._settings.host_id, report).run()
        finally:
            beating.cancel()
