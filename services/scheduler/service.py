"""The scheduler as a NATS service: learns hosts from the heartbeat bucket, operators'
decisions from the host-admin bucket and every replica's claims from the claims bucket, and
answers ``place``, ``release``, ``hosts`` and ``host``; the state it decides from is ``state``.

Any number of replicas answer in one queue group. A decision is made from the replica's mirror
and committed by compare-and-set on the chosen host's claims (``claim_store``), so two replicas,
or two requests in one, never both take the last free slot of a host.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
from nats.aio.client import Client as NatsClient
from nats.errors import TimeoutError as NatsTimeoutError
from nats.micro import add_service
from nats.micro.service import EndpointConfig, Service, ServiceConfig

from services.scheduler.claim_store import KvClaimStore, Placer, decoded_claims
from services.scheduler.settings import SchedulerSettings
from services.scheduler.state import Scheduler
from shared import codec, metrics, subjects
from shared.errors import VmflowError
from shared.messaging import endpoint, heartbeat_bucket, key_value_bucket
from shared.models import (
    ClaimRelease,
    HostAdmin,
    HostHeartbeat,
    HostList,
    HostQuery,
    HostRef,
    HostView,
    Placement,
    PlacementRequest,
)

log = structlog.get_logger(__name__)

REVISION_HEADER = "Vmflow-Revision"
ADMIN_RESYNC_S = 10.0  # the host-admin bucket is read anew this often
CLAIMS_RESYNC_S = 30.0  # and the claims bucket (a stale mirror costs lost races, never a double booking)


async def timed_place(placer: Placer, req: PlacementRequest) -> Placement:
    """``placer.place``, its time observed in ``vmflow_placement_duration_seconds`` under the
    outcome: placed, or the error's code (no_valid_host, hosts_silent, ...)."""
    started_s = time.perf_counter()
    outcome = "placed"
    try:
        return await placer.place(req)
    except VmflowError as exc:
        outcome = exc.code
        raise
    except Exception:
        outcome = "internal"
        raise
    finally:
        metrics.PLACEMENT_DURATION.labels(outcome).observe(time.perf_counter() - started_s)


async def follow_bucket(nc: NatsClient, bucket: str, apply: Callable, decode: Callable,
                        ready: asyncio.Event | None = None, replicas: int = 1,
                        resync_s: float | None = None) -> None:
    """Apply the latest value of every key of ``bucket`` (``decode(entry)``), forever; set
    ``ready`` once the values there at the start are applied. A watch that fails or ends (its
    stream without a leader for a moment) is opened again, and with ``resync_s`` every so often
    anyway (a watch can also fall silent after a NATS restart): every value comes again, and the
    mirrors keep the newest (by revision, or by heartbeat time)."""
    backoff_s = 0.5
    while True:
        try:
            kv = await key_value_bucket(nc.jetstream(), bucket, replicas=replicas)
            watcher = await kv.watchall()
            async for entry in _until(watcher, resync_s):
                backoff_s = 0.5
                if entry is None:  # the end of the values there at the start
                    if ready is not None:
                        ready.set()
                    continue
                if entry.value is None:
                    continue  # a deleted key
                try:
                    apply(decode(entry))
                except ValueError:
                    log.warning("ignoring malformed entry", bucket=bucket, key=entry.key)
            if resync_s is not None:
                continue  # time to read it all anew
            log.warning("bucket watch ended; watching again", bucket=bucket)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("bucket watch failed; watching again", bucket=bucket, error=str(exc) or type(exc).__name__)
        await asyncio.sleep(backoff_s)
        backoff_s = min(backoff_s * 2, 5.0)


async def _until(watcher, resync_s: float | None):
    """The watcher's entries, for ``resync_s`` at most (None: as long as it gives them)."""
    if resync_s is None:
        async for entry in watcher:
            yield entry
        return
    give_up_s = time.monotonic() + resync_s
    try:
        while (left_s := give_up_s - time.monotonic()) > 0:
            try:
                yield await watcher.updates(timeout=left_s)
            except NatsTimeoutError:
                return
    finally:
        await watcher.stop()


def decoder(cls: type) -> Callable:
    return lambda entry: codec.decode(cls, entry.value)


class Buckets:
    """What a replica mirrors before it answers: until all three are read, it would place
    blind (no hosts known) or double-book (claims unknown)."""

    def __init__(self) -> None:
        self.heartbeats, self.admin, self.claims = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def wait(self) -> None:
        await asyncio.gather(self.heartbeats.wait(), self.admin.wait(), self.claims.wait())


