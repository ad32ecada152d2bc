"""How GET /v1/operations finds operations: its filters, checked and turned into a Temporal
visibility query over the operations' search attributes, and the link to an operation's page in
the Temporal UI. Pure.

Each value is checked against a strict pattern before it joins the query, so a filter compares
one attribute with one plain value, never more.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from temporalio.client import WorkflowExecutionStatus

from services.api.tenancy_models import TENANT_PATTERN, TENANT_RULE
from shared.errors import InvalidRequest
from shared.operation_tags import HOST_IDS, KIND, TENANT, VM_ID

# An operation's state as the API names it, from its workflow's status.
OPERATION_STATES = {
    WorkflowExecutionStatus.RUNNING: "running",
    WorkflowExecutionStatus.COMPLETED: "succeeded",
    WorkflowExecutionStatus.FAILED: "failed",
    WorkflowExecutionStatus.CANCELED: "cancelled",
    WorkflowExecutionStatus.TERMINATED: "terminated",
    WorkflowExecutionStatus.TIMED_OUT: "timed_out",
    WorkflowExecutionStatus.CONTINUED_AS_NEW: "running",
}
# A state filter matches the one status of that state a current run can have.
_STATE_STATUS = {state: status for status, state in OPERATION_STATES.items()
                 if status is not WorkflowExecutionStatus.CONTINUED_AS_NEW}

_VM_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_HOST_ID = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
_KIND = re.compile(r"^[A-Z][A-Za-z0-9]{0,63}$")


@dataclass(frozen=True)
class OperationFilter:
    """What a listing asks for; None: any."""

    vm_id: str | None = None
    host_id: str | None = None  # one of the hosts the operation touched
    tenant: str | None = None
    kind: str | None = None  # the workflow type: ProvisionVm, LiveMigrate, HostMaintenance, ...
    state: str | None = None  # running, succeeded, failed, cancelled, terminated, timed_out


def visibility_query(wanted: OperationFilter, seen_tenant: str | None) -> str | None:
    """The query for ``wanted`` (its filters ANDed; "" for none) as a caller who sees only
    ``seen_tenant``'s operations (None: an admin, who sees all) may ask it: such a caller's
    query always names its tenant, and None comes back when it asks for another tenant's
    (nothing it may see matches). Raises InvalidRequest naming every malformed value."""
    problems = _problems(wanted)
    if problems:
        raise InvalidRequest("; ".join(problems))
    tenant = wanted.tenant
    if seen_tenant is not None:
        if tenant not in (None, seen_tenant):
            return None
        tenant = seen_tenant
    clauses = [f"{key} = '{value}'" for key, value in (
        (VM_ID.name, wanted.vm_id), (HOST_IDS.name, wanted.host_id), (TENANT.name, tenant), (KIND.name, wanted.kind),
        ("ExecutionStatus", _status_name(_STATE_STATUS[wanted.state]) if wanted.state else None),
    ) if value is not None]
    return " AND ".join(clauses)


def _problems(wanted: OperationFilter) -> list[str]:
    checks = (
        ("vm_id", wanted.vm_id, _VM_ID, "a VM id (a lower-case UUID)"),
        ("host_id", wanted.host_id, _HOST_ID, "a host id: 1-63 letters, digits, '.', '_' or '-'"),
        ("tenant", wanted.tenant, TENANT_PATTERN, TENANT_RULE),
        ("kind", wanted.kind, _KIND, "a workflow type such as ProvisionVm or LiveMigrate"),
    )
    problems = [f"{name}: must be {rule}" for name, value, pattern, rule in checks
                if value is not None and not pattern.fullmatch(value)]
    if wanted.state is not None and wanted.state not in _STATE_STATUS:
        problems.append(f"state: one of {', '.join(_STATE_STATUS)}")
    return problems


def _status_name(status: WorkflowExecutionStatus) -> str:
    """As visibility queries spell it: TIMED_OUT -> TimedOut."""
    return "".join(word.capitalize() for word in status.name.split("_"))


def temporal_url(ui_url: str | None, namespace: str, workflow_id: str) -> str | None:
    """The workflow's page in the Temporal UI at ``ui_url``; None when there is no UI to link."""
    if not ui_url:
        return None
    return f"{ui_url.rstrip('/')}/namespaces/{quote(namespace, safe='')}/workflows/{quote(workflow_id, safe='')}"
