"""/v1/hosts and /v1/images: read-only views answered by the scheduler and storage services."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from services.api.platform import Platform, get_platform

router = APIRouter(prefix="/v1", tags=["catalog"])


class HostPublic(BaseModel):
    id: str
    state: str
    domain_type: str
    capacity: dict[str, int]
    used: dict[str, int]
    domain_count: int
    last_heartbeat: datetime
    last_heartbeat_age_s: float


class ImagePublic(BaseModel):
    name: str
    description: str
    min_memory_mib: int
    min_disk_gib: int
    boot: str


@router.get("/hosts", response_model=list[HostPublic])
async def list_hosts(p: Platform = Depends(get_platform)):
    hosts = (await p.scheduler.hosts()).hosts
    return [
        HostPublic(
            id=h.host_id,
            state=h.state,
            domain_type=h.domain_type,
            capacity={"vcpus": h.vcpus_total, "memory_mib": h.memory_mib_total},
            used={"vcpus": h.vcpus_used, "memory_mib": h.memory_mib_used},
            domain_count=h.domain_count,
            last_heartbeat=datetime.fromtimestamp(h.last_heartbeat_at_s, UTC),
            last_heartbeat_age_s=round(h.last_heartbeat_age_s, 2),
        )
        for h in hosts
    ]


@router.get("/images", response_model=list[ImagePublic])
async def list_images(p: Platform = Depends(get_platform)):
    images = (await p.storage.images()).images
    return [
        ImagePublic(
            name=i.name,
            description=i.description,
            min_memory_mib=i.min_memory_mib,
            min_disk_gib=i.min_disk_gib,
            boot="kernel" if i.boot else "disk",
        )
        for i in images
    ]
