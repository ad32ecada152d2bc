"""The interactive serial console's protocol between the API and a host-worker, over NATS.

1. The API subscribes to ``subjects.console_output(session_id)`` FIRST, then requests
   ``subjects.console_open(host_id)`` with a ``ConsoleOpen``; the worker answers a
   ``ConsoleOpened`` or an error (``not_found``: no such domain on this host; ``conflict``: the
   domain is not running, or a console session is open for it already, through vmflow or not).
2. On the output subject the worker publishes frames, in order: one ``history`` frame (the last
   ``history_bytes`` of the console's log file, maybe empty), then ``output`` frames as the guest
   writes, a ``keepalive`` frame in answer to each keepalive, and at the end exactly one
   ``closed`` frame whose payload is a codec-encoded ``ConsoleClosed``.
3. On the input subject the API publishes ``input`` frames (bytes for the guest), a
   ``keepalive`` frame every ``keepalive_interval_s`` and a ``close`` frame when the user leaves.
   A session without a keepalive for ``session_timeout_s`` is closed by the worker, so a
   crashed API never holds a console forever.

A frame is one NATS message: its kind in the ``Vmflow-Console`` header, guest or user bytes as
the raw payload (no encoding: a console carries arbitrary bytes).

The websocket that the API serves closes with a code from ``WS_CLOSE_*`` and a reason a client
can act on: ``WS_VM_MOVED`` (reason ``vm_moved``) means "connect again": the API then finds the
VM on its new host.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

FRAME_HEADER = "Vmflow-Console"


class FrameKind(StrEnum):
    HISTORY = "history"  # worker -> api: the tail of the console log, first frame of a session
    OUTPUT = "output"  # worker -> api: what the guest wrote
    CLOSED = "closed"  # worker -> api: the session is over; payload: ConsoleClosed
    INPUT = "input"  # api -> worker: bytes for the guest
    CLOSE = "close"  # api -> worker: the user left
    KEEPALIVE = "keepalive"  # both ways: api -> worker "still here"; worker -> api the answer


class CloseReason(StrEnum):
    VM_MOVED = "vm_moved"  # the domain left this host (migrated, or undefined): reconnect
    VM_STOPPED = "vm_stopped"  # the guest stopped
    KEEPALIVE_TIMEOUT = "keepalive_timeout"  # the API side went silent
    CLIENT_CLOSED = "client_closed"  # the API side sent ``close``
    WORKER_STOPPING = "worker_stopping"  # the host-worker shuts down
    ERROR = "error"  # the stream failed (libvirt error); ``message`` says how


@dataclass(frozen=True)
class ConsoleOpen:
    vm_id: str
    session_id: str


@dataclass(frozen=True)
class ConsoleOpened:
    vm_id: str
    session_id: str
    host_id: str
    history_bytes: int  # the size of the history frame that was published before this answer


@dataclass(frozen=True)
class ConsoleClosed:
    reason: CloseReason
    message: str = ""

    def describe(self) -> str:
        """``vm_moved``, ``vm_stopped``, ``error: <message>``: what a websocket close reason says."""
        if self.reason is CloseReason.ERROR:
            return f"error: {self.message}" if self.message else "error"
        return self.reason.value


@dataclass(frozen=True)
class ConsoleConfig:
    keepalive_interval_s: float = 5.0  # how often the API side says it is still there
    session_timeout_s: float = 15.0  # silence after which either side gives the session up
    history_bytes: int = 4096  # how much of the console log a new session gets first
    # After reading the log, how long live output is held back before it is compared with the
    # log's tail: QEMU logs a byte before libvirt relays it, so what the stream brings in the
    # first moments may be in the history already.
    settle_s: float = 0.1


# Websocket close codes of GET /v1/vms/{id}/console (4000-4999: the application's own).
WS_CLOSE_NORMAL = 1000
WS_CLOSE_VM_MOVED = 4000  # reason "vm_moved": connect again
WS_CLOSE_VM_STOPPED = 4001  # reason "vm_stopped"
WS_CLOSE_SESSION_ENDED = 4002  # any other end; the reason says why ("error: ...", ...)
WS_CLOSE_UNAUTHENTICATED = 4401  # no valid API token on the handshake
WS_CLOSE_FORBIDDEN = 4403  # the token's role may not open a console
WS_CLOSE_NOT_FOUND = 4404  # no such VM
WS_CLOSE_CONFLICT = 4409  # the VM is not running, has no host, or its console is taken
WS_CLOSE_UNAVAILABLE = 4503  # the VM's host-worker does not answer
_REASON_MAX_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes


def ws_close_for(closed: ConsoleClosed) -> tuple[int, str]:
    """The websocket close (code, reason) for a session the worker ended."""
    code = {
        CloseReason.VM_MOVED: WS_CLOSE_VM_MOVED,
        CloseReason.VM_STOPPED: WS_CLOSE_VM_STOPPED,
    }.get(closed.reason, WS_CLOSE_SESSION_ENDED)
    return code, ws_reason(closed.describe())


def ws_reason(text: str) -> str:
    """``text`` cut to what a websocket close frame can carry, on a character boundary."""
    data = text.encode()
    if len(data) <= _REASON_MAX_BYTES:
        return text
    return data[: _REASON_MAX_BYTES - 3].decode(errors="ignore") + "..."


def trim_overlap(history: bytes, live: bytes) -> bytes:
    """``live`` without its longest beginning that ``history`` already ends with: the bytes
    both the log file and the freshly opened stream carried."""
    for size in range(min(len(history), len(live)), 0, -1):
        if history.endswith(live[:size]):
            return live[size:]
    return live
