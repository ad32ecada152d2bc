"""What an operation is about, where the Temporal UI and the API can search for it: the VM, every
host it touched, the tenant it is for and its kind (the workflow type), as search attributes;
and a one-line summary for people.

An operation that touches a host later (provisioning picks one, a migration its destination)
adds it from inside the workflow (``hosts_with``), so ``VmflowHostIds = 'h2'`` finds everything
that touched h2. Pure; safe to import inside workflows (temporalio.common and stdlib only).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
)

VM_ID = SearchAttributeKey.for_keyword("VmflowVmId")
HOST_IDS = SearchAttributeKey.for_keyword_list("VmflowHostIds")
TENANT = SearchAttributeKey.for_keyword("VmflowTenant")
KIND = SearchAttributeKey.for_keyword("VmflowKind")
SEARCH_ATTRIBUTES: tuple[SearchAttributeKey, ...] = (VM_ID, HOST_IDS, TENANT, KIND)

# The summary rides in the memo too: a listing returns memos, not summaries.
SUMMARY_MEMO = "summary"
# An ended operation's last progress (an OperationProgress): read without a worker replaying it.
PROGRESS_MEMO = "progress"
SUMMARY_MAX_CHARS = 200


def operation_search_attributes(kind: str, vm_id: str | None = None, host_ids: Iterable[str | None] = (),
                                tenant: str | None = None) -> TypedSearchAttributes:
    """The attributes an operation starts with; unknown ones (None, empty) are left out."""
    pairs: list[SearchAttributePair[Any]] = [SearchAttributePair(KIND, kind)]
    if vm_id:
        pairs.append(SearchAttributePair(VM_ID, vm_id))
    hosts = hosts_with((), *host_ids)
    if hosts:
        pairs.append(SearchAttributePair(HOST_IDS, hosts))
    if tenant:
        pairs.append(SearchAttributePair(TENANT, tenant))
    return TypedSearchAttributes(pairs)


def hosts_with(hosts: Sequence[str], *more: str | None) -> list[str]:
    """``hosts`` and then each of ``more`` not among them yet, in order; None and empty skipped."""
    result = list(hosts)
    for host_id in more:
        if host_id and host_id not in result:
            result.append(host_id)
    return result


def operation_summary(action: str, subject: str = "", where: str = "", tenant: str | None = None) -> str:
    """One line, e.g. ``provision web-1 for acme``, ``live-migrate web-1 h1 -> h3``,
    ``maintenance of h2``; at most SUMMARY_MAX_CHARS characters."""
    line = " ".join(part for part in (action, subject, where) if part)
    if tenant:
        line += f" for {tenant}"
    return line if len(line) <= SUMMARY_MAX_CHARS else line[:SUMMARY_MAX_CHARS - 1] + "…"


def vm_label(name: str | None, vm_id: str) -> str:
    """How a summary names a VM: its name, else ``vm`` and the start of its id."""
    return name or f"vm {vm_id[:8]}"


def move_route(source: str | None, target: str | None) -> str:
    """A move in a summary: ``h1 -> h3``; ``off h1`` while the target is still to be picked."""
    if source and target:
        return f"{source} -> {target}"
    return f"to {target}" if target else (f"off {source}" if source else "")


def kind_action(kind: str) -> str:
    """A workflow type as words for a summary: ``AttachVolume`` -> ``attach volume``."""
    return " ".join(word.lower() for word in re.findall(r"[A-Z][a-z0-9]*", kind)) or kind


def tagged(kind: str, summary: str, *, vm_id: str | None = None, host_ids: Iterable[str | None] = (),
           tenant: str | None = None, memo: Mapping[str, object] | None = None) -> dict[str, Any]:
    """The keyword arguments of ``start_workflow`` (and ``start_child_workflow``) that tag an
    operation: its search attributes, its static summary, and ``memo`` with the summary added."""
    return {
        "search_attributes": operation_search_attributes(kind, vm_id, host_ids, tenant),
        "static_summary": summary,
        "memo": {**(memo or {}), SUMMARY_MEMO: summary},
    }
