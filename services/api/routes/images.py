"""/v1/images: the image catalog; importing image files, templates made from a stopped VM's
disk (also ``POST /v1/vms/{id}/template``), deleting images no volume uses.

Installed and imported images are shared with every tenant (admins import them). A template
belongs to the tenant that made it, counts against its disk quota, and only it sees it."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Response

from services.api.models import Vm
from services.api.ownership import image_visible, template_owners, visible_image
from services.api.platform import Platform, get_platform
from services.api.policy import principal
from services.api.storage_models import (
    ImageCreate,
    ImagePublic,
    StorageOperationAccepted,
    TemplateCreate,
    get_vm,
    require_state,
    start_operation,
)
from shared.auth import Principal
from shared.errors import Conflict, Forbidden, InvalidRequest, NotFound
from shared.models import VmState
from shared.names import image_operation_id
from shared.quota import Amounts, QuotaSettlement, image_hold
from shared.storage_models import (
    DeleteImageInput,
    ImportImageInput,
    ImportRequest,
    TemplateInput,
    TemplateRequest,
)

router = APIRouter(prefix="/v1", tags=["storage"])


@router.get("/images", response_model=list[ImagePublic])
async def list_images(p: Platform = Depends(get_platform), who: Principal = Depends(principal)):
    owners = await template_owners(p)
    return [ImagePublic.of(v) for v in (await p.storage.image_views()).images if image_visible(who, owners, v)]


@router.get("/images/{name}", response_model=ImagePublic)
async def get_image(name: str, p: Platform = Depends(get_platform), who: Principal = Depends(principal)):
    return ImagePublic.of(await visible_image(p, who, name))


@router.post("/images", status_code=202, response_model=StorageOperationAccepted)
async def create_image(body: ImageCreate, response: Response, p: Platform = Depends(get_platform),
                       who: Principal = Depends(principal)):
    """Import an image file, or make a template of a stopped VM (``from_vm``). The file is checked
    with qemu-img before anything is copied: its real format must be the one given, it may not
    have a backing file, and sizes are limited. Images are stored as qcow2."""
    if body.from_vm is not None:
        try:
            vm = await get_vm(p, body.from_vm, who)
        except NotFound:
            raise InvalidRequest(f"from_vm: no VM with id '{body.from_vm}'") from None
        return await _template(p, vm, TemplateCreate(name=body.name, description=body.description), response, who=who)
    assert body.source_path is not None and body.format is not None  # the model checked it
    req = ImportRequest(
        name=body.name, source_path=body.source_path, format=body.format, description=body.description,
        min_memory_mib=body.min_memory_mib, min_disk_gib=body.min_disk_gib, kernel_path=body.kernel_path,
        initrd_path=body.initrd_path, cmdline=body.cmdline, boot_marker=body.boot_marker,
    )
    await p.storage.check_import(req)
    return await start_operation(p, "ImportImage", ImportImageInput(who.tenant, req),
                                 image_operation_id(body.name, "create"), f"image/{body.name}", response,
                                 who.tenant, who=who)


@router.post("/vms/{vm_id}/template", status_code=202, response_model=StorageOperationAccepted)
async def create_template(vm_id: str, body: TemplateCreate, response: Response,
                          p: Platform = Depends(get_platform), who: Principal = Depends(principal)):
    """Flatten the stopped VM's disk into a new image that boots like the VM's image. It belongs
    to the VM's tenant and counts the VM's disk size against its quota."""
    return await _template(p, await get_vm(p, vm_id, who), body, response, who=who)


async def _template(p: Platform, vm: Vm, body: TemplateCreate, response: Response, *,
                    who: Principal) -> StorageOperationAccepted:
    require_state(vm, (VmState.STOPPED,), "make a template of")
    req = TemplateRequest(body.name, vm.id, vm.name, vm.image, body.description)
    await p.storage.check_template(req)
    hold = image_hold(body.name)
    await asyncio.to_thread(p.ledger.reserve, vm.tenant, hold, Amounts(disk_gib=vm.disk_gib))
    quota = QuotaSettlement(commit_on_success=(hold,), release_on_failure=(hold,))
    return await start_operation(p, "CreateTemplate", TemplateInput(vm.tenant, req, quota),
                                 image_operation_id(body.name, "create"), f"image/{body.name}", response,
                                 vm.tenant, reserved=hold, who=who, vm=vm)


@router.delete("/images/{name}", status_code=202, response_model=StorageOperationAccepted)
async def delete_image(name: str, response: Response, p: Platform = Depends(get_platform),
                       who: Principal = Depends(principal)):
    """Delete an image no volume is backed by (409 otherwise). A tenant deletes its own
    templates; shared images are the admins'."""
    await visible_image(p, who, name)
    owners = await template_owners(p)
    if name not in owners and not who.is_admin:
        raise Forbidden(f"image '{name}' is shared with every tenant; only an admin deletes it")
    tenant = owners.get(name, who.tenant)
    usage = await p.storage.image_usage(name)
    if usage.volumes:
        shown = ", ".join(usage.volumes[:5]) + (", ..." if len(usage.volumes) > 5 else "")
        raise Conflict(f"image '{name}' is in use by {len(usage.volumes)} volume(s): {shown}")
    quota = QuotaSettlement(release_on_success=(image_hold(name),))
    return await start_operation(p, "DeleteImage", DeleteImageInput(tenant, name, quota),
                                 image_operation_id(name, "delete"), f"image/{name}", response, tenant, who=who)
