"""Networks and ports in the inventory, and address management on them. Blocking: call from threads.

Addresses and MACs stay unique under concurrent requests (and API replicas) because the database
holds the rule: unique (network, ip) and unique mac. An allocation reads what is taken, picks,
inserts, and on a lost race starts over in a fresh transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from sqlalchemy import delete, func, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from services.api.db import lookup
from services.api.guest_config import NicPublic, NicRequest
from services.api.models import Vm
from services.api.network_models import Network, NetworkState, Port
from services.api.quota_store import commit_in, release_in, reserve_in
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.networks import (
    MAX_NICS_PER_VM,
    DhcpHost,
    NetworkPlumbing,
    NicSpec,
    PortKind,
    Subnet,
    check_requested_ip,
    first_free_ip,
    first_free_vni,
    random_mac,
)
from shared.quota import Amounts, network_hold, vm_hold

_RACE_ATTEMPTS = 20  # lost races to another allocation before giving up (each retry sees more taken)
T = TypeVar("T")


class NetworkStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _retrying(self, attempt: Callable[[Session], T], conflict: str) -> T:
        """Run ``attempt`` in a fresh transaction until it commits without breaking a unique rule
        (broken at the commit or at a flush inside ``attempt``: PostgreSQL checks each row as it
        is written, and a broken rule ends the whole transaction there)."""
        for _ in range(_RACE_ATTEMPTS):
            with Session(self._engine) as session:
                try:
                    result = attempt(session)
                    session.commit()
                except IntegrityError:
                    session.rollback()
                    continue
                return result
        raise Conflict(conflict)

    # -- networks ------------------------------------------------------------------------------

    def add_network(self, network: Network, subnet: Subnet) -> Network:
        """Insert the network with a free VNI and, when DHCP is on, the DHCP server's port, with
        its share of the tenant's quota. Raises Conflict when the tenant has a network of that
        name, QuotaExceeded."""

        def attempt(session: Session) -> str:
            reserve_in(session, network.tenant, network_hold(network.id), Amounts(networks=1))
            if session.exec(select(Network.id).where(Network.tenant == network.tenant,
                                                     Network.name == network.name)).first():
                raise Conflict(f"a network named '{network.name}' already exists")
            row = Network(**network.model_dump())
            row.vni = first_free_vni(session.exec(select(Network.vni)).all())
            session.add(row)
            if subnet.dhcp_address:
                session.add(Port(network_id=row.id, tenant=row.tenant, kind=PortKind.DHCP,
                                 mac=random_mac(), ip=subnet.dhcp_address))
            return row.id

        network_id = self._retrying(attempt, "could not allocate a VXLAN id for the network; try again")
        return self.network(network_id)

    def network(self, network_id: str, tenant: str | None = None) -> Network:
        with Session(self._engine) as session:
            row = lookup(session, Network, network_id)
            if row is None or (tenant is not None and row.tenant != tenant):
                raise NotFound(f"no network with id '{network_id}'")
            return row

    def networks(self, tenant: str | None) -> list[Network]:
        """The tenant's networks; None: every tenant's."""
        with Session(self._engine) as session:
            query = select(Network) if tenant is None else select(Network).where(Network.tenant == tenant)
            return list(session.exec(query.order_by(Network.created_at)))

    def dhcp_addresses(self, network_ids: Iterable[str]) -> dict[str, str]:
        with Session(self._engine) as session:
            query = select(Port.network_id, Port.ip).where(
                Port.network_id.in_(list(network_ids)), Port.kind == PortKind.DHCP)
            return dict(session.exec(query).all())

    def set_network_state(self, network_id: str, state: NetworkState, op_id: str | None = None) -> None:
        with Session(self._engine) as session:
            values: dict = {"state": state}
            if op_id is not None:
                values["last_operation_id"] = op_id
            session.exec(update(Network).where(Network.id == network_id).values(**values))
            if state is NetworkState.ACTIVE:
                commit_in(session, network_hold(network_id))
            session.commit()

    def begin_delete(self, network_id: str, tenant: str | None, op_id: str) -> Network:
        """Mark the network deleting. Raises NotFound, or Conflict while a NIC is on it (a create
        racing this one either sees the network deleting or its NIC is seen here)."""
        network = self.network(network_id, tenant)
        with Session(self._engine) as session:
            nics = session.exec(select(func.count()).select_from(Port).where(
                Port.network_id == network_id, Port.kind == PortKind.NIC)).one()
            if nics:
                raise Conflict(f"network '{network.name}' has {nics} port(s) of VMs; delete or detach them first")
            moved = session.exec(update(Network).where(
                Network.id == network_id, Network.state != NetworkState.CREATING,
            ).values(state=NetworkState.DELETING, last_operation_id=op_id))
            session.commit()
            if moved.rowcount != 1:
                raise Conflict(f"network '{network.name}' is still being created")
        return self.network(network_id)

    def remove_network(self, network_id: str) -> None:
        """Delete the network, its remaining (DHCP) ports and its quota hold. Idempotent."""
        with Session(self._engine) as session:
            session.exec(delete(Port).where(Port.network_id == network_id))
            release_in(session, network_hold(network_id))
            session.exec(delete(Network).where(Network.id == network_id))
            session.commit()

    def ports(self, network_id: str, tenant: str | None) -> list[Port]:
        self.network(network_id, tenant)
        with Session(self._engine) as session:
            query = select(Port).where(Port.network_id == network_id).order_by(Port.created_at)
            return list(session.exec(query))

    # -- NICs ----------------------------------------------------------------------------------

    def _usable_networks(self, session: Session, tenant: str, requests: list[NicRequest]) -> dict[str, Network]:
        wanted = {r.network_id for r in requests}
        rows = {n.id: n for n in session.exec(select(Network).where(Network.id.in_(list(wanted))))}
        for network_id in sorted(wanted):
            row = rows.get(network_id)
            if row is None or row.tenant != tenant:
                raise InvalidRequest(f"networks: unknown network '{network_id}' (see GET /v1/networks)")
            if row.state is NetworkState.DELETING:
                raise Conflict(f"networks: network '{row.name}' is being deleted")
        return rows

    def _allocate(self, session: Session, vm: Vm, requests: list[NicRequest], first_slot: int,
                  attached: bool) -> list[Port]:
        networks = self._usable_networks(session, vm.tenant, requests)
        taken: dict[str, set[str]] = {}
        for network_id in networks:
            taken[network_id] = set(session.exec(select(Port.ip).where(Port.network_id == network_id)).all())
            gateway = networks[network_id].gateway
            if gateway:
                taken[network_id].add(gateway)
        ports = []
        for slot, request in enumerate(requests, start=first_slot):
            network = networks[request.network_id]
            if request.ip is not None:
                ip = check_requested_ip(network.cidr, request.ip, taken[network.id])
            else:
                ip = first_free_ip(network.cidr, taken[network.id])
            taken[network.id].add(ip)
            port = Port(network_id=network.id, tenant=vm.tenant, kind=PortKind.NIC, vm_id=vm.id, slot=slot,
                        mac=random_mac(), ip=ip, attached=attached)
            session.add(port)
            ports.append(port)
        return ports

    def add_vm(self, vm: Vm, requests: list[NicRequest]) -> Vm:
        """Insert the VM, its share of the tenant's quota and one port per requested NIC in one
        transaction: either all exist or nothing does. Raises Conflict (name taken, address
        taken, subnet full), QuotaExceeded, InvalidRequest (unknown network, address outside
        its subnet)."""

        def attempt(session: Session) -> None:
            reserve_in(session, vm.tenant, vm_hold(vm.id), Amounts(
                vms=1, vcpus=vm.vcpus, memory_mib=vm.memory_mib, disk_gib=vm.disk_gib))
            if session.exec(select(Vm.id).where(Vm.tenant == vm.tenant, Vm.name == vm.name)).first():
                raise Conflict(f"a VM named '{vm.name}' already exists")
            session.add(Vm(**vm.model_dump()))
            session.flush()  # the VM row before the ports that name it
            self._allocate(session, vm, requests, 0, attached=True)

        self._retrying(attempt, "addresses are in high demand on these networks; try again")
        with Session(self._engine) as session:
            return session.get(Vm, vm.id)

    def add_nic(self, vm: Vm, request: NicRequest) -> Port:
        """A port for a NIC to hot-plug, not attached yet. Same errors as ``add_vm``; Conflict
        when the VM has its most NICs already."""
        def attempt(session: Session) -> str:
            slots = session.exec(select(Port.slot).where(Port.vm_id == vm.id)).all()
            if len(slots) >= MAX_NICS_PER_VM:
                raise Conflict(f"VM '{vm.name}' has {len(slots)} NICs already; at most {MAX_NICS_PER_VM}")
            [port] = self._allocate(session, vm, [request], max(slots, default=-1) + 1, attached=False)
            return port.id  # the row itself expires with its session

        return self.port(self._retrying(attempt, "addresses are in high demand on this network; try again"))

    def port(self, port_id: str) -> Port:
        with Session(self._engine) as session:
            row = lookup(session, Port, port_id)
            if row is None:
                raise NotFound(f"no port with id '{port_id}'")
            return row

    def nic(self, vm_id: str, port_id: str) -> Port:
        port = self.port(port_id)
        if port.vm_id != vm_id:
            raise NotFound(f"VM {vm_id} has no NIC '{port_id}'")
        return port

    def set_attached(self, port_id: str, attached: bool) -> None:
        with Session(self._engine) as session:
            session.exec(update(Port).where(Port.id == port_id).values(attached=attached))
            session.commit()

    def remove_port(self, port_id: str) -> None:
        """Release the port's address. Idempotent."""
        with Session(self._engine) as session:
            session.exec(delete(Port).where(Port.id == port_id))
            session.commit()

    def nics_of(self, vm_ids: Iterable[str]) -> dict[str, list[NicPublic]]:
        """vm id -> its NICs, in slot order."""
        with Session(self._engine) as session:
            rows = session.exec(
                select(Port, Network.name).join(Network, Network.id == Port.network_id)
                .where(Port.vm_id.in_(list(vm_ids))).order_by(Port.slot)
            ).all()
        nics: dict[str, list[NicPublic]] = {}
        for port, network_name in rows:
            nics.setdefault(port.vm_id, []).append(NicPublic(
                id=port.id, network_id=port.network_id, network_name=network_name, mac=port.mac, ip=port.ip,
                attached=port.attached))
        return nics

    # -- what hosts need -------------------------------------------------------------------------

    def plumbing(self, network_id: str) -> NetworkPlumbing:
        """The network as a host carries it, with a DHCP entry for every NIC on it."""
        with Session(self._engine) as session:
            network = session.get(Network, network_id)
            if network is None:
                raise NotFound(f"no network with id '{network_id}'")
            ports = session.exec(select(Port, Vm.name, Vm.hostname).outerjoin(Vm, Vm.id == Port.vm_id)
                                 .where(Port.network_id == network_id).order_by(Port.ip)).all()
        dhcp = next((p for p, _, _ in ports if p.kind is PortKind.DHCP), None)
        hosts = tuple(DhcpHost(p.mac, p.ip, hostname or (name or "").lower())
                      for p, name, hostname in ports if p.kind is PortKind.NIC)
        return NetworkPlumbing(
            network_id=network.id, vni=network.vni, cidr=network.cidr, gateway=network.gateway,
            dhcp_address=dhcp.ip if dhcp else None, dhcp_mac=dhcp.mac if dhcp else None, mtu=network.mtu,
            hosts=hosts,
        )

    def nic_spec(self, vm_id: str, port_id: str) -> NicSpec:
        spec = next((n for n in self.nic_specs(vm_id, attached_only=False) if n.port_id == port_id), None)
        if spec is None:
            raise NotFound(f"VM {vm_id} has no NIC '{port_id}'")
        return spec

    def nic_specs(self, vm_id: str, attached_only: bool = True) -> list[NicSpec]:
        with Session(self._engine) as session:
            query = (select(Port, Network).join(Network, Network.id == Port.network_id)
                     .where(Port.vm_id == vm_id).order_by(Port.slot))
            rows = session.exec(query).all()
        return [NicSpec(port.id, network.id, network.vni, port.mac, port.ip, network.mtu)
                for port, network in rows if port.attached or not attached_only]
