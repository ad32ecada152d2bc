"""python -m services.host_worker"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import structlog
from temporalio.worker import Worker

from services.host_worker.activities import HostActivities
from services.host_worker.console_sessions import ConsoleSessions
from services.host_worker.guest_activities import GuestActivities
from services.host_worker.guest_setup import GuestSetup, keep_reconciled
from services.host_worker.hypervisor import Hypervisor, LifecycleEvent
from services.host_worker.peers import PeerProbe, follow_peers, libvirt_address
from services.host_worker.plumbing import NetworkPlumber
from services.host_worker.reporting import forward_lifecycle, heartbeat_loop
from services.host_worker.settings import HostWorkerSettings
from shared import subjects
from shared.errors import VmflowError
from shared.guest import VmRelease
from shared.lifecycle import run_until_signalled
from shared.logging import configure_logging
from shared.messaging import (
    EventPublisher,
    connect,
    ensure_event_stream,
    heartbeat_bucket,
)
from shared.metrics import serve_metrics
from shared.temporal import ActivityContext, connect_temporal

log = structlog.get_logger("services.host_worker")


def overlay_address(settings: HostWorkerSettings) -> str:
    """This host's end of the VXLAN tunnels: configured, or where its libvirtd listens for peers."""
    if settings.overlay_address:
        return settings.overlay_address
    address = libvirt_address(settings.migration_uri)
    return address[0] if address else "127.0.0.1"


def resolve_domain_type(setting: str) -> str:
    if setting != "auto":
        return setting
    return "kvm" if os.path.exists("/dev/kvm") else "qemu"


async def main(settings: HostWorkerSettings) -> None:
    serve_metrics(settings.metrics_host, settings.metrics_port)
    structlog.contextvars.bind_contextvars(host_id=settings.host_id)
    loop = asyncio.get_running_loop()
    # libvirt calls block (a domain start can take seconds on a loaded host); enough threads
    # that status polls and heartbeats never queue behind them.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=settings.libvirt_threads))
    lifecycle: asyncio.Queue[LifecycleEvent] = asyncio.Queue()
    hv = Hypervisor(settings.libvirt_uri, lambda e: loop.call_soon_threadsafe(lifecycle.put_nowait, e))
    try:
        await asyncio.to_thread(hv.connection)
    except VmflowError as exc:  # a host powered back on may start its worker first: heartbeat anyway
        log.warning("libvirt not reachable yet", error=exc.message)
    domain_type = resolve_domain_type(settings.domain_type)

    nc = await connect(settings, f"vmflow-host-worker-{settings.host_id}")
    js = nc.jetstream()
    await ensure_event_stream(js, settings.event_stream, settings.jetstream_replicas)
    kv = await heartbeat_bucket(js, settings.heartbeat_bucket, settings.jetstream_replicas)
    events = EventPublisher(js, f"host-worker/{settings.host_id}")
    # The heartbeat loop's own events wait at most a second: beats must not stall behind them.
    beat_events = EventPublisher(js, f"host-worker/{settings.host_id}", patience_s=1.0)
    peers = PeerProbe(settings.host_id, settings.peer_probe_timeout_s, settings.peer_watch_count)
    plumber = NetworkPlumber(settings.netns_prefix, overlay_address(settings), Path(settings.network_state_dir))
    guest_setup = GuestSetup(hv, plumber, settings.seed_dir, peers.addresses)
    host = HostActivities(settings, hv, domain_type, events,
                          departed=lambda vm_id: guest_setup.release(VmRelease(vm_id)))
    guests = GuestActivities(hv, guest_setup)
    await events.publish(subjects.host_event(settings.host_id, "registered"),
                         {"host_id": settings.host_id, "domain_type": domain_type})

    client = await connect_temporal(settings)
    worker = Worker(
        client,
        task_queue=f"host.{settings.host_id}",
        activities=[
            host.define_domain,
            host.create_domain,
            host.start_domain,
            host.stop_domain,
            host.reboot_domain,
            host.destroy_domain,
            host.undefine_domain,
            host.domain_status,
            host.wait_booted,
            host.attach_disk,
            host.detach_disk,
            host.migrate_domain,
            host.evict_domain,
            *guests.all(),
        ],
        interceptors=[ActivityContext(heartbeat_every_s=2.0, reporting=("host.migrate_domain",))],
        # Send heartbeats at least every 5 s rather than at 80% of the timeout, so a host busy
        # booting guests still reports long before the server gives up on it.
        max_heartbeat_throttle_interval=timedelta(seconds=5),
    )
    consoles = ConsoleSessions(nc, hv, settings.host_id, settings.console_dir)
    await consoles.start()
    tasks = [
        asyncio.create_task(follow_peers(kv, peers, settings.heartbeat_interval_s)),
        asyncio.create_task(heartbeat_loop(settings, hv, nc, kv, beat_events, domain_type, peers)),
        asyncio.create_task(forward_lifecycle(settings, hv, host, lifecycle, events)),
        asyncio.create_task(worker.run()),
        asyncio.create_task(keep_reconciled(guest_setup, settings.peer_sync_interval_s)),
    ]
    log.info("host-worker ready", uri=settings.libvirt_uri, domain_type=domain_type)
    try:
        await run_until_signalled()
    finally:
        await worker.shutdown()
        for task in tasks:
            task.cancel()
        await consoles.stop()
        await nc.drain()
        hv.close()


if __name__ == "__main__":
    settings = HostWorkerSettings()
    configure_logging("host-worker", settings.log_level, settings.log_json)
    asyncio.run(main(settings))
