"""NATS subject names, in one place (DESIGN.md, "Commands vs events")."""

from __future__ import annotations

EVENTS_ROOT = "vmflow.evt"
ALL_EVENTS = f"{EVENTS_ROOT}.>"

SCHEDULER_SERVICE = "vmflow-scheduler"
SCHEDULER_PREFIX = "vmflow.scheduler"
STORAGE_SERVICE = "vmflow-storage"
STORAGE_PREFIX = "vmflow.storage"
INVENTORY_SERVICE = "vmflow-inventory"  # the API's: records an operation's end without a task queue
INVENTORY_PREFIX = "vmflow.inventory"


def _token(value: str) -> str:
    # Subject tokens may not contain '.', '*', '>' or whitespace; ids never do, but be strict.
    if not value or any(ch in value for ch in ".*> \t\r\n"):
        raise ValueError(f"not a valid subject token: {value!r}")
    return value


def vm_event(tenant: str, vm_id: str, event_type: str) -> str:
    return f"{EVENTS_ROOT}.vm.{_token(tenant)}.{_token(vm_id)}.{_token(event_type)}"


HOST_ADMIN_CHANGES = "vmflow.scheduler.host_admin_changed"  # a host's mode, to every replica at once
HEARTBEATS = "vmflow.hb"  # every heartbeat, as a plain message too: the liveness fast path


def heartbeat(host_id: str) -> str:
    return f"{HEARTBEATS}.{host_id}"


def host_event(host_id: str, event_type: str) -> str:
    return f"{EVENTS_ROOT}.host.{_token(host_id)}.{_token(event_type)}"


def op_event(tenant: str, op_id: str, event_type: str) -> str:
    return f"{EVENTS_ROOT}.op.{_token(tenant)}.{_token(op_id)}.{_token(event_type)}"


def volume_event(pool: str, volume: str, event_type: str) -> str:
    return f"{EVENTS_ROOT}.volume.{_token(pool)}.{_token(volume)}.{_token(event_type)}"


# -- the interactive serial console (shared/console.py has the protocol) ------------------------

CONSOLE_SERVICE = "vmflow-console"
CONSOLE_PREFIX = "vmflow.console"


def console_host_group(host_id: str) -> str:
    """The host-worker's console endpoints, e.g. ``vmflow.console.h1``."""
    return f"{CONSOLE_PREFIX}.{_token(host_id)}"


def console_open(host_id: str) -> str:
    return f"{console_host_group(host_id)}.open"


def console_output(session_id: str) -> str:
    return f"{CONSOLE_PREFIX}.session.{_token(session_id)}.out"


def console_input(session_id: str) -> str:
    return f"{CONSOLE_PREFIX}.session.{_token(session_id)}.in"


NO_TENANT = "_fleet"  # the subject token of audit records no tenant owns (an attempt without a token)


def audit_event(tenant: str, outcome: str) -> str:
    return f"{EVENTS_ROOT}.audit.{_token(tenant)}.{_token(outcome)}"


def tenant_event_roots(tenant: str) -> tuple[str, ...]:
    """The subjects a tenant's events are published under (its VMs, operations and audit)."""
    t = _token(tenant)
    return (f"{EVENTS_ROOT}.vm.{t}.>", f"{EVENTS_ROOT}.op.{t}.>", f"{EVENTS_ROOT}.audit.{t}.>")


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: '*' one token, '>' one or more trailing tokens."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)
