"""/v1/images: read-only views answered by the storage service."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from services.api.platform import Platform, get_platform

router = APIRouter(prefix="/v1", tags=["catalog"])


class ImagePublic(BaseModel):
    name: str
    description: str
    min_memory_mib: int
    min_disk_gib: int
    boot: str


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
