"""The host's serial consoles, served over NATS (the protocol is in ``shared/console.py``).

One session per VM at a time: refused here, in memory, and again by libvirt itself
(VIR_DOMAIN_CONSOLE_SAFE), which also keeps out a ``virsh console`` on the host. A session ends
when the user leaves (``close``), when its API side goes silent (no keepalive for
``session_timeout_s``), when the worker stops, or when the stream ends (the guest stopped, the
domain migrated away, a libvirt error); the worker then publishes one ``closed`` frame whose
reason tells which, and frees the console.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro import add_service
from nats.micro.service import EndpointConfig, Service, ServiceConfig

from services.host_worker.domain_xml import console_path
from shared import codec, subjects
from shared.console import (
    FRAME_HEADER,
    CloseReason,
    ConsoleClosed,
    ConsoleConfig,
    ConsoleOpen,
    ConsoleOpened,
    FrameKind,
    trim_overlap,
)
from shared.errors import Conflict, VmflowError
from shared.messaging import endpoint

log = structlog.get_logger(__name__)

# Domain states in which the guest (its QEMU, hence its console) still exists.
_ACTIVE_STATES = ("running", "paused", "shutting_down", "nostate", "suspended")
# After a stream ends, how long libvirt may take to report the domain stopped or gone.
_END_STATE_WAIT_S = 3.0
_DEFAULT_CONFIG = ConsoleConfig()


class ConsoleStream(Protocol):
    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...


class ConsoleHypervisor(Protocol):
    """What sessions need of ``Hypervisor`` (a fake stands in for it in fast tests)."""

    def open_console(self, vm_id: str, loop: asyncio.AbstractEventLoop, on_output: Callable[[bytes], None],
                     on_end: Callable[[str], None]) -> ConsoleStream: ...

    def state_and_reason(self, vm_id: str) -> tuple[str, str]: ...


@dataclass(frozen=True)
class _StreamEnded:
    message: str  # libvirt's error, "" at a plain end of stream


@dataclass(eq=False)
class _Session:
    vm_id: str
    session_id: str
    last_keepalive_s: float
    queue: asyncio.Queue[bytes | _StreamEnded] = field(default_factory=asyncio.Queue)
    stream: ConsoleStream | None = None
    inputs: Subscription | None = None
    pump: asyncio.Task[None] | None = None
    closed: bool = False


def ended_because(state: str, shutoff_reason: str) -> CloseReason | None:
    """Why a console stream ended, from the domain's state after it; None while the domain is
    still active (libvirt has not caught up yet, or only the stream failed)."""
    if state == "absent" or shutoff_reason == "migrated":
        return CloseReason.VM_MOVED
    if state not in _ACTIVE_STATES:
        return CloseReason.VM_STOPPED
    return None


def read_tail(path: Path, size: int) -> bytes:
    """The last ``size`` bytes of the file, from the start of a line where there is one; b""
    when the file does not exist (the guest never wrote)."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            offset = max(0, f.tell() - size)
            f.seek(offset)
            data = f.read(size)
    except FileNotFoundError:
        return b""
    if offset > 0 and b"\n" in data[:-1]:
        data = data[data.index(b"\n") + 1:]
    return data


