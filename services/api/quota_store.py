"""The quota ledger: every hold of every tenant, reserved and released race-free.

A reservation first bumps its tenant's ``quota_serial``: that write takes the tenant row's lock
(PostgreSQL) or the database's write lock (SQLite), so a tenant's reservations run one at a
time, and the sum read next cannot change before the new hold is written. The same statements
run on both databases. Call ``reserve_in`` inside the transaction that writes the thing held
(the VM row, the network row), so the thing and its share of the quota exist together or not
at all. Blocking: call from threads.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, func, or_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from services.api.tenancy_models import QuotaHold, QuotaLimits, Tenant
from shared.errors import Conflict, NotFound, QuotaExceeded
from shared.quota import Amounts, HoldState, Limits, Resource, over_limit, shortfalls

_SUMS = [func.coalesce(func.sum(getattr(QuotaHold, r.value)), 0) for r in Resource]


def _covered(key: str):
    """The hold ``key`` and every hold under it (a VM's snapshots, a volume's growth)."""
    return or_(QuotaHold.key == key, QuotaHold.key.startswith(f"{key}/", autoescape=True))


def usage_in(session: Session, tenant: str) -> tuple[Amounts, Amounts]:
    """(used, reserved) of the tenant as this transaction sees it."""
    rows = session.exec(select(QuotaHold.state, *_SUMS).where(QuotaHold.tenant == tenant)
                        .group_by(QuotaHold.state)).all()
    totals = {HoldState(state): Amounts(*sums) for state, *sums in rows}
    return totals.get(HoldState.USED, Amounts()), totals.get(HoldState.RESERVED, Amounts())


def lock_tenant(session: Session, tenant: str) -> None:
    """Take the tenant's lock for the rest of the caller's transaction: whatever else takes it
    (a reservation, a new placement group, the tenant's deletion) waits. Raises NotFound for an
    unknown tenant."""
    locked = session.exec(update(Tenant).where(Tenant.id == tenant, Tenant.deleted_at.is_(None))
                          .values(quota_serial=Tenant.quota_serial + 1))
    if locked.rowcount != 1:
        raise NotFound(f"no tenant '{tenant}'")


def reserve_in(session: Session, tenant: str, key: str, amounts: Amounts, merge_into: str | None = None) -> None:
    """Reserve ``amounts`` for ``key`` in the caller's transaction. Raises QuotaExceeded naming
    every resource short (the caller's transaction then writes nothing), Conflict when ``key``
    is held already (the same thing being made twice), NotFound for an unknown tenant."""
    lock_tenant(session, tenant)
    if session.get(QuotaHold, key) is not None:
        raise Conflict(f"{key} exists or is being made already")
    limits = session.get(Tenant, tenant).limits()
    used, reserved = usage_in(session, tenant)
    short = shortfalls(limits, used, reserved, amounts)
    if short:
        raise QuotaExceeded(f"quota of tenant '{tenant}' exceeded: " + "; ".join(s.describe() for s in short))
    session.add(QuotaHold(key=key, tenant=tenant, merge_into=merge_into, **amounts.as_dict()))


def release_in(session: Session, key: str) -> int:
    """Drop the hold ``key`` and the holds under it; how many went (0 when released before)."""
    return session.exec(delete(QuotaHold).where(_covered(key))).rowcount


def commit_in(session: Session, key: str) -> None:
    """The thing held exists now: its hold counts as used, or a growth joins its parent."""
    hold = session.get(QuotaHold, key)
    if hold is None or hold.state is HoldState.USED:
        return
    if hold.merge_into is not None:
        parent = session.get(QuotaHold, hold.merge_into)
        if parent is not None:
            for resource in Resource:
                setattr(parent, resource.value, getattr(parent, resource.value) + getattr(hold, resource.value))
            session.add(parent)
        session.delete(hold)
        return
    hold.state = HoldState.USED
    session.add(hold)


class QuotaLedger:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def reserve(self, tenant: str, key: str, amounts: Amounts, merge_into: str | None = None) -> None:
        """``reserve_in`` in a transaction of its own."""
        with Session(self._engine) as session:
            reserve_in(session, tenant, key, amounts, merge_into)
            session.commit()

    def settle(self, commit: Iterable[str] = (), release: Iterable[str] = ()) -> None:
        """Commit and release holds in one transaction; each is idempotent, so a repeated
        settlement changes nothing."""
        with Session(self._engine) as session:
            for key in commit:
                commit_in(session, key)
            for key in release:
                release_in(session, key)
            session.commit()

    def release(self, key: str) -> int:
        with Session(self._engine) as session:
            count = release_in(session, key)
            session.commit()
            return count

    def owner(self, key: str) -> str | None:
        """The tenant holding ``key``; None when nobody does."""
        with Session(self._engine) as session:
            hold = session.get(QuotaHold, key)
            return hold.tenant if hold is not None else None

    def owners(self, prefix: str) -> dict[str, str]:
        """key -> tenant for every hold whose key starts with ``prefix``."""
        with Session(self._engine) as session:
            rows = session.exec(select(QuotaHold.key, QuotaHold.tenant)
                                .where(QuotaHold.key.startswith(prefix, autoescape=True))).all()
            return dict(rows)

    def usage(self, tenant: str) -> tuple[Limits, Amounts, Amounts]:
        """(limits, used, reserved). Raises NotFound for an unknown tenant."""
        with Session(self._engine) as session:
            row = session.get(Tenant, tenant)
            if row is None or row.deleted_at is not None:
                raise NotFound(f"no tenant '{tenant}'")
            used, reserved = usage_in(session, tenant)
            return row.limits(), used, reserved

    def set_limits(self, tenant: str, limits: QuotaLimits) -> list[str]:
        """Set the limits given (null: no limit); the others keep theirs. A limit below what the
        tenant holds is allowed: returns warnings saying nothing new fits until it holds less."""
        with Session(self._engine) as session:
            row = session.get(Tenant, tenant)
            if row is None or row.deleted_at is not None:
                raise NotFound(f"no tenant '{tenant}'")
            for name in limits.model_fields_set:
                setattr(row, f"quota_{name}", getattr(limits, name))
            session.add(row)
            session.commit()
            used, reserved = usage_in(session, tenant)
            return over_limit(row.limits(), used, reserved)
