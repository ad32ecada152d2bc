"""Address management: the pure rules (shared/networks.py) and the inventory's allocation on a
real database (SQLite, PostgreSQL), under concurrent creates."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlmodel import Session

from services.api.db import Inventory
from services.api.guest_config import NicRequest
from services.api.models import Vm
from services.api.network_models import Network, NetworkState
from services.api.network_store import NetworkStore
from services.api.tenancy_models import Tenant
from shared.errors import Conflict, InvalidRequest
from shared.networks import check_requested_ip, first_free_ip, parse_subnet


@pytest.mark.parametrize(("cidr", "gateway", "problem"), [
    ("10.0.0.0/33", None, "not an IPv4 network"),
    ("10.0.0.5/24", None, "host bits set"),
    ("banana", None, "not an IPv4 network"),
    ("10.0.0.0/8", None, "/8 is not allowed"),
    ("10.0.0.0/30", None, "/30 is not allowed"),
    ("10.0.0.0/24", "10.0.1.1", "outside 10.0.0.0/24"),
    ("10.0.0.0/24", "10.0.0.255", "broadcast"),
    ("10.0.0.0/24", "nope", "not an IPv4 address"),
])
def test_bad_subnets_are_refused_with_the_reason(cidr, gateway, problem):
    with pytest.raises(InvalidRequest, match=problem):
        parse_subnet(cidr, gateway, dhcp=True)


def test_dhcp_takes_the_lowest_address_the_gateway_does_not():
    assert parse_subnet("10.0.0.0/24", "10.0.0.1", True).dhcp_address == "10.0.0.2"
    assert parse_subnet("10.0.0.0/24", None, True).dhcp_address == "10.0.0.1"
    assert parse_subnet("10.0.0.0/24", None, False).dhcp_address is None


def test_addresses_are_allocated_lowest_first_and_a_full_subnet_is_refused():
    assert first_free_ip("10.0.0.0/29", {"10.0.0.1", "10.0.0.3"}) == "10.0.0.2"
    with pytest.raises(Conflict, match="full"):
        first_free_ip("10.0.0.0/29", {f"10.0.0.{i}" for i in range(1, 7)})
    with pytest.raises(Conflict, match="taken"):
        check_requested_ip("10.0.0.0/29", "10.0.0.3", {"10.0.0.3"})
    with pytest.raises(InvalidRequest, match="outside"):
        check_requested_ip("10.0.0.0/29", "10.0.0.9", set())


@pytest.fixture
def store(engine):
    with Session(engine) as session:  # every VM and network belongs to a tenant that exists
        session.add_all([Tenant(id=t) for t in ("t", "t1", "t2")])
        session.commit()
    return NetworkStore(engine), Inventory(engine)


def _network(store: NetworkStore, cidr: str = "10.0.0.0/28", tenant: str = "t", name: str = "n") -> Network:
    subnet = parse_subnet(cidr, None, dhcp=True)
    return store.add_network(Network(tenant=tenant, name=name, cidr=subnet.cidr, vni=0), subnet)


def _vm(name: str, tenant: str = "t") -> Vm:
    return Vm(name=name, vcpus=1, memory_mib=128, disk_gib=1, image="lab-guest", tenant=tenant)


def test_concurrent_creates_on_a_small_subnet_never_share_an_address(store):
    networks, _inventory = store
    net = _network(networks)  # a /28: 14 usable, one for DHCP, 13 for VMs

    def create(i: int):
        try:
            return networks.add_vm(_vm(f"vm{i}"), [NicRequest(network_id=net.id)])
        except Conflict as exc:
            return exc

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(create, range(30)))
    created = [r for r in results if isinstance(r, Vm)]
    refused = [r for r in results if isinstance(r, Conflict)]
    assert len(created) == 13 and len(refused) == 17
    assert all("is full" in str(r) for r in refused)
    ports = networks.ports(net.id, "t")
    ips = [p.ip for p in ports]
    macs = [p.mac for p in ports]
    assert len(set(ips)) == len(ips) == 14 and len(set(macs)) == len(macs)
    # A refused create left no VM row behind.
    assert {v.name for v in _inventory.list("t")} == {v.name for v in created}


def test_a_deleted_vm_frees_its_addresses_and_a_network_with_ports_cannot_go(store):
    networks, inventory = store
    net = _network(networks)
    vm = networks.add_vm(_vm("a"), [NicRequest(network_id=net.id, ip="10.0.0.9"), NicRequest(network_id=net.id)])
    nics = networks.nics_of([vm.id])[vm.id]
    assert [n.ip for n in nics] == ["10.0.0.9", "10.0.0.2"]
    with pytest.raises(Conflict, match="port"):
        networks.begin_delete(net.id, "t", "op")
    with pytest.raises(Conflict, match="taken"):
        networks.add_vm(_vm("b"), [NicRequest(network_id=net.id, ip="10.0.0.9")])
    assert [v.name for v in inventory.list("t")] == ["a"]
    inventory.remove(vm.id)
    assert [p.kind.value for p in networks.ports(net.id, "t")] == ["dhcp"]
    networks.set_network_state(net.id, NetworkState.ACTIVE)
    networks.begin_delete(net.id, "t", "op")
    networks.remove_network(net.id)
    assert networks.networks("t") == []


def test_networks_are_per_tenant_and_get_distinct_vnis(store):
    networks, _ = store
    a = _network(networks, tenant="t1", name="same")
    b = _network(networks, tenant="t2", name="same")  # same name and CIDR, other tenant
    assert a.vni != b.vni
    with pytest.raises(Conflict, match="already exists"):
        _network(networks, tenant="t1", name="same")
    with pytest.raises(InvalidRequest, match="unknown network"):
        networks.add_vm(_vm("x", tenant="t2"), [NicRequest(network_id=a.id)])
    plumbing = networks.plumbing(a.id)
    assert plumbing.vni == a.vni and plumbing.dhcp_address == "10.0.0.1" and plumbing.hosts == ()


def test_a_hot_plugged_nic_gets_the_next_slot_and_address(store):
    networks, _ = store
    net = _network(networks)
    vm = networks.add_vm(_vm("a"), [NicRequest(network_id=net.id)])
    port = networks.add_nic(vm, NicRequest(network_id=net.id))
    assert (port.slot, port.ip, port.attached) == (1, "10.0.0.3", False)
    assert [n.port_id for n in networks.nic_specs(vm.id)] == [networks.nics_of([vm.id])[vm.id][0].id]
    assert networks.nic_spec(vm.id, port.id).ip == "10.0.0.3"