async def follow_heartbeats(nc: NatsClient, settings: SchedulerSettings, scheduler: Scheduler,
                            placer: Placer, ready: asyncio.Event | None = None) -> None:
    """Each heartbeat into the scheduler; the claims of VMs a host now reports leave the store."""
    await heartbeat_bucket(nc.jetstream(), settings.heartbeat_bucket, settings.jetstream_replicas)
    settling: set[str] = set()
    tasks: set[asyncio.Task] = set()  # referenced until done

    async def settle(host_id: str) -> None:
        try:
            await placer.settle(host_id)
        except Exception as exc:  # the next heartbeat tries again
            log.warning("claims not settled", host_id=host_id, error=str(exc) or type(exc).__name__)
        finally:
            settling.discard(host_id)

    def observe(beat: HostHeartbeat) -> None:
        if scheduler.observe(beat) and beat.host_id not in settling:
            settling.add(beat.host_id)
            task = asyncio.get_running_loop().create_task(settle(beat.host_id))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def on_message(msg) -> None:
        try:
            observe(codec.decode(HostHeartbeat, msg.data))
        except ValueError:
            log.warning("ignoring malformed heartbeat", subject=msg.subject)

    subscription = await nc.subscribe(f"{subjects.HEARTBEATS}.*", cb=on_message)
    try:
        await follow_bucket(nc, settings.heartbeat_bucket, observe, decoder(HostHeartbeat), ready)  # made above
    finally:
        await subscription.unsubscribe()


async def follow_host_admin(nc: NatsClient, settings: SchedulerSettings, scheduler: Scheduler,
                            ready: asyncio.Event | None = None) -> None:
    """Hosts' modes from the bucket (at start, and re-read every ``ADMIN_RESYNC_S``) and, at
    once, from the plain message the replica that changed one sends."""
    async def on_message(msg) -> None:
        try:
            scheduler.set_admin(codec.decode(HostAdmin, msg.data), int((msg.headers or {}).get(REVISION_HEADER, 0)))
        except ValueError:
            log.warning("ignoring malformed host mode", subject=msg.subject)

    subscription = await nc.subscribe(subjects.HOST_ADMIN_CHANGES, cb=on_message)
    try:
        await follow_bucket(nc, settings.host_admin_bucket, lambda pair: scheduler.set_admin(*pair),
                            lambda e: (codec.decode(HostAdmin, e.value), e.revision), ready,
                            settings.jetstream_replicas, resync_s=ADMIN_RESYNC_S)
    finally:
        await subscription.unsubscribe()


async def follow_claims(nc: NatsClient, settings: SchedulerSettings, scheduler: Scheduler,
                        ready: asyncio.Event | None = None) -> None:
    await follow_bucket(nc, settings.claims_bucket, scheduler.apply_claims,
                        lambda e: decoded_claims(e.key, e.value, e.revision), ready, settings.jetstream_replicas,
                        resync_s=CLAIMS_RESYNC_S)


async def claim_placer(nc: NatsClient, scheduler: Scheduler) -> Placer:
    kv = await key_value_bucket(nc.jetstream(), scheduler.settings.claims_bucket,
                                replicas=scheduler.settings.jetstream_replicas)
    return Placer(scheduler, KvClaimStore(kv))


async def start_service(nc: NatsClient, scheduler: Scheduler, placer: Placer) -> Service:
    admin_kv = await key_value_bucket(nc.jetstream(), scheduler.settings.host_admin_bucket,
                                      replicas=scheduler.settings.jetstream_replicas)

    async def place(req: PlacementRequest) -> Placement:
        return await timed_place(placer, req)

    async def release(req: ClaimRelease) -> dict[str, bool]:
        return {"released": await placer.release(req.vm_id, req.host_id)}

    async def hosts(query: HostQuery) -> HostList:
        return scheduler.host_views(query)

    async def host(ref: HostRef) -> HostView:
        return scheduler.host_view(ref.host_id)

    async def set_host_admin(admin: HostAdmin) -> HostView:
        """Enable or disable a host. Stored in a KV bucket so every replica (and a restarted
        one) sees it; applied here at once so the answer already shows it."""
        scheduler.host_view(admin.host_id)  # NotFound for unknown hosts
        revision = await admin_kv.put(admin.host_id, codec.encode(admin))
        scheduler.set_admin(admin, revision)
        await nc.publish(subjects.HOST_ADMIN_CHANGES, codec.encode(admin), headers={REVISION_HEADER: str(revision)})
        return scheduler.host_view(admin.host_id)

    service = await add_service(
        nc,
        ServiceConfig(name=subjects.SCHEDULER_SERVICE, version="0.1.0",
                      description="vmflow placement", queue_group="vmflow-scheduler"),
    )
    group = service.add_group(name=subjects.SCHEDULER_PREFIX)
    for name, request_type, handler in (
        ("place", PlacementRequest, place),
        ("release", ClaimRelease, release),
        ("hosts", HostQuery, hosts),
        ("host", HostRef, host),
        ("set_host_admin", HostAdmin, set_host_admin),
    ):
        # Placements and releases wait on the claims bucket: each in a task of its own.
        concurrent = name in ("place", "release")
        await group.add_endpoint(EndpointConfig(name=name, handler=endpoint(request_type, handler, concurrent)))
    return service
