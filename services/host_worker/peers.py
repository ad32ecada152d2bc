"""The second liveness channel: this host reaches its peers' libvirtd over the hosts' network.

Peers are learnt from the heartbeat bucket (each heartbeat carries the host's migration URI,
the address its libvirtd listens on for other hosts). A probe is a TCP connect with a short
timeout: a powered-off host, a dead libvirtd or a cut link all refuse or time out, while a
host whose worker alone died still answers.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

import structlog

from shared import codec
from shared.models import HostHeartbeat, PeerReach

log = structlog.get_logger(__name__)

_DEFAULT_PORTS = {"tcp": 16509, "tls": 16514, "ssh": 22}


def libvirt_address(uri: str) -> tuple[str, int] | None:
    """(host, port) a peer's libvirtd listens on, from its migration URI; None if it has none."""
    if not uri:
        return None
    parts = urlsplit(uri)
    transport = parts.scheme.partition("+")[2] or "tls"
    if not parts.hostname:
        return None
    return parts.hostname, parts.port or _DEFAULT_PORTS.get(transport, 16509)


def ring_successors(host_id: str, peers: Iterable[str], count: int) -> tuple[str, ...] | None:
    """The ``count`` peers after ``host_id`` in the ring of host ids (sorted, wrapping round):
    the ones it watches. Each host is then watched by the ``count`` before it. None when there
    are no more peers than that: it watches them all."""
    others = sorted(set(peers) - {host_id})
    if len(others) <= count:
        return None
    start = bisect.bisect_right(others, host_id)
    return tuple(others[(start + i) % len(others)] for i in range(count))


class PeerProbe:
    """Keeps, for each peer it watches, the last time its libvirtd accepted a connection from
    here. It watches every peer, or ``watch_count`` of them in a larger fleet."""

    def __init__(self, host_id: str, timeout_s: float = 1.0, watch_count: int = 8) -> None:
        self._host_id = host_id
        self._timeout_s = timeout_s
        self._watch_count = watch_count
        self._addresses: dict[str, tuple[str, int]] = {}
        self._reached: dict[str, float] = {}

    def learn(self, beat: HostHeartbeat) -> None:
        address = libvirt_address(beat.migration_uri)
        if beat.host_id != self._host_id and address is not None:
            self._addresses[beat.host_id] = address

    def addresses(self) -> set[str]:
        """The peers' addresses on the hosts' network (where their libvirtd listens): the far
        ends of this host's VXLAN tunnels."""
        return {host for host, _port in self._addresses.values()}

    def watched(self) -> tuple[str, ...] | None:
        """The peers probed from here; None: all of them."""
        return ring_successors(self._host_id, self._addresses, self._watch_count)

    def reached(self) -> tuple[PeerReach, ...]:
        watched = self.watched()
        return tuple(PeerReach(h, t) for h, t in sorted(self._reached.items()) if watched is None or h in watched)

    async def probe_all(self) -> None:
        watched = self.watched()
        targets = [(h, a) for h, a in list(self._addresses.items()) if watched is None or h in watched]
        await asyncio.gather(*(self._probe(h, a) for h, a in targets))

    async def _probe(self, host_id: str, address: tuple[str, int]) -> None:
        try:
            _reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), self._timeout_s)
        except (OSError, asyncio.TimeoutError):
            return
        self._reached[host_id] = time.time()
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def follow_peers(kv, probe: PeerProbe, interval_s: float) -> None:
    """Learn peers from the heartbeat bucket and probe them every ``interval_s``, forever."""

    async def learn() -> None:
        while True:
            try:
                watcher = await kv.watchall()
                async for entry in watcher:
                    if entry is not None and entry.value:
                        try:
                            probe.learn(codec.decode(HostHeartbeat, entry.value))
                        except ValueError:
                            pass
            except Exception as exc:  # NATS away: keep probing the peers known so far
                log.warning("peer list not followed", error=str(exc))
                await asyncio.sleep(interval_s)

    learning = asyncio.create_task(learn())
    try:
        while True:
            await probe.probe_all()
            await asyncio.sleep(interval_s)
    finally:
        learning.cancel()
