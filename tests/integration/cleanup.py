"""Deleting what a test made, even when it failed midway."""

from __future__ import annotations

import time

from deploy.client import ApiError, VmflowClient


def delete_all(api: VmflowClient, vm_ids) -> None:
    """Delete them all; one still busy with an operation (a test that failed midway) is deleted
    once that is over, so nothing is left to the next test."""
    ops = []
    for vm_id in vm_ids:
        deadline_s = time.monotonic() + 300
        while True:
            try:
                ops.append(api.call("DELETE", f"/v1/vms/{vm_id}")["operation_id"])
                break
            except ApiError as exc:
                if exc.status != 409 or time.monotonic() > deadline_s:
                    break  # gone already (404), or never to be free
                time.sleep(1)
    for op in ops:
        assert api.wait_operation(op, timeout_s=300)["state"] == "succeeded"
