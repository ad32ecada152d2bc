"""/v1/audit: who changed what, when, and how it ended. Admins see every record; anyone else
its own tenant's. Newest first, a page at a time."""

from __future__ import annotations

import asyncio
from datetime import datetime

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel

from services.api.platform import Platform, get_platform
from services.api.policy import principal
from shared.auth import Principal

router = APIRouter(prefix="/v1/audit", tags=["audit"])


class AuditPublic(BaseModel):
    id: int
    at: datetime
    request_id: str
    token_id: str | None
    user: str | None
    tenant: str | None
    role: str | None
    action: str
    path: str
    status: int
    outcome: str
    code: str | None
    operation_id: str | None


@router.get("", response_model=list[AuditPublic])
async def list_audit(response: Response, offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000),
                     p: Platform = Depends(get_platform), who: Principal = Depends(principal)):
    """``X-Total-Count`` says how many records there are."""
    total, rows = await asyncio.to_thread(p.audit.page, who.visible_tenant, offset, limit)
    response.headers["X-Total-Count"] = str(total)
    return [AuditPublic.model_validate(r, from_attributes=True) for r in rows]
