"""/v1/placement-groups: affinity and anti-affinity groups, hard or soft, that VMs join."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Response

from services.api.models import (
    GroupMember,
    PlacementGroup,
    PlacementGroupCreate,
    PlacementGroupPublic,
)
from services.api.platform import Platform, get_platform
from services.api.policy import principal
from shared.auth import Principal

router = APIRouter(prefix="/v1/placement-groups", tags=["placement groups"])


def _public(group: PlacementGroup, members=()) -> PlacementGroupPublic:
    return PlacementGroupPublic(
        id=group.id, name=group.name, policy=group.policy, hard=group.hard, created_at=group.created_at,
        members=[GroupMember(vm_id=m.id, name=m.name, host_id=m.host_id, state=m.state) for m in members],
    )


@router.post("", status_code=201, response_model=PlacementGroupPublic)
async def create_group(body: PlacementGroupCreate, response: Response, p: Platform = Depends(get_platform),
                       who: Principal = Depends(principal)):
    group = PlacementGroup(tenant=who.tenant, **body.model_dump())
    group = await asyncio.to_thread(p.inventory.add_group, group)
    response.headers["Location"] = f"/v1/placement-groups/{group.id}"
    return _public(group)


@router.get("", response_model=list[PlacementGroupPublic])
async def list_groups(p: Platform = Depends(get_platform),
                       who: Principal = Depends(principal)):
    groups = await asyncio.to_thread(p.inventory.list_groups, who.visible_tenant)
    return [_public(g, await asyncio.to_thread(p.inventory.group_members, g.id)) for g in groups]


@router.get("/{group_id}", response_model=PlacementGroupPublic)
async def get_group(group_id: str, p: Platform = Depends(get_platform),
                       who: Principal = Depends(principal)):
    group = await asyncio.to_thread(p.inventory.get_group, group_id, who.visible_tenant)
    return _public(group, await asyncio.to_thread(p.inventory.group_members, group.id))


@router.delete("/{group_id}", status_code=204)
async def delete_group(group_id: str, p: Platform = Depends(get_platform),
                       who: Principal = Depends(principal)):
    """409 while VMs still belong to the group."""
    await asyncio.to_thread(p.inventory.remove_group, group_id, who.visible_tenant)
    return Response(status_code=204)
