"""GET /v1/vms/{vm_id}/console: the VM's serial console as a websocket.

What the guest writes arrives as binary frames, starting with the tail of the console's log;
what the client sends (binary or text frames) goes to the guest. The API never touches libvirt:
it asks the VM's host-worker over NATS (protocol and close codes: ``shared/console.py``), relays
both ways and keeps the session alive. Close codes: 4404 no such VM; 4409 not running, no host,
or the console is taken; 4000 ``vm_moved`` (connect again: the VM is found on its new host);
4001 ``vm_stopped``; 4002 any other end (``error: ...``); 4503 the host-worker does not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import structlog
from fastapi import APIRouter, Depends, WebSocket
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from starlette.websockets import WebSocketDisconnect, WebSocketState

from services.api.platform import Platform
from services.api.policy import principal
from shared import codec, subjects
from shared.auth import Principal
from shared.console import (
    FRAME_HEADER,
    WS_CLOSE_CONFLICT,
    WS_CLOSE_NOT_FOUND,
    WS_CLOSE_SESSION_ENDED,
    WS_CLOSE_UNAVAILABLE,
    WS_CLOSE_VM_MOVED,
    CloseReason,
    ConsoleClosed,
    ConsoleConfig,
    ConsoleOpen,
    ConsoleOpened,
    FrameKind,
    ws_close_for,
    ws_reason,
)
from shared.errors import (
    Conflict,
    HostUnavailable,
    NotFound,
    ServiceUnavailable,
    Timeout,
    VmflowError,
)
from shared.messaging import request
from shared.models import VmState

router = APIRouter(prefix="/v1/vms", tags=["vms"])
log = structlog.get_logger(__name__)

# A live migration keeps the guest running on its source until the switch-over; the console
# then ends with vm_moved and the client finds it on the destination.
_CONSOLE_STATES = (VmState.RUNNING, VmState.MIGRATING)
_DEFAULT_CONFIG = ConsoleConfig()


class ConsoleRefused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class HostConsole:
    """The API's end of one console session on a host-worker."""

    def __init__(self, nc: NatsClient, session_id: str, frames: asyncio.Queue[Msg], output: Subscription) -> None:
        self._nc = nc
        self.session_id = session_id
        self._frames = frames
        self._output = output
        self.worker_closed = False

    @classmethod
    async def open(cls, nc: NatsClient, host_id: str, vm_id: str, timeout_s: float) -> HostConsole:
        """Raises what the worker answers (NotFound, Conflict, ...), ServiceUnavailable or
        Timeout when it does not."""
        session_id = uuid.uuid4().hex
        frames: asyncio.Queue[Msg] = asyncio.Queue()
        # Subscribed before asking: the worker publishes the history before it answers.
        output = await nc.subscribe(subjects.console_output(session_id), cb=frames.put)
        try:
            await request(nc, subjects.console_open(host_id), ConsoleOpen(vm_id, session_id), ConsoleOpened,
                          timeout_s=timeout_s)
        except BaseException:
            await output.unsubscribe()
            raise
        return cls(nc, session_id, frames, output)

    async def next_frame(self, timeout_s: float) -> tuple[str, bytes]:
        """(kind, payload) of the worker's next frame; TimeoutError after ``timeout_s`` of silence."""
        msg = await asyncio.wait_for(self._frames.get(), timeout_s)
        return (msg.headers or {}).get(FRAME_HEADER, ""), msg.data

    async def send(self, kind: FrameKind, data: bytes = b"") -> None:
        await self._nc.publish(subjects.console_input(self.session_id), data, headers={FRAME_HEADER: kind.value})

    async def close(self) -> None:
        """Tell the worker the user left (unless it ended the session itself). Never raises."""
        with contextlib.suppress(Exception):
            if not self.worker_closed:
                await self.send(FrameKind.CLOSE)
            await self._output.unsubscribe()


