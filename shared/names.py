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


# Workflow ids: built from the business key, so a retried request cannot start the same work twice.

def provision_workflow_id(vm_id: str) -> str:
    """A VM is provisioned once, ever (its id is never reused: REJECT_DUPLICATE)."""
    return f"vm-{vm_id}-provision"


def delete_workflow_id(vm_id: str) -> str:
    return f"vm-{vm_id}-delete"


def power_workflow_id(vm_id: str, action: str, op_suffix: str) -> str:
    return f"vm-{vm_id}-{action}-{op_suffix}"


def migrate_workflow_id(vm_id: str, op_suffix: str) -> str:
    return f"vm-{vm_id}-migrate-{op_suffix}"


def maintenance_workflow_id(host_id: str) -> str:
    return f"host-{host_id}-maintenance"


def image_operation_id(name: str, action: str) -> str:
    """One create and one delete per image name at a time: a second is refused by Temporal."""
    return f"image-{name}-{action}"


def volume_operation_id(name: str, action: str, suffix: str | None = None) -> str:
    return f"volume-{name}-{action}" + (f"-{suffix}" if suffix else "")


def vm_storage_operation_id(vm_id: str, action: str, suffix: str) -> str:
    return f"vm-{vm_id}-{action}-{suffix}"


def failover_workflow_id(host_id: str, epoch: int) -> str:
    """One failure of one host fails over once: the epoch is its last heartbeat's second."""
    return f"host-{host_id}-failover-{epoch}"


def restart_workflow_id(vm_id: str, key: str) -> str:
    return f"vm-{vm_id}-recover-{key}"


def stale_copy_workflow_id(vm_id: str, host_id: str) -> str:
    return f"vm-{vm_id}-stale-{host_id}"


def network_workflow_id(network_id: str, action: str) -> str:
    """One create and one delete per network, ever (network ids are never reused)."""
    return f"network-{network_id}-{action}"


def nic_workflow_id(vm_id: str, action: str, port_id: str) -> str:
    """Plugging or pulling one NIC: the port id is the business key."""
    return f"vm-{vm_id}-nic-{action}-{port_id}"


OPERATION_TENANT_MEMO = "tenant"
OPERATION_BY_ADMIN_MEMO = "by_admin"


def operation_memo(tenant: str, by_admin: bool) -> dict[str, object]:
    """The memo the API starts an operation with: whose it is (who may see it) and whether an
    admin started it (then only an admin may cancel it)."""
    return {OPERATION_TENANT_MEMO: tenant, OPERATION_BY_ADMIN_MEMO: by_admin}


def vm_id_of_operation(op_id: str) -> str | None:
    """The VM an operation id names (``vm-<uuid>-...``), if any."""
    if op_id.startswith("vm-") and len(op_id) > 39 and op_id[39] == "-":
        return op_id[3:39]
    return None
