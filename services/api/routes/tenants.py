"""/v1/tenants: tenants (admins make and delete them), their quotas and their users. A tenant's
own tokens see their tenant; another tenant is not found."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request, Response

from services.api import audit
from services.api.platform import Platform, get_platform
from services.api.policy import principal
from services.api.tenancy_models import (
    QuotaLimits,
    QuotaPublic,
    ResourceUsage,
    Tenant,
    TenantCreate,
    TenantPublic,
    UserCreate,
    UserPublic,
)
from shared.auth import Principal
from shared.quota import Resource

router = APIRouter(prefix="/v1/tenants", tags=["tenants"])


def _public(row: Tenant) -> TenantPublic:
    return TenantPublic(id=row.id, description=row.description, created_at=row.created_at)


async def _quota(p: Platform, tenant_id: str, warnings: list[str] | None = None) -> QuotaPublic:
    limits, used, reserved = await asyncio.to_thread(p.ledger.usage, tenant_id)
    resources = {}
    for r in Resource:
        limit = limits.get(r)
        available = None if limit is None else max(0, limit - used.get(r) - reserved.get(r))
        resources[r.value] = ResourceUsage(limit=limit, used=used.get(r), reserved=reserved.get(r),
                                           available=available)
    return QuotaPublic(tenant=tenant_id, resources=resources, warnings=warnings or [])


@router.post("", status_code=201, response_model=TenantPublic)
async def create_tenant(body: TenantCreate, response: Response, p: Platform = Depends(get_platform)):
    row = await asyncio.to_thread(p.identities.add_tenant, body)
    response.headers["Location"] = f"/v1/tenants/{row.id}"
    return _public(row)


@router.get("", response_model=list[TenantPublic])
async def list_tenants(p: Platform = Depends(get_platform), who: Principal = Depends(principal)):
    return [_public(t) for t in await asyncio.to_thread(p.identities.tenants, who.visible_tenant)]


@router.get("/{tenant_id}", response_model=TenantPublic)
async def get_tenant(tenant_id: str, p: Platform = Depends(get_platform)):
    return _public(await asyncio.to_thread(p.identities.tenant, tenant_id))


@router.delete("/{tenant_id}", status_code=204)
async def delete_tenant(tenant_id: str, p: Platform = Depends(get_platform), who: Principal = Depends(principal)):
    """409 while the tenant has VMs, networks, volumes, snapshots, templates or placement groups."""
    await asyncio.to_thread(p.identities.remove_tenant, tenant_id, who)
    return Response(status_code=204)


@router.get("/{tenant_id}/quota", response_model=QuotaPublic)
async def get_quota(tenant_id: str, p: Platform = Depends(get_platform)):
    """Per resource: the limit (null: none), what exists (used), what operations under way are
    creating (reserved) and what a new request may still take."""
    return await _quota(p, tenant_id)


@router.put("/{tenant_id}/quota", response_model=QuotaPublic)
async def set_quota(tenant_id: str, body: QuotaLimits, request: Request, p: Platform = Depends(get_platform)):
    """Set the limits given; the others keep theirs. A limit below current use is accepted, and
    the answer's ``warnings`` say that nothing new fits until use falls below it."""
    audit.note(request, " ".join(f"{k}={v}" for k, v in body.model_dump(exclude_unset=True).items()))
    warnings = await asyncio.to_thread(p.ledger.set_limits, tenant_id, body)
    return await _quota(p, tenant_id, warnings)


def _user(row) -> UserPublic:
    return UserPublic(id=row.id, tenant=row.tenant, name=row.name, created_at=row.created_at)


@router.post("/{tenant_id}/users", status_code=201, response_model=UserPublic)
async def add_user(tenant_id: str, body: UserCreate, response: Response, p: Platform = Depends(get_platform)):
    row = await asyncio.to_thread(p.identities.add_user, tenant_id, body.name)
    response.headers["Location"] = f"/v1/tenants/{tenant_id}/users/{row.name}"
    return _user(row)


@router.get("/{tenant_id}/users", response_model=list[UserPublic])
async def list_users(tenant_id: str, p: Platform = Depends(get_platform)):
    return [_user(u) for u in await asyncio.to_thread(p.identities.users, tenant_id)]


@router.delete("/{tenant_id}/users/{user}", status_code=204)
async def remove_user(tenant_id: str, user: str, p: Platform = Depends(get_platform)):
    """The user's tokens stop working at once."""
    await asyncio.to_thread(p.identities.remove_user, tenant_id, user)
    return Response(status_code=204)
