"""The one error hierarchy of vmflow.

Every error carries a stable ``code`` (what API clients and workflow histories see), whether a
retry may help (``retryable``) and whether the caller caused it (``caller_fault``, which the API
maps to a 4xx). Messages are written for the person who reads them, never ``repr(exc)``.
"""

from __future__ import annotations


class VmflowError(Exception):
    code = "internal"
    retryable = False
    caller_fault = False
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(VmflowError):
    code = "invalid_request"
    caller_fault = True
    http_status = 422


class NotFound(VmflowError):
    code = "not_found"
    caller_fault = True
    http_status = 404


class Unauthenticated(VmflowError):
    """No token, or one that is malformed, unknown, expired or revoked."""

    code = "unauthenticated"
    caller_fault = True
    http_status = 401


class Forbidden(VmflowError):
    """The token's role may not do this (an object of another tenant is NotFound instead)."""

    code = "forbidden"
    caller_fault = True
    http_status = 403


class QuotaExceeded(VmflowError):
    """The tenant's quota has no room for the request; the message names each resource short."""

    code = "quota_exceeded"
    caller_fault = True
    http_status = 409


class Conflict(VmflowError):
    code = "conflict"
    caller_fault = True
    http_status = 409


class NoValidHost(VmflowError):
    """Placement found no host; the message carries the rejection trail."""

    code = "no_valid_host"
    http_status = 409


class HostUnavailable(VmflowError):
    """The host (its libvirtd) cannot be reached right now."""

    code = "host_unavailable"
    retryable = True
    http_status = 503


class HypervisorError(VmflowError):
    """libvirt refused an operation for a reason a retry will not fix."""

    code = "hypervisor_error"
    http_status = 502


class StorageError(VmflowError):
    code = "storage_error"
    http_status = 502


class NetworkError(VmflowError):
    """A host could not build or tear down a network's plumbing (bridge, VXLAN, DHCP server,
    nftables rules); the message names the command and what it said."""

    code = "network_error"
    http_status = 502


class FenceFailed(VmflowError):
    """A fence agent failed, or the host is not off after it ran."""

    code = "fence_failed"
    retryable = True
    http_status = 502


class HostsSilent(VmflowError):
    """Placement found no host while some hosts are silent for a moment (a NATS or scheduler
    restart): worth another try shortly, unlike a lack of capacity."""

    code = "hosts_silent"
    retryable = True
    http_status = 503


class Timeout(VmflowError):
    code = "timeout"
    retryable = True
    http_status = 504


class ServiceUnavailable(VmflowError):
    """A platform dependency (NATS, Temporal, a service) does not answer."""

    code = "service_unavailable"
    retryable = True
    http_status = 503


_BY_CODE: dict[str, type[VmflowError]] = {
    cls.code: cls
    for cls in (
        VmflowError,
        InvalidRequest,
        NotFound,
        Conflict,
        Unauthenticated,
        Forbidden,
        QuotaExceeded,
        NoValidHost,
        HostUnavailable,
        HypervisorError,
        StorageError,
        NetworkError,
        Timeout,
        ServiceUnavailable,
        FenceFailed,
        HostsSilent,
    )
}


def error_from_code(code: str, message: str) -> VmflowError:
    """Rebuild an error that crossed a process boundary as (code, message)."""
    return _BY_CODE.get(code, VmflowError)(message)


# Every code an activity can answer with: for retry policies that retry only a lost worker
# (timeouts Temporal itself declares), never an answer.
ERROR_CODES: tuple[str, ...] = tuple(_BY_CODE)