@router.websocket("/{vm_id}/console")
async def vm_console(websocket: WebSocket, vm_id: str, who: Principal = Depends(principal)) -> None:
    """Attach to the VM's serial console (one session per VM at a time)."""
    p: Platform = websocket.app.state.platform
    config: ConsoleConfig = getattr(websocket.app.state, "console_config", _DEFAULT_CONFIG)
    await websocket.accept()  # before any close: a close before accepting reaches clients as HTTP 403
    try:
        console = await _open(p, vm_id, who.visible_tenant)
    except ConsoleRefused as refused:
        log.info("console refused", vm_id=vm_id, code=refused.code, reason=refused.reason)
        await websocket.close(refused.code, ws_reason(refused.reason))
        return
    log.info("console attached", vm_id=vm_id, session_id=console.session_id)
    try:
        ending = await _relay(websocket, console, config)
    finally:
        await console.close()
    log.info("console detached", vm_id=vm_id, session_id=console.session_id,
             code=ending[0] if ending else None, reason=ending[1] if ending else "client left")
    if ending is not None and WebSocketState.DISCONNECTED not in (websocket.client_state, websocket.application_state):
        with contextlib.suppress(Exception):  # the client may be gone already
            await websocket.close(*ending)


async def _open(p: Platform, vm_id: str, tenant: str | None) -> HostConsole:
    """A session on the VM's host, or ConsoleRefused with the close code and reason."""
    try:
        vm = await asyncio.to_thread(p.inventory.get, vm_id, tenant)
    except NotFound as exc:
        raise ConsoleRefused(WS_CLOSE_NOT_FOUND, exc.message) from None
    if vm.state not in _CONSOLE_STATES or not vm.host_id:
        raise ConsoleRefused(WS_CLOSE_CONFLICT, f"VM '{vm.name}' is {vm.state.value}: a console needs it running")
    try:
        return await HostConsole.open(p.nats, vm.host_id, vm.id, p.settings.request_timeout_s)
    except Conflict as exc:
        raise ConsoleRefused(WS_CLOSE_CONFLICT, exc.message) from None
    except NotFound:
        # The inventory still names the host the VM just left (a migration finishing).
        raise ConsoleRefused(WS_CLOSE_VM_MOVED, CloseReason.VM_MOVED.value) from None
    except (ServiceUnavailable, Timeout, HostUnavailable) as exc:
        raise ConsoleRefused(WS_CLOSE_UNAVAILABLE, f"host {vm.host_id}: {exc.message}") from None
    except VmflowError as exc:
        raise ConsoleRefused(WS_CLOSE_SESSION_ENDED, f"error: {exc.message}") from None


async def _relay(websocket: WebSocket, console: HostConsole, config: ConsoleConfig) -> tuple[int, str] | None:
    """Pump both ways until one side ends. Returns the websocket's close (code, reason), None
    when the client left."""

    async def from_user() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return None
            data = message.get("bytes") or (message.get("text") or "").encode()
            if data:
                await console.send(FrameKind.INPUT, data)

    async def to_user() -> tuple[int, str]:
        while True:
            try:
                kind, data = await console.next_frame(config.session_timeout_s)
            except TimeoutError:  # not even an answer to our keepalives
                return WS_CLOSE_SESSION_ENDED, "error: the VM's host-worker stopped answering"
            if kind in (FrameKind.HISTORY, FrameKind.OUTPUT) and data:
                await websocket.send_bytes(data)
            elif kind == FrameKind.CLOSED:
                console.worker_closed = True
                return ws_close_for(codec.decode(ConsoleClosed, data))

    async def keep_alive() -> None:
        while True:
            await console.send(FrameKind.KEEPALIVE)
            await asyncio.sleep(config.keepalive_interval_s)

    tasks = [asyncio.create_task(coro) for coro in (from_user(), to_user(), keep_alive())]
    try:
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finished = done.pop()
    error = finished.exception()
    if error is None:
        return finished.result()
    if isinstance(error, WebSocketDisconnect):  # sending to a client that left
        return None
    # NATS failing under us, most likely: tell the client if it is still there.
    log.warning("console relay failed", error=str(error), error_type=type(error).__name__)
    return WS_CLOSE_SESSION_ENDED, "error: the console relay failed"
