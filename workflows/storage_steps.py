"""Typed calls to the storage activities (queue ``storage``) and to the hosts' disk activities,
with the timeouts each needs. Copies (imports, templates, full clones) heartbeat while they
run, so a storage worker that dies mid-copy is noticed in seconds, not hours."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from shared.storage_models import (
        AttachmentClaim,
        DiskAttachment,
        ImageView,
        ImportRequest,
        NameRef,
        OperationReport,
        SnapshotRequest,
        SnapshotView,
        TemplateRequest,
        VolumeCreateRequest,
        VolumeDeleteRequest,
        VolumeResizeRequest,
        VolumeView,
    )

from workflows.steps import COPY_HEARTBEAT, STORAGE_QUEUE, on_host, run_activity

_QUICK = timedelta(minutes=2)
_COPY = timedelta(hours=6)


async def _storage(name: str, arg: object, result_type: type | None = None, copy: bool = False):
    return await run_activity(STORAGE_QUEUE, name, arg, result_type, _COPY if copy else _QUICK,
                              COPY_HEARTBEAT if copy else None)


async def import_image(req: ImportRequest) -> ImageView:
    return await _storage("storage.import_image", req, ImageView, copy=True)


async def create_template(req: TemplateRequest) -> ImageView:
    return await _storage("storage.create_template", req, ImageView, copy=True)


async def delete_image(name: str) -> None:
    await _storage("storage.delete_image", NameRef(name))


async def create_data_volume(req: VolumeCreateRequest) -> VolumeView:
    return await _storage("storage.create_data_volume", req, VolumeView, copy=True)


async def resize_volume(req: VolumeResizeRequest) -> VolumeView:
    return await _storage("storage.resize_volume", req, VolumeView)


async def delete_data_volume(req: VolumeDeleteRequest) -> None:
    await _storage("storage.delete_data_volume", req)


async def claim_volume(claim: AttachmentClaim) -> VolumeView:
    return await _storage("storage.claim_volume", claim, VolumeView)


async def confirm_attachment(claim: AttachmentClaim) -> None:
    await _storage("storage.confirm_attachment", claim)


async def release_volume(claim: AttachmentClaim) -> None:
    await _storage("storage.release_volume", claim)


async def create_snapshot(req: SnapshotRequest) -> SnapshotView:
    return await _storage("storage.create_snapshot", req, SnapshotView)


async def revert_snapshot(req: SnapshotRequest) -> None:
    await _storage("storage.revert_snapshot", req)


async def delete_snapshot(req: SnapshotRequest) -> None:
    await _storage("storage.delete_snapshot", req)


async def report(outcome: OperationReport) -> None:
    await _storage("storage.report_operation", outcome)


async def attach_disk(host_id: str, req: DiskAttachment) -> str:
    return await on_host(host_id, "host.attach_disk", req, str)


async def detach_disk(host_id: str, req: DiskAttachment) -> None:
    await on_host(
        host_id, "host.detach_disk", req,
        timeout=timedelta(seconds=req.timeout_s + 30), heartbeat=timedelta(seconds=10),
    )
