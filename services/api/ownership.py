"""Whose a stored thing is. Volumes and images live in the storage service, which knows no
tenants; the API knows from its quota ledger (a data volume's or template's hold names its
tenant) and its inventory (a root disk is its VM's). What no record claims is the fleet's:
admins see it, tenants do not, except the images an admin installed or imported, which are
shared with every tenant.
"""

from __future__ import annotations

import asyncio

from services.api.platform import Platform
from shared.auth import Principal
from shared.errors import NotFound
from shared.quota import image_hold, volume_hold
from shared.storage_models import ImageView, VolumeKind, VolumeView

TEMPLATE = "template"  # ImageView.kind of an image made from a VM's disk


async def template_owners(p: Platform) -> dict[str, str]:
    """template name -> its tenant."""
    holds = await asyncio.to_thread(p.ledger.owners, image_hold(""))
    return {key.removeprefix(image_hold("")): tenant for key, tenant in holds.items()}


def image_visible(who: Principal, owners: dict[str, str], image: ImageView) -> bool:
    if who.is_admin:
        return True
    if image.name in owners:
        return owners[image.name] == who.tenant
    return image.kind != TEMPLATE  # installed or imported: shared; a template nobody holds: the fleet's


async def visible_image(p: Platform, who: Principal, name: str) -> ImageView:
    """The image if ``who`` may see (and so boot or clone) it. Raises NotFound otherwise, the
    same as for an image that does not exist."""
    view = await p.storage.image_view(name)
    if not image_visible(who, await template_owners(p), view):
        raise NotFound(f"no image named '{name}'")
    return view


async def volume_tenants(p: Platform, volumes: list[VolumeView]) -> dict[str, str]:
    """volume name -> its tenant, for those of ``volumes`` anyone claims."""
    holds = await asyncio.to_thread(p.ledger.owners, volume_hold(""))
    names = {v.name for v in volumes}
    owners = {key.removeprefix(volume_hold("")): tenant for key, tenant in holds.items()
              if key.count("/") == 1 and key.removeprefix(volume_hold("")) in names}
    roots = [v for v in volumes if v.kind is VolumeKind.ROOT and v.vm_id]
    if roots:
        vm_tenants = {vm.id: vm.tenant for vm in await asyncio.to_thread(p.inventory.many, [v.vm_id for v in roots])}
        owners.update({v.name: vm_tenants[v.vm_id] for v in roots if v.vm_id in vm_tenants})
    return owners


async def visible_volume(p: Platform, who: Principal, name: str) -> tuple[VolumeView, str | None]:
    """The volume and its tenant (None: the fleet's) if ``who`` may see it; NotFound otherwise."""
    volume = await p.storage.volume(name)
    tenant = (await volume_tenants(p, [volume])).get(volume.name)
    if not who.is_admin and tenant != who.tenant:
        raise NotFound(f"no volume named '{name}'")
    return volume, tenant
