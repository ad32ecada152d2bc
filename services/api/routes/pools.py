"""/v1/pools: the shared pool and each host's local pool, with capacity and used space."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from services.api.platform import Platform, get_platform
from services.api.storage_models import PoolPublic
from shared import codec
from shared.errors import NotFound

router = APIRouter(prefix="/v1/pools", tags=["storage"])


@router.get("", response_model=list[PoolPublic])
async def list_pools(p: Platform = Depends(get_platform)):
    return [PoolPublic(**codec.to_jsonable(pool)) for pool in (await p.storage.pools()).pools]


@router.get("/{name}", response_model=PoolPublic)
async def get_pool(name: str, p: Platform = Depends(get_platform)):
    for pool in (await p.storage.pools()).pools:
        if pool.name == name:
            return PoolPublic(**codec.to_jsonable(pool))
    raise NotFound(f"no pool named '{name}'")
