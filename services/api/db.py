"""Database engine and the inventory repository. Blocking: call from threads."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import delete, event, func, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, create_engine, select, text

from services.api.models import PlacementGroup, Vm, utcnow
from services.api.network_models import Port
from services.api.quota_store import commit_in, lock_tenant, release_in
from shared.errors import Conflict, NotFound
from shared.models import VmState
from shared.quota import vm_hold

T = TypeVar("T")


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:
            # WAL lets readers go on while the inventory worker writes.
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA busy_timeout=30000")
            # LIKE as PostgreSQL has it: a hold's key prefixes only its own holds ('volume/Data/'
            # not 'volume/data/grow'), whatever the engine.
            dbapi_conn.execute("PRAGMA case_sensitive_like=ON")

        return engine
    if url.startswith("postgresql"):
        # Sessions in UTC whatever the server's zone: a time without a zone (the schema before
        # migration 0008) is then stored and read as UTC.
        return create_engine(url, pool_pre_ping=True, connect_args={"options": "-c timezone=UTC"})
    return create_engine(url, pool_pre_ping=True)


MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x766D666C6F77  # "vmflow": the advisory lock one migration at a time holds


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (Alembic); a no-op when it is there already.
    On PostgreSQL, API replicas starting together take turns: the first migrates, the others
    wait for it and find the schema new already."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")



def lookup(session: Session, model: type[T], key: str) -> T | None:
    """``session.get`` for a key from a request: one no row can have (a NUL byte, which
    PostgreSQL refuses in text) finds nothing rather than failing."""
    return None if "\x00" in key else session.get(model, key)

class Inventory:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def ping(self) -> None:
        with Session(self._engine) as session:
            session.exec(text("SELECT 1"))

    def _insert(self, row, conflict: str):
        with Session(self._engine) as session:
            session.add(row)
            try:
                session.commit()
            except IntegrityError as exc:
                raise Conflict(conflict) from exc
            session.refresh(row)
            return row

    def add(self, vm: Vm) -> Vm:
        """Raises Conflict if the tenant already has a VM of that name."""
        return self._insert(vm, f"a VM named '{vm.name}' already exists")

    def get(self, vm_id: str, tenant: str | None = None) -> Vm:
        with Session(self._engine) as session:
            vm = lookup(session, Vm, vm_id)
            if vm is None or (tenant is not None and vm.tenant != tenant):
                raise NotFound(f"no VM with id '{vm_id}'")
            return vm

    def find(self, vm_id: str) -> Vm | None:
        with Session(self._engine) as session:
            return lookup(session, Vm, vm_id)

    def many(self, vm_ids: Iterable[str]) -> list[Vm]:
        with Session(self._engine) as session:
            return list(session.exec(select(Vm).where(Vm.id.in_(list(vm_ids)))))

    def settle(self, vm_id: str, seen_state: VmState, seen_updated_at, **fields) -> Vm | None:
        """Compare-and-set: apply ``fields`` only if the VM is still in ``seen_state`` and
        unchanged since ``seen_updated_at`` (nothing else wrote it meanwhile). Returns the VM
        as written, None when something else won."""
        with Session(self._engine) as session:
            result = session.exec(
                update(Vm)
                .where(Vm.id == vm_id, Vm.state == seen_state, Vm.updated_at == seen_updated_at)
                .values(**fields, updated_at=utcnow())
            )
            session.commit()
            if result.rowcount != 1:
                return None
            return session.get(Vm, vm_id)

    def list(self, tenant: str | None, offset: int = 0, limit: int | None = None) -> list[Vm]:
        """The tenant's VMs (None: every tenant's), oldest first; ``limit`` of them from ``offset``."""
        with Session(self._engine) as session:
            query = select(Vm) if tenant is None else select(Vm).where(Vm.tenant == tenant)
            return list(session.exec(query.order_by(Vm.created_at, Vm.id).offset(offset).limit(limit)))

    def count(self, tenant: str | None) -> int:
        with Session(self._engine) as session:
            query = select(func.count()).select_from(Vm)
            return session.exec(query if tenant is None else query.where(Vm.tenant == tenant)).one()

    def count_by_tenant_and_state(self) -> list[tuple[str, VmState, int]]:
        """(tenant, state, how many VMs) for every pair that has any."""
        with Session(self._engine) as session:
            rows = session.exec(select(Vm.tenant, Vm.state, func.count()).group_by(Vm.tenant, Vm.state))
            return [(tenant, VmState(state), count) for tenant, state, count in rows]

    def transition(self, vm_id: str, allowed: Iterable[VmState], new_state: VmState, op_id: str) -> bool:
        """Atomically move the VM to ``new_state`` if it is in one of ``allowed``. This is what
        keeps two conflicting operations from running on one VM."""
        with Session(self._engine) as session:
            result = session.exec(
                update(Vm)
                .where(Vm.id == vm_id, Vm.state.in_(list(allowed)))
                .values(state=new_state, last_operation_id=op_id, error=None, updated_at=utcnow())
            )
            session.commit()
            return result.rowcount == 1

    def update(self, vm_id: str, **fields) -> Vm | None:
        """Set fields on the VM; None when it is gone (updates are idempotent). Returns the VM as
        written (a removal right after cannot take it from the caller)."""
        with Session(self._engine, expire_on_commit=False) as session:
            vm = session.get(Vm, vm_id, with_for_update=True)  # the VM's row before its hold, as remove
            if vm is None:
                return None
            for key, value in fields.items():
                setattr(vm, key, value)
            vm.updated_at = utcnow()
            session.add(vm)
            try:
                if vm.state != VmState.PROVISIONING:
                    commit_in(session, vm_hold(vm_id))  # it exists: its share counts as used
                session.flush()
            except StaleDataError:  # SQLite (which locks nothing on read): removed since it was read
                return None
            session.refresh(vm)  # what the database holds, read under the lock
            session.commit()
            return vm

    def remove(self, vm_id: str) -> Vm | None:
        """Delete the VM's row, its ports (their addresses are free again) and its quota holds
        (its own and its snapshots'), in one transaction. The VM's row is locked first, as
        ``update`` locks it, so the two never wait for each other's locks in turn (a deadlock on
        PostgreSQL) and an update that comes second finds the VM gone."""
        with Session(self._engine) as session:
            vm = session.get(Vm, vm_id, with_for_update=True)
            if vm is None:
                return None
            session.exec(delete(Port).where(Port.vm_id == vm_id))
            release_in(session, vm_hold(vm_id))
            session.delete(vm)
            session.commit()
            return vm

    # -- placement groups -------------------------------------------------------------------------

    def add_group(self, group: PlacementGroup) -> PlacementGroup:
        """Raises Conflict if the tenant already has a group of that name, NotFound when the
        tenant is gone (its lock keeps a deletion from racing this)."""
        with Session(self._engine) as session:
            lock_tenant(session, group.tenant)
            session.add(group)
            try:
                session.commit()
            except IntegrityError as exc:
                raise Conflict(f"a placement group named '{group.name}' already exists") from exc
            session.refresh(group)
            return group

    def get_group(self, group_id: str, tenant: str | None) -> PlacementGroup:
        """``tenant`` None: whoever's it is."""
        with Session(self._engine) as session:
            group = session.get(PlacementGroup, group_id)
            if group is None or (tenant is not None and group.tenant != tenant):
                raise NotFound(f"no placement group with id '{group_id}'")
            return group

    def list_groups(self, tenant: str | None) -> list[PlacementGroup]:
        with Session(self._engine) as session:
            query = select(PlacementGroup)
            if tenant is not None:
                query = query.where(PlacementGroup.tenant == tenant)
            return list(session.exec(query.order_by(PlacementGroup.created_at)))

    def group_members(self, group_id: str) -> list[Vm]:
        with Session(self._engine) as session:
            query = select(Vm).where(Vm.placement_group_id == group_id).order_by(Vm.created_at)
            return list(session.exec(query))

    def remove_group(self, group_id: str, tenant: str | None) -> None:
        """Raises NotFound, or Conflict while VMs still belong to the group."""
        group = self.get_group(group_id, tenant)
        with Session(self._engine) as session:
            if session.exec(select(Vm.id).where(Vm.placement_group_id == group_id)).first():
                raise Conflict(f"placement group '{group.name}' still has members; delete them first")
            session.delete(session.get(PlacementGroup, group_id))
            session.commit()

    def on_host(self, host_id: str) -> list[Vm]:
        with Session(self._engine) as session:
            return list(session.exec(select(Vm).where(Vm.host_id == host_id).order_by(Vm.created_at)))

    # -- operations ---------------------------------------------------------------------------------

    def begin_operation(self, vm_id: str, op_id: str, allowed: Iterable[VmState], new_state: VmState) -> bool:
        """Mark the VM busy with ``op_id`` if it is in an ``allowed`` state. True as well when it
        is busy with this very operation already, so a workflow may repeat what the API did."""
        if self.transition(vm_id, allowed, new_state, op_id):
            return True
        with Session(self._engine) as session:
            vm = session.get(Vm, vm_id)
            return vm is not None and vm.state == new_state and vm.last_operation_id == op_id