class ConsoleSessions:
    """Serves ``subjects.console_open(host_id)`` and the sessions it opens."""

    def __init__(self, nc: NatsClient, hv: ConsoleHypervisor, host_id: str, console_dir: str,
                 config: ConsoleConfig = _DEFAULT_CONFIG, clock: Callable[[], float] = time.monotonic) -> None:
        self._nc = nc
        self._hv = hv
        self._host_id = host_id
        self._console_dir = console_dir
        self._config = config
        self._clock = clock
        self._by_vm: dict[str, _Session] = {}
        self._service: Service | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def open_vm_ids(self) -> set[str]:
        return set(self._by_vm)

    async def start(self) -> None:
        self._service = await add_service(self._nc, ServiceConfig(
            name=subjects.CONSOLE_SERVICE, version="0.1.0", description="vmflow serial consoles"))
        group = self._service.add_group(name=subjects.console_host_group(self._host_id))
        await group.add_endpoint(EndpointConfig(name="open", handler=endpoint(ConsoleOpen, self.open)))
        self._reaper = asyncio.create_task(self._expire_silent_sessions())
        log.info("console service ready", subject=subjects.console_open(self._host_id))

    async def stop(self) -> None:
        """Stop answering, and end every session (``worker_stopping``)."""
        if self._reaper is not None:
            self._reaper.cancel()
        if self._service is not None:
            await self._service.stop()
        for session in list(self._by_vm.values()):
            await self._close(session, ConsoleClosed(CloseReason.WORKER_STOPPING, "the host-worker stops"))
        await asyncio.gather(*self._closing, return_exceptions=True)

    async def open(self, request: ConsoleOpen) -> ConsoleOpened:
        """Open the VM's console: publish the history, then live output, on the session's output
        subject (which the caller subscribed to before asking). Raises NotFound (no such domain
        here), Conflict (not running; a session is open already), HostUnavailable,
        HypervisorError; InvalidRequest for a session id that is no subject token."""
        output = subjects.console_output(request.session_id)  # ValueError for a bad id: invalid_request
        if request.vm_id in self._by_vm:
            raise Conflict("a console session is already open for this VM")
        session = _Session(request.vm_id, request.session_id, self._clock())
        self._by_vm[request.vm_id] = session  # taken before the first await: no second open races in
        try:
            session.inputs = await self._nc.subscribe(
                subjects.console_input(request.session_id), cb=functools.partial(self._on_input, session))
            loop = asyncio.get_running_loop()
            session.stream = await asyncio.to_thread(
                self._hv.open_console, request.vm_id, loop, session.queue.put_nowait,
                lambda message: session.queue.put_nowait(_StreamEnded(message)))
            history = await asyncio.to_thread(
                read_tail, Path(console_path(self._console_dir, request.vm_id)), self._config.history_bytes)
            await self._publish(output, FrameKind.HISTORY, history)
            await asyncio.sleep(self._config.settle_s)
            early: list[bytes | _StreamEnded] = []
            while not session.queue.empty():
                early.append(session.queue.get_nowait())
            ended_at = next((i for i, item in enumerate(early) if isinstance(item, _StreamEnded)), len(early))
            live = trim_overlap(history, b"".join(early[:ended_at]))  # type: ignore[arg-type]
            if live:
                await self._publish(output, FrameKind.OUTPUT, live)
            session.last_keepalive_s = self._clock()  # the caller's first keepalive follows the answer
            session.pump = asyncio.create_task(self._pump(session, early[ended_at:]))
        except BaseException:
            await self._close(session, None)
            raise
        log.info("console session opened", vm_id=request.vm_id, session_id=request.session_id,
                 history_bytes=len(history))
        return ConsoleOpened(request.vm_id, request.session_id, self._host_id, len(history))

    async def _publish(self, subject: str, kind: FrameKind, payload: bytes = b"") -> None:
        await self._nc.publish(subject, payload, headers={FRAME_HEADER: kind.value})

    async def _pump(self, session: _Session, pending: list[bytes | _StreamEnded]) -> None:
        """Guest output to NATS, in order, until the stream ends."""
        output = subjects.console_output(session.session_id)
        while True:
            item = pending.pop(0) if pending else await session.queue.get()
            if isinstance(item, _StreamEnded):
                closed = await self._end_reason(session.vm_id, item.message)
                self._spawn_close(session, closed)
                return
            await self._publish(output, FrameKind.OUTPUT, item)

    async def _end_reason(self, vm_id: str, stream_message: str) -> ConsoleClosed:
        """Why a stream ended, as libvirt tells once the domain has settled."""
        deadline = self._clock() + _END_STATE_WAIT_S
        while True:
            try:
                state, shutoff_reason = await asyncio.to_thread(self._hv.state_and_reason, vm_id)
            except VmflowError as exc:
                return ConsoleClosed(CloseReason.ERROR, stream_message or exc.message)
            reason = ended_because(state, shutoff_reason)
            if reason is CloseReason.VM_MOVED:
                return ConsoleClosed(reason, "the VM left this host")
            if reason is not None:
                return ConsoleClosed(reason, f"the VM is {state}")
            if self._clock() >= deadline:
                return ConsoleClosed(CloseReason.ERROR, stream_message or "the console stream ended")
            await asyncio.sleep(0.1)

    async def _on_input(self, session: _Session, msg: Msg) -> None:
        kind = (msg.headers or {}).get(FRAME_HEADER)
        if session.closed:
            return
        if kind == FrameKind.INPUT and msg.data and session.stream is not None:
            try:
                await asyncio.to_thread(session.stream.write, msg.data)
            except VmflowError as exc:  # the stream's end, if that is it, arrives on its own
                log.warning("console input lost", vm_id=session.vm_id, error=exc.message)
        elif kind == FrameKind.KEEPALIVE:
            session.last_keepalive_s = self._clock()
            await self._publish(subjects.console_output(session.session_id), FrameKind.KEEPALIVE)
        elif kind == FrameKind.CLOSE:
            # Not awaited here: closing unsubscribes, which cancels the task running this callback.
            self._spawn_close(session, ConsoleClosed(CloseReason.CLIENT_CLOSED))

    async def _expire_silent_sessions(self) -> None:
        every_s = min(1.0, self._config.session_timeout_s / 4)
        while True:
            await asyncio.sleep(every_s)
            now_s = self._clock()
            for session in list(self._by_vm.values()):
                if session.pump is not None and now_s - session.last_keepalive_s > self._config.session_timeout_s:
                    await self._close(session, ConsoleClosed(
                        CloseReason.KEEPALIVE_TIMEOUT,
                        f"no keepalive for {self._config.session_timeout_s:g} s"))

    def _spawn_close(self, session: _Session, closed: ConsoleClosed) -> None:
        self._track(self._close(session, closed))

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, session: _Session, closed: ConsoleClosed | None) -> None:
        """Free the console and the session; tell the API side why (``closed``), unless the
        session never opened. Idempotent."""
        if session.closed:
            return
        session.closed = True
        if session.pump is not None and session.pump is not asyncio.current_task():
            session.pump.cancel()
        if session.stream is not None:
            await asyncio.to_thread(session.stream.close)
        # Only now, so that the next open finds libvirt's side free too.
        if self._by_vm.get(session.vm_id) is session:
            del self._by_vm[session.vm_id]
        if closed is not None:
            try:
                await self._nc.publish(subjects.console_output(session.session_id), codec.encode(closed),
                                       headers={FRAME_HEADER: FrameKind.CLOSED.value})
            except Exception as exc:  # NATS away or draining: the API side times out on its own
                log.warning("console close not announced", vm_id=session.vm_id, error=str(exc))
            log.info("console session closed", vm_id=session.vm_id, session_id=session.session_id,
                     reason=closed.describe())
        if session.inputs is not None:
            try:
                await session.inputs.unsubscribe()
            except Exception:  # closed or draining connection: the subscription is gone anyway
                pass
