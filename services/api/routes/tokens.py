"""/v1/tokens: API tokens. A caller makes tokens no stronger than its own (its role at most;
its own tenant and user unless it is an admin); the secret is shown once and stored only as a
hash. Revoking takes effect on the token's next request."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Response

from services.api.platform import Platform, get_platform
from services.api.policy import principal
from services.api.tenancy_models import (
    ApiToken,
    TokenCreate,
    TokenIssued,
    TokenPublic,
    WhoAmI,
)
from shared.auth import Principal

router = APIRouter(prefix="/v1", tags=["tokens"])


def _public(row: ApiToken, user: str) -> TokenPublic:
    return TokenPublic(id=row.id, tenant=row.tenant, user=user, role=row.role, description=row.description,
                       created_by=row.created_by, created_at=row.created_at, expires_at=row.expires_at,
                       revoked_at=row.revoked_at)


@router.post("/tokens", status_code=201, response_model=TokenIssued)
async def create_token(body: TokenCreate, response: Response, p: Platform = Depends(get_platform),
                       who: Principal = Depends(principal)):
    row, user, text = await asyncio.to_thread(p.identities.issue, who, body)
    response.headers["Location"] = f"/v1/tokens/{row.id}"
    return TokenIssued(**_public(row, user).model_dump(), token=text)


@router.get("/tokens", response_model=list[TokenPublic])
async def list_tokens(p: Platform = Depends(get_platform), who: Principal = Depends(principal)):
    """An admin sees every token; anyone else the tokens of its own user. Never a secret."""
    return [_public(row, user) for row, user in await asyncio.to_thread(p.identities.tokens, who)]


@router.get("/tokens/{token_id}", response_model=TokenPublic)
async def get_token(token_id: str, p: Platform = Depends(get_platform), who: Principal = Depends(principal)):
    return _public(*await asyncio.to_thread(p.identities.token, token_id, who))


@router.delete("/tokens/{token_id}", response_model=TokenPublic)
async def revoke_token(token_id: str, p: Platform = Depends(get_platform), who: Principal = Depends(principal)):
    return _public(*await asyncio.to_thread(p.identities.revoke, token_id, who))


@router.get("/whoami", response_model=WhoAmI)
async def whoami(who: Principal = Depends(principal)):
    return WhoAmI(token_id=who.token_id, user=who.user, tenant=who.tenant, role=who.role)
