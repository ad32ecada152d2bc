"""/v1/networks: a tenant's virtual networks and the ports on them. Creating and deleting a network
are operations (202 + Location), like every other change."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Response

from services.api.network_models import (
    Network,
    NetworkCreate,
    NetworkPublic,
    PortPublic,
)
from services.api.platform import Platform, get_platform
from services.api.policy import principal
from services.api.storage_models import StorageOperationAccepted, start_operation
from shared.auth import Principal
from shared.names import network_workflow_id
from shared.networks import NetworkOpInput, parse_subnet

router = APIRouter(prefix="/v1/networks", tags=["networks"])


def _public(network: Network, dhcp_address: str | None) -> NetworkPublic:
    return NetworkPublic(**network.model_dump(), dhcp_address=dhcp_address)


@router.post("", status_code=202, response_model=StorageOperationAccepted)
async def create_network(body: NetworkCreate, response: Response, p: Platform = Depends(get_platform),
                         who: Principal = Depends(principal)):
    """A network with its own VXLAN id and, with DHCP on, the DHCP server's address reserved.
    Nothing is made on any host until a VM there needs the network."""
    tenant = who.tenant
    subnet = parse_subnet(body.cidr, body.gateway, body.dhcp)
    row = Network(tenant=tenant, name=body.name, cidr=subnet.cidr, gateway=subnet.gateway, dhcp=body.dhcp, vni=0)
    op_id = row.last_operation_id = network_workflow_id(row.id, "create")
    network = await asyncio.to_thread(p.network_store.add_network, row, subnet)
    try:
        return await start_operation(p, "CreateNetwork", NetworkOpInput(network.id, tenant, network.vni), op_id,
                                     network.id, response, tenant, who=who)
    except Exception:
        await asyncio.to_thread(p.network_store.remove_network, network.id)
        raise


@router.get("", response_model=list[NetworkPublic])
async def list_networks(p: Platform = Depends(get_platform), who: Principal = Depends(principal)):
    networks = await asyncio.to_thread(p.network_store.networks, who.visible_tenant)
    dhcp = await asyncio.to_thread(p.network_store.dhcp_addresses, [n.id for n in networks])
    return [_public(n, dhcp.get(n.id)) for n in networks]


@router.get("/{network_id}", response_model=NetworkPublic)
async def get_network(network_id: str, p: Platform = Depends(get_platform), who: Principal = Depends(principal)):
    network = await asyncio.to_thread(p.network_store.network, network_id, who.visible_tenant)
    dhcp = await asyncio.to_thread(p.network_store.dhcp_addresses, [network.id])
    return _public(network, dhcp.get(network.id))


@router.get("/{network_id}/ports", response_model=list[PortPublic])
async def list_ports(network_id: str, p: Platform = Depends(get_platform), who: Principal = Depends(principal)):
    ports = await asyncio.to_thread(p.network_store.ports, network_id, who.visible_tenant)
    return [PortPublic(**port.model_dump()) for port in ports]


@router.delete("/{network_id}", status_code=202, response_model=StorageOperationAccepted)
async def delete_network(network_id: str, response: Response, p: Platform = Depends(get_platform),
                         who: Principal = Depends(principal)):
    """409 while any VM has a NIC on it. The operation removes what any host still has of it."""
    op_id = network_workflow_id(network_id, "delete")
    network = await asyncio.to_thread(p.network_store.begin_delete, network_id, who.visible_tenant, op_id)
    return await start_operation(p, "DeleteNetwork", NetworkOpInput(network.id, network.tenant, network.vni), op_id,
                                 network.id, response, network.tenant, who=who)
