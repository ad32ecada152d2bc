"""/v1/images: the image catalog; importing image files, templates made from a stopped VM's
disk (also ``POST /v1/vms/{id}/template``), deleting images no volume uses."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from services.api.models import Vm
from services.api.platform import Platform, get_platform
from services.api.storage_models import (
    ImageCreate,
    ImagePublic,
    StorageOperationAccepted,
    TemplateCreate,
    get_vm,
    require_state,
    start_operation,
)
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.models import VmState
from shared.names import image_operation_id
from shared.storage_models import (
    DeleteImageInput,
    ImportImageInput,
    ImportRequest,
    TemplateInput,
    TemplateRequest,
)

router = APIRouter(prefix="/v1", tags=["storage"])


@router.get("/images", response_model=list[ImagePublic])
async def list_images(p: Platform = Depends(get_platform)):
    return [ImagePublic.of(v) for v in (await p.storage.image_views()).images]


@router.get("/images/{name}", response_model=ImagePublic)
async def get_image(name: str, p: Platform = Depends(get_platform)):
    return ImagePublic.of(await p.storage.image_view(name))


@router.post("/images", status_code=202, response_model=StorageOperationAccepted)
async def create_image(body: ImageCreate, response: Response, p: Platform = Depends(get_platform)):
    """Import an image file, or make a template of a stopped VM (``from_vm``). The file is checked
    with qemu-img before anything is copied: its real format must be the one given, it may not
    have a backing file, and sizes are limited. Images are stored as qcow2."""
    if body.from_vm is not None:
        try:
            vm = await get_vm(p, body.from_vm)
        except NotFound:
            raise InvalidRequest(f"from_vm: no VM with id '{body.from_vm}'") from None
        return await _template(p, vm, TemplateCreate(name=body.name, description=body.description), response)
    assert body.source_path is not None and body.format is not None  # the model checked it
    req = ImportRequest(
        name=body.name, source_path=body.source_path, format=body.format, description=body.description,
        min_memory_mib=body.min_memory_mib, min_disk_gib=body.min_disk_gib, kernel_path=body.kernel_path,
        initrd_path=body.initrd_path, cmdline=body.cmdline, boot_marker=body.boot_marker,
    )
    await p.storage.check_import(req)
    return await start_operation(p, "ImportImage", ImportImageInput(p.settings.default_tenant, req),
                                 image_operation_id(body.name, "create"), f"image/{body.name}", response)


@router.post("/vms/{vm_id}/template", status_code=202, response_model=StorageOperationAccepted)
async def create_template(vm_id: str, body: TemplateCreate, response: Response,
                          p: Platform = Depends(get_platform)):
    """Flatten the stopped VM's disk into a new image that boots like the VM's image."""
    return await _template(p, await get_vm(p, vm_id), body, response)


async def _template(p: Platform, vm: Vm, body: TemplateCreate, response: Response) -> StorageOperationAccepted:
    require_state(vm, (VmState.STOPPED,), "make a template of")
    req = TemplateRequest(body.name, vm.id, vm.name, vm.image, body.description)
    await p.storage.check_template(req)
    return await start_operation(p, "CreateTemplate", TemplateInput(p.settings.default_tenant, req),
                                 image_operation_id(body.name, "create"), f"image/{body.name}", response)


@router.delete("/images/{name}", status_code=202, response_model=StorageOperationAccepted)
async def delete_image(name: str, response: Response, p: Platform = Depends(get_platform)):
    """Delete an image no volume is backed by (409 otherwise)."""
    usage = await p.storage.image_usage(name)
    if usage.volumes:
        shown = ", ".join(usage.volumes[:5]) + (", ..." if len(usage.volumes) > 5 else "")
        raise Conflict(f"image '{name}' is in use by {len(usage.volumes)} volume(s): {shown}")
    return await start_operation(p, "DeleteImage", DeleteImageInput(p.settings.default_tenant, name),
                                 image_operation_id(name, "delete"), f"image/{name}", response)
