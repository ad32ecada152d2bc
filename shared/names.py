"""Names the API, the workflows and the workers share: task queues and workflow ids.

Pure; safe to import inside workflows.
"""

from __future__ import annotations

ORCHESTRATOR_QUEUE = "orchestrator"
STORAGE_QUEUE = "storage"
INVENTORY_QUEUE = "inventory"
FENCING_QUEUE = "fencing"  # served by the fencer, which never runs on the hosts it fences


def host_queue(host_id: str) -> str:
    return f"host.{host_id}"


def failover_workflow_id(host_id: str, epoch: int) -> str:
    """One failure of one host fails over once: the epoch is its last heartbeat's second."""
    return f"host-{host_id}-failover-{epoch}"


def restart_workflow_id(vm_id: str, key: str) -> str:
    return f"vm-{vm_id}-recover-{key}"


def stale_copy_workflow_id(vm_id: str, host_id: str) -> str:
    return f"vm-{vm_id}-stale-{host_id}"
