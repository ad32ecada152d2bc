"""Races between API replicas on one inventory, on SQLite and PostgreSQL: each replica has an
engine of its own (its own connections), and the threads of a race start together at a barrier.
On PostgreSQL these are real concurrent transactions under READ COMMITTED."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import inspect

from services.api.db import Inventory, make_engine
from services.api.identity_store import IdentityStore
from services.api.models import Vm
from services.api.network_store import NetworkStore
from services.api.quota_store import QuotaLedger
from services.api.tenancy_models import QuotaLimits, TenantCreate
from shared.errors import Conflict, NotFound, QuotaExceeded
from shared.models import VmState
from shared.quota import Amounts, vm_hold


@pytest.fixture
def replicas(engine):
    """``replicas(n)``: n engines on the test's database, as n API processes would have."""
    made = []

    def make(count: int):
        url = engine.url.render_as_string(hide_password=False)
        made.extend(make_engine(url) for _ in range(count))
        return made[-count:]

    yield make
    for replica in made:
        replica.dispose()


def _race(count: int, attempt: Callable[[int], object]) -> list[object]:
    """``attempt(i)`` in ``count`` threads let go together: what each returned or raised."""
    start = threading.Barrier(count)
    outcomes: list[object] = [None] * count

    def run(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = attempt(i)
        except Exception as exc:  # each outcome is checked by the test
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def _vm(name: str, tenant: str) -> Vm:
    return Vm(name=name, vcpus=1, memory_mib=64, disk_gib=1, image="lab-guest", tenant=tenant)


def test_forty_reservations_from_four_replicas_against_ten_vms_let_exactly_ten_through(engine, replicas):
    IdentityStore(engine).add_tenant(TenantCreate(name="acme", quota=QuotaLimits(vms=10)))
    ledgers = [QuotaLedger(e) for e in replicas(4)]
    outcomes = _race(40, lambda i: ledgers[i % 4].reserve("acme", vm_hold(f"v{i}"), Amounts(vms=1)))
    assert sum(o is None for o in outcomes) == 10
    assert all(isinstance(o, QuotaExceeded) for o in outcomes if o is not None), outcomes
    assert QuotaLedger(engine).usage("acme")[2] == Amounts(vms=10)


def test_two_replicas_creating_vms_of_one_name_make_one_and_refuse_the_other(engine, replicas):
    IdentityStore(engine).add_tenant(TenantCreate(name="acme"))
    stores = [NetworkStore(e) for e in replicas(2)]
    for round_ in range(20):  # one race is won by chance; twenty are not
        name = f"web{round_}"
        outcomes = _race(2, lambda i, name=name: stores[i].add_vm(_vm(name, "acme"), []))
        made = [o for o in outcomes if isinstance(o, Vm)]
        refused = [o for o in outcomes if isinstance(o, Conflict)]
        assert (len(made), len(refused)) == (1, 1), outcomes
        assert f"a VM named '{name}' already exists" in refused[0].message
    vms = Inventory(engine).list("acme")
    assert len(vms) == 20 and len({vm.name for vm in vms}) == 20
    assert QuotaLedger(engine).usage("acme")[2] == Amounts(vms=20, vcpus=20, memory_mib=20 * 64, disk_gib=20)


def test_an_update_racing_the_removal_of_its_vm_applies_first_or_finds_it_gone(engine, replicas):
    IdentityStore(engine).add_tenant(TenantCreate(name="acme"))
    first, second = (Inventory(e) for e in replicas(2))
    networks = NetworkStore(engine)
    for round_ in range(30):
        vm = networks.add_vm(_vm(f"vm{round_}", "acme"), [])
        updated, removed = _race(2, lambda i, vm=vm: first.update(vm.id, state=VmState.RUNNING, host_id="h1")
                                 if i == 0 else second.remove(vm.id))
        assert isinstance(removed, Vm), removed  # no deadlock, no error either way
        assert updated is None or (updated.state, updated.host_id) == (VmState.RUNNING, "h1"), updated
    assert Inventory(engine).list("acme") == []
    assert QuotaLedger(engine).usage("acme")[1:] == (Amounts(), Amounts())


def test_a_compare_and_set_applies_only_to_the_vm_as_it_was_read(engine):
    inventory = Inventory(engine)
    vm = inventory.add(_vm("web", "acme"))
    seen = inventory.get(vm.id)  # its time as the database keeps it, to the microsecond, in UTC
    assert seen.updated_at.utcoffset().total_seconds() == 0
    written = inventory.settle(vm.id, seen.state, seen.updated_at, state=VmState.RUNNING)
    assert written is not None and written.state is VmState.RUNNING
    assert inventory.settle(vm.id, VmState.RUNNING, seen.updated_at, state=VmState.STOPPED) is None  # changed since
    assert inventory.transition(vm.id, [VmState.RUNNING], VmState.STOPPING, "op-1")
    assert not inventory.transition(vm.id, [VmState.RUNNING], VmState.STOPPING, "op-2")
    assert inventory.begin_operation(vm.id, "op-1", [VmState.RUNNING], VmState.STOPPING)  # the same one again


# A replica's start: its engine, then (at the moment given, the same for all) the migrations.
_MIGRATE = ("import sys, time; from services.api.db import make_engine, migrate; engine = make_engine(sys.argv[1]); "
            "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); migrate(engine)")


def test_api_replicas_starting_together_on_a_new_postgresql_database_migrate_it_once(postgres_url):
    at = str(time.time() + 4)  # after every interpreter has imported what it needs
    processes = [subprocess.Popen([sys.executable, "-c", _MIGRATE, postgres_url, at], stderr=subprocess.PIPE,
                                  text=True) for _ in range(3)]
    errors = [(p.wait(timeout=120), p.stderr.read()) for p in processes]
    assert [code for code, _ in errors] == [0, 0, 0], [text[-500:] for _, text in errors]
    engine = make_engine(postgres_url)
    try:
        assert {"vms", "tenants", "quota_holds", "audit"} <= set(inspect(engine).get_table_names())
        assert QuotaLedger(engine).usage("default")[1:] == (Amounts(), Amounts())
    finally:
        engine.dispose()


def test_an_id_no_row_can_have_finds_nothing_on_either_engine(engine):
    """A NUL byte (PostgreSQL refuses it in text) in an id from a URL: not found, not a 500."""
    with pytest.raises(NotFound, match="no VM with id"):
        Inventory(engine).get("x\x00y")
    assert Inventory(engine).find("x\x00y") is None
    with pytest.raises(NotFound, match="no network"):
        NetworkStore(engine).network("x\x00y")
    with pytest.raises(NotFound, match="no tenant"):
        IdentityStore(engine).tenant("x\x00y")


def test_pages_of_vms_cover_every_vm_once_oldest_first(engine):
    inventory = Inventory(engine)
    IdentityStore(engine).add_tenant(TenantCreate(name="acme"))
    made = [inventory.add(_vm(f"vm-{i:02d}", "acme" if i % 3 else "default")).id for i in range(25)]
    pages = [inventory.list(None, offset, 10) for offset in (0, 10, 20)]
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [v.id for page in pages for v in page] == made
    assert inventory.count(None) == 25 and inventory.count("acme") == 16
    assert [v.name for v in inventory.list("acme", 15, 10)] == ["vm-23"]
