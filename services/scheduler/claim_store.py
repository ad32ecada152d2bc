"""The claims every scheduler replica shares, and placement against them.

Why a KV bucket with compare-and-set, not one active scheduler holding a lease: every replica
answers placements at once (no takeover gap when one dies, no idle standbys), a replica's state is
only ever a mirror it can rebuild by reading the bucket, and the store is the NATS the services
use already (replicated with the cluster's JetStream). Two replicas race only when they pick the
same host at the same moment; the loser re-reads that host's entry and decides again.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

import structlog
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.scheduler.claims import ClaimWrite, HostClaims
from shared import codec, metrics
from shared.errors import ServiceUnavailable
from shared.messaging import JETSTREAM_PENDING
from shared.models import Placement, PlacementRequest

if TYPE_CHECKING:
    from services.scheduler.state import Scheduler

log = structlog.get_logger(__name__)

MAX_ATTEMPTS = 50  # races lost in a row before a placement gives up (each one a fresh decision)


class ClaimStore(Protocol):
    async def read(self, host_id: str) -> HostClaims: ...

    async def write(self, write: ClaimWrite) -> int | None:
        """The entry's new revision, or None when it is no longer at ``write.expected_revision``."""


class KvClaimStore:
    """Claims in a NATS KV bucket: one key per host, written only by compare-and-set."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def read(self, host_id: str) -> HostClaims:
        try:
            entry = await self._kv.get(host_id)
        except KeyNotFoundError:
            return HostClaims(host_id)
        except JETSTREAM_PENDING as exc:
            raise ServiceUnavailable(f"the claims bucket does not answer: {type(exc).__name__}") from exc
        return decoded_claims(host_id, entry.value, entry.revision)

    async def write(self, write: ClaimWrite) -> int | None:
        """A write whose answer was lost and is then retried finds its own revision taken: a
        lost race, after which the placement sees its own claim and keeps it."""
        value = codec.encode(HostClaims(write.host_id, write.claims))
        try:
            return await self._kv.update(write.host_id, value, last=write.expected_revision)
        except KeyWrongLastSequenceError:
            return None
        except JETSTREAM_PENDING as exc:
            raise ServiceUnavailable(f"the claims bucket does not answer: {type(exc).__name__}") from exc


def decoded_claims(host_id: str, value: bytes | None, revision: int) -> HostClaims:
    """A bucket entry as the mirror keeps it: the claims with the entry's revision."""
    entry = codec.decode(HostClaims, value) if value else HostClaims(host_id)
    return replace(entry, host_id=host_id, revision=revision)


class Placer:
    """Placement and release against the shared claims: decide from the mirror, commit by
    compare-and-set, and after a lost race take the host's fresh entry and decide again."""

    def __init__(self, scheduler: Scheduler, store: ClaimStore, max_attempts: int = MAX_ATTEMPTS) -> None:
        self._scheduler = scheduler
        self._store = store
        self._max_attempts = max_attempts

    async def place(self, req: PlacementRequest) -> Placement:
        """Idempotent per VM. Raises NoValidHost with the rejection trail."""
        for _ in range(self._max_attempts):
            proposal = self._scheduler.propose(req)
            if proposal.write is None:
                return proposal.placement
            if await self._commit(proposal.write):
                # A VM placed anew gives up its earlier claims; not one made after this one (a
                # retry of this request, on another replica, that committed first).
                made_s = proposal.write.claims[-1].expires_at_s
                for host_id in self._scheduler.claim_hosts(req.vm_id) - {proposal.placement.host_id}:
                    await self._release_from(host_id, req.vm_id, made_s)
                return proposal.placement
            metrics.CLAIM_RACES_LOST.inc()
        raise ServiceUnavailable(f"placement of {req.vm_id} lost {self._max_attempts} races for capacity in a row; "
                                 "try again")

    async def release(self, vm_id: str, host_id: str = "") -> bool:
        """Whether this call released a claim: of two releases of one claim, on any replicas,
        exactly one says True."""
        if host_id and host_id not in self._scheduler.claim_hosts(vm_id):
            self._scheduler.apply_claims(await self._store.read(host_id))  # made by a replica a moment ago
        released = False
        for claimed_on in self._scheduler.claim_hosts(vm_id):
            released = await self._release_from(claimed_on, vm_id) or released
        return released

    async def settle(self, host_id: str) -> None:
        """Drop from the store the claims of VMs the host reports and those expired."""
        for _ in range(self._max_attempts):
            write = self._scheduler.settle_write(host_id)
            if write is None or await self._commit(write):
                return

    async def _release_from(self, host_id: str, vm_id: str, made_before_s: float = math.inf) -> bool:
        for _ in range(self._max_attempts):
            write = self._scheduler.release_write(vm_id, host_id, made_before_s)
            if write is None:
                return False
            if await self._commit(write):
                return True
        raise ServiceUnavailable(f"the claim of {vm_id} on {host_id} could not be released; try again")

    async def _commit(self, write: ClaimWrite) -> bool:
        revision = await self._store.write(write)
        if revision is None:
            self._scheduler.apply_claims(await self._store.read(write.host_id))
            return False
        self._scheduler.apply_claims(HostClaims(write.host_id, write.claims, revision))
        return True
