"""Quotas: the pure fit rules (shared/quota.py), and the ledger on real databases (SQLite and
PostgreSQL), including many reservations racing for the last of a tenant's quota."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from services.api.db import Inventory
from services.api.identity_store import IdentityStore
from services.api.models import Vm
from services.api.network_store import NetworkStore
from services.api.quota_store import QuotaLedger
from services.api.tenancy_models import QuotaLimits, TenantCreate
from shared.errors import Conflict, NotFound, QuotaExceeded
from shared.models import VmState
from shared.quota import (
    Amounts,
    Limits,
    Resource,
    over_limit,
    shortfalls,
    snapshot_hold,
    vm_hold,
    volume_growth_hold,
    volume_hold,
)

# -- the pure rules ------------------------------------------------------------------------------


def test_no_limit_means_anything_fits():
    assert shortfalls(Limits(), Amounts(vms=1000), Amounts(vms=1000), Amounts(vms=1000, memory_mib=10**9)) == []


def test_a_request_that_exactly_fills_the_limit_fits():
    assert shortfalls(Limits(vms=10), Amounts(vms=6), Amounts(vms=3), Amounts(vms=1)) == []


def test_one_over_the_limit_is_refused():
    [short] = shortfalls(Limits(vms=10), Amounts(vms=6), Amounts(vms=3), Amounts(vms=2))
    assert (short.resource, short.asked, short.limit, short.used, short.reserved, short.left) == (
        Resource.VMS, 2, 10, 6, 3, 1)


def test_the_refusal_names_the_resource_what_was_asked_what_is_left_used_and_reserved():
    [short] = shortfalls(Limits(memory_mib=1024), Amounts(memory_mib=512), Amounts(memory_mib=256),
                         Amounts(memory_mib=512))
    assert short.describe() == "memory_mib: asked 512, 256 left of 1024 (512 used, 256 reserved)"


def test_every_resource_short_is_named_and_those_with_room_are_not():
    short = shortfalls(Limits(vms=1, vcpus=4, disk_gib=100), Amounts(vms=1, vcpus=2), Amounts(),
                       Amounts(vms=1, vcpus=2, disk_gib=10))
    assert [s.resource for s in short] == [Resource.VMS]
    short = shortfalls(Limits(vms=1, vcpus=4), Amounts(vms=1, vcpus=4), Amounts(), Amounts(vms=1, vcpus=1))
    assert [s.resource for s in short] == [Resource.VMS, Resource.VCPUS]


def test_resources_not_asked_for_are_not_checked_even_when_over():
    assert shortfalls(Limits(vms=1, networks=0), Amounts(vms=5), Amounts(), Amounts(networks=0, disk_gib=1)) == []


def test_left_is_never_negative_when_the_tenant_is_over_already():
    [short] = shortfalls(Limits(vms=2), Amounts(vms=3), Amounts(), Amounts(vms=1))
    assert short.left == 0


def test_a_limit_below_what_is_held_warns_and_names_the_resource():
    [warning] = over_limit(Limits(vms=2, vcpus=100), Amounts(vms=2, vcpus=8), Amounts(vms=1))
    assert warning.startswith("vms: the limit 2 is below the 3 the tenant holds")


def test_a_limit_equal_to_what_is_held_or_none_does_not_warn():
    assert over_limit(Limits(vms=3), Amounts(vms=2), Amounts(vms=1)) == []
    assert over_limit(Limits(), Amounts(vms=200), Amounts(vms=100)) == []


def test_a_vm_hold_key_prefixes_its_snapshots_and_a_volume_its_growth():
    assert snapshot_hold("v1", "s").startswith(vm_hold("v1") + "/")
    assert volume_growth_hold("d").startswith(volume_hold("d") + "/")


# -- the ledger on a database --------------------------------------------------------------------------


@pytest.fixture
def ledger(engine):
    return QuotaLedger(engine)


def _tenant(engine, name: str = "acme", **limits) -> str:
    IdentityStore(engine).add_tenant(TenantCreate(name=name, quota=QuotaLimits(**limits)))
    return name


def test_the_seeded_default_tenant_has_no_limits(ledger):
    limits, used, reserved = ledger.usage("default")
    assert (limits, used, reserved) == (Limits(), Amounts(), Amounts())


def test_a_reservation_shows_as_reserved(engine, ledger):
    tenant = _tenant(engine, vms=10)
    ledger.reserve(tenant, vm_hold("v1"), Amounts(vms=1, vcpus=2, memory_mib=512))
    limits, used, reserved = ledger.usage(tenant)
    assert limits.vms == 10
    assert used == Amounts()
    assert reserved == Amounts(vms=1, vcpus=2, memory_mib=512)
    assert ledger.owner(vm_hold("v1")) == tenant


def test_committing_moves_a_hold_to_used(engine, ledger):
    tenant = _tenant(engine)
    ledger.reserve(tenant, vm_hold("v1"), Amounts(vms=1, vcpus=2))
    ledger.settle(commit=[vm_hold("v1")])
    ledger.settle(commit=[vm_hold("v1")])  # settling again changes nothing
    _, used, reserved = ledger.usage(tenant)
    assert (used, reserved) == (Amounts(vms=1, vcpus=2), Amounts())


def test_releasing_frees_the_quota(engine, ledger):
    tenant = _tenant(engine, vms=1)
    ledger.reserve(tenant, vm_hold("v1"), Amounts(vms=1))
    ledger.settle(commit=[vm_hold("v1")])
    assert ledger.release(vm_hold("v1")) == 1
    assert ledger.usage(tenant)[1:] == (Amounts(), Amounts())
    ledger.reserve(tenant, vm_hold("v2"), Amounts(vms=1))  # the room is there again


def test_releasing_twice_releases_once(engine, ledger):
    tenant = _tenant(engine)
    ledger.reserve(tenant, vm_hold("v1"), Amounts(vms=1))
    ledger.reserve(tenant, vm_hold("v2"), Amounts(vms=1))
    assert ledger.release(vm_hold("v1")) == 1
    assert ledger.release(vm_hold("v1")) == 0
    assert ledger.usage(tenant)[2] == Amounts(vms=1)


def test_a_growth_joins_its_volume_when_committed(engine, ledger):
    tenant = _tenant(engine, disk_gib=100)
    ledger.reserve(tenant, volume_hold("d"), Amounts(volumes=1, disk_gib=10))
    ledger.settle(commit=[volume_hold("d")])
    growth = volume_growth_hold("d")
    ledger.reserve(tenant, growth, Amounts(disk_gib=5), merge_into=volume_hold("d"))
    assert ledger.usage(tenant)[1:] == (Amounts(volumes=1, disk_gib=10), Amounts(disk_gib=5))
    ledger.settle(commit=[growth])
    ledger.settle(commit=[growth])  # a repeated settlement does not add it twice
    assert ledger.usage(tenant)[1:] == (Amounts(volumes=1, disk_gib=15), Amounts())
    assert ledger.owner(growth) is None
    assert ledger.owners("volume/") == {volume_hold("d"): tenant}


def test_releasing_a_volume_releases_its_pending_growth(engine, ledger):
    tenant = _tenant(engine)
    ledger.reserve(tenant, volume_hold("d"), Amounts(volumes=1, disk_gib=10))
    ledger.reserve(tenant, volume_growth_hold("d"), Amounts(disk_gib=5), merge_into=volume_hold("d"))
    assert ledger.release(volume_hold("d")) == 2
    assert ledger.usage(tenant)[1:] == (Amounts(), Amounts())


def test_releasing_a_vm_releases_its_snapshots(engine, ledger):
    tenant = _tenant(engine)
    ledger.reserve(tenant, vm_hold("v1"), Amounts(vms=1))
    ledger.reserve(tenant, snapshot_hold("v1", "s1"), Amounts(snapshots=1))
    ledger.reserve(tenant, snapshot_hold("v1", "s2"), Amounts(snapshots=1))
    assert ledger.release(vm_hold("v1")) == 3
    assert ledger.usage(tenant)[1:] == (Amounts(), Amounts())


def test_releasing_a_vm_leaves_a_vm_whose_id_it_prefixes(engine, ledger):
    tenant = _tenant(engine)
    ledger.reserve(tenant, vm_hold("v1"), Amounts(vms=1))
    ledger.reserve(tenant, vm_hold("v10"), Amounts(vms=1))
    ledger.reserve(tenant, snapshot_hold("v10", "s"), Amounts(snapshots=1))
    assert ledger.release(vm_hold("v1")) == 1
    assert ledger.usage(tenant)[2] == Amounts(vms=1, snapshots=1)


def test_a_key_with_like_wildcards_releases_only_its_own_holds(engine, ledger):
    tenant = _tenant(engine)
    ledger.reserve(tenant, volume_hold("a_b"), Amounts(volumes=1))
    ledger.reserve(tenant, volume_growth_hold("axb"), Amounts(disk_gib=1))
    assert ledger.release(volume_hold("a_b")) == 1
    assert ledger.usage(tenant)[2] == Amounts(disk_gib=1)


def test_keys_differing_only_in_case_are_different_holds(engine, ledger):
    tenant = _tenant(engine)
    ledger.reserve(tenant, volume_hold("Data"), Amounts(volumes=1))
    ledger.reserve(tenant, volume_hold("data"), Amounts(volumes=1))
    ledger.reserve(tenant, volume_growth_hold("data"), Amounts(disk_gib=1), merge_into=volume_hold("data"))
    assert ledger.release(volume_hold("Data")) == 1
    assert ledger.usage(tenant)[2] == Amounts(volumes=1, disk_gib=1)
    assert ledger.owners("volume/D") == {}


def test_reserving_the_same_key_twice_is_a_conflict(engine, ledger):
    tenant = _tenant(engine)
    ledger.reserve(tenant, vm_hold("v1"), Amounts(vms=1))
    with pytest.raises(Conflict, match="vm/v1"):
        ledger.reserve(tenant, vm_hold("v1"), Amounts(vms=1))
    assert ledger.usage(tenant)[2] == Amounts(vms=1)


def test_an_unknown_tenant_is_not_found(ledger):
    with pytest.raises(NotFound, match="nobody"):
        ledger.reserve("nobody", vm_hold("v1"), Amounts(vms=1))
    with pytest.raises(NotFound, match="nobody"):
        ledger.usage("nobody")
    with pytest.raises(NotFound, match="nobody"):
        ledger.set_limits("nobody", QuotaLimits(vms=1))
    assert ledger.owner(vm_hold("v1")) is None


def test_a_refused_reservation_writes_nothing(engine, ledger):
    tenant = _tenant(engine, vms=1, vcpus=2)
    with pytest.raises(QuotaExceeded) as refused:
        ledger.reserve(tenant, vm_hold("v1"), Amounts(vms=2, vcpus=4))
    assert "vms: asked 2, 1 left of 1 (0 used, 0 reserved)" in refused.value.message
    assert "vcpus: asked 4, 2 left of 2" in refused.value.message
    assert f"tenant '{tenant}'" in refused.value.message
    assert ledger.owner(vm_hold("v1")) is None
    assert ledger.usage(tenant)[1:] == (Amounts(), Amounts())


def test_tenants_do_not_share_a_quota(engine, ledger):
    a, b = _tenant(engine, "a", vms=1), _tenant(engine, "b", vms=1)
    ledger.reserve(a, vm_hold("va"), Amounts(vms=1))
    ledger.reserve(b, vm_hold("vb"), Amounts(vms=1))
    assert ledger.usage(a)[2] == ledger.usage(b)[2] == Amounts(vms=1)


def test_a_limit_set_below_usage_warns_and_then_refuses_new_requests(engine, ledger):
    tenant = _tenant(engine, vms=10)
    for i in range(3):
        ledger.reserve(tenant, vm_hold(f"v{i}"), Amounts(vms=1))
    ledger.settle(commit=[vm_hold("v0")])
    warnings = ledger.set_limits(tenant, QuotaLimits(vms=2))
    assert len(warnings) == 1 and warnings[0].startswith("vms: the limit 2 is below the 3")
    with pytest.raises(QuotaExceeded, match="vms: asked 1, 0 left of 2"):
        ledger.reserve(tenant, vm_hold("v9"), Amounts(vms=1))


def test_set_limits_changes_only_the_limits_given(engine, ledger):
    tenant = _tenant(engine, vms=10, vcpus=20)
    assert ledger.set_limits(tenant, QuotaLimits(vms=5)) == []
    assert ledger.usage(tenant)[0] == Limits(vms=5, vcpus=20)
    ledger.set_limits(tenant, QuotaLimits(vcpus=None))  # an explicit null removes the limit
    assert ledger.usage(tenant)[0] == Limits(vms=5)


# -- racing for the last of the quota -------------------------------------------------------------


def _race(count: int, attempt) -> list[object]:
    def run(i: int) -> object:
        try:
            attempt(i)
            return "ok"
        except QuotaExceeded as exc:
            return exc

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def _tally(outcomes: list[object]) -> tuple[int, int]:
    unexpected = [o for o in outcomes if o != "ok" and not isinstance(o, QuotaExceeded)]
    assert not unexpected
    return outcomes.count("ok"), sum(isinstance(o, QuotaExceeded) for o in outcomes)


def test_forty_racing_reservations_against_ten_vms_let_exactly_ten_through(engine, ledger):
    tenant = _tenant(engine, vms=10)
    outcomes = _race(40, lambda i: ledger.reserve(tenant, vm_hold(f"v{i}"), Amounts(vms=1, memory_mib=64)))
    assert _tally(outcomes) == (10, 30)
    assert ledger.usage(tenant)[2] == Amounts(vms=10, memory_mib=640)


def test_forty_racing_reservations_against_640_mib_let_exactly_ten_through(engine, ledger):
    tenant = _tenant(engine, memory_mib=640)
    outcomes = _race(40, lambda i: ledger.reserve(tenant, vm_hold(f"v{i}"), Amounts(vms=1, memory_mib=64)))
    assert _tally(outcomes) == (10, 30)
    assert ledger.usage(tenant)[2] == Amounts(vms=10, memory_mib=640)


def _vm(i: int, tenant: str) -> Vm:
    return Vm(name=f"vm{i}", vcpus=1, memory_mib=64, disk_gib=1, image="lab-guest", tenant=tenant)


def test_racing_vm_creates_make_exactly_as_many_vms_as_the_quota_allows(engine, ledger):
    tenant = _tenant(engine, vms=10)
    networks, inventory = NetworkStore(engine), Inventory(engine)
    outcomes = _race(30, lambda i: networks.add_vm(_vm(i, tenant), []))
    assert _tally(outcomes) == (10, 20)
    vms = inventory.list(tenant)
    assert len(vms) == 10
    assert ledger.usage(tenant)[2] == Amounts(vms=10, vcpus=10, memory_mib=640, disk_gib=10)
    for vm in vms:
        inventory.remove(vm.id)
    assert ledger.usage(tenant)[1:] == (Amounts(), Amounts())


def test_a_vm_refused_by_quota_leaves_no_row(engine):
    tenant = _tenant(engine, vcpus=1)
    networks, inventory = NetworkStore(engine), Inventory(engine)
    with pytest.raises(QuotaExceeded, match="vcpus"):
        networks.add_vm(Vm(name="big", vcpus=2, memory_mib=64, disk_gib=1, image="lab-guest", tenant=tenant), [])
    assert inventory.list(tenant) == []


def test_a_vm_hold_is_reserved_while_provisioning_and_used_once_it_leaves(engine, ledger):
    tenant = _tenant(engine)
    networks, inventory = NetworkStore(engine), Inventory(engine)
    vm = networks.add_vm(_vm(1, tenant), [])
    inventory.update(vm.id, host_id="h1")  # still provisioning
    assert ledger.usage(tenant)[1:] == (Amounts(), Amounts(vms=1, vcpus=1, memory_mib=64, disk_gib=1))
    inventory.update(vm.id, state=VmState.RUNNING)
    assert ledger.usage(tenant)[1:] == (Amounts(vms=1, vcpus=1, memory_mib=64, disk_gib=1), Amounts())


def test_removing_a_vm_releases_its_snapshot_holds_too(engine, ledger):
    tenant = _tenant(engine)
    networks, inventory = NetworkStore(engine), Inventory(engine)
    vm = networks.add_vm(_vm(1, tenant), [])
    ledger.reserve(tenant, snapshot_hold(vm.id, "s1"), Amounts(snapshots=1))
    inventory.remove(vm.id)
    assert ledger.usage(tenant)[1:] == (Amounts(), Amounts())
    assert inventory.remove(vm.id) is None  # removing again is harmless
