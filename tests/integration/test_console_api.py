"""The console's websocket route, its CLI client and the tests' ConsoleDriver, end to end over a
real nats-server and a real uvicorn: API route -> NATS -> ConsoleSessions -> a fake hypervisor
whose "guest" is a tiny shell. The libvirt end has its own tests (test_console_stream.py)."""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import termios
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import nats
import pytest
import uvicorn
from fastapi import Depends, FastAPI
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from deploy import console_client
from deploy.client import bearer_headers
from deploy.console_driver import ConsoleDriver, console_url
from deploy.processes import free_port
from services.api.policy import authorize
from services.api.routes import console
from services.api.settings import ApiSettings
from services.host_worker.console_sessions import ConsoleSessions
from services.host_worker.domain_xml import console_path
from shared.auth import Principal, Role
from shared.console import (
    WS_CLOSE_CONFLICT,
    WS_CLOSE_NOT_FOUND,
    WS_CLOSE_UNAVAILABLE,
    WS_CLOSE_VM_MOVED,
    WS_CLOSE_VM_STOPPED,
    ConsoleConfig,
)
from shared.errors import Conflict, NotFound, Unauthenticated
from shared.models import VmState
from tests.integration.libvirt_probe import wait_until
from tests.integration.nats_server import nats_server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not shutil.which("nats-server"), reason="needs nats-server"),
]

HOST = "h1"
CONFIG = ConsoleConfig(keepalive_interval_s=0.2, session_timeout_s=1.0, settle_s=0.05)
RUN_LINE = re.compile(r'^(.*); echo "__VMFLOW"_DONE_(\w+)_\$\?$')
ADMIN_TOKEN = f"vmf_{'0' * 16}_{'A' * 43}"  # the one token this world's API knows


class FakeIdentities:
    """The API's token store, knowing one token: an admin's of tenant default."""

    def authenticate(self, text: str) -> Principal:
        if text != ADMIN_TOKEN:
            raise Unauthenticated("unknown token")
        return Principal("0" * 16, "admin", "default", Role.ADMIN)


class FakeGuest:
    """A guest's console as a shell would answer: echoes what it gets; runs ``echo ...`` lines
    and the console driver's marker."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_output: Callable[[bytes], None],
                 on_end: Callable[[str], None]) -> None:
        self._loop, self._on_output, self._on_end = loop, on_output, on_end
        self._line = b""
        self.closed = False

    def emit(self, data: bytes) -> None:
        self._loop.call_soon_threadsafe(self._on_output, data)

    def end(self) -> None:
        self._loop.call_soon_threadsafe(self._on_end, "")

    def write(self, data: bytes) -> None:
        for byte in data:
            char = bytes([byte])
            if char in b"\r\n":
                self.emit(b"\r\n")
                self._answer(self._line.decode())
                self._line = b""
            else:
                self.emit(char)  # a tty echoes
                self._line += char

    def _answer(self, line: str) -> None:
        marker = RUN_LINE.match(line)
        command = marker.group(1) if marker else line
        if command.startswith("echo "):
            self.emit(command[5:].encode() + b"\r\n")
        if marker:
            self.emit(f"__VMFLOW_DONE_{marker.group(2)}_0\r\n".encode())
        self.emit(b"# ")

    def close(self) -> None:
        self.closed = True


class FakeHypervisor:
    """Domains by VM id with their (state, shutoff reason); one console per domain, as libvirt
    with CONSOLE_SAFE."""

    def __init__(self) -> None:
        self.domains: dict[str, tuple[str, str]] = {}
        self.consoles: dict[str, FakeGuest] = {}

    def open_console(self, vm_id, loop, on_output, on_end) -> FakeGuest:
        if vm_id not in self.domains:
            raise NotFound(f"domain vm-{vm_id} is not defined on this host")
        if self.domains[vm_id][0] != "running":
            raise Conflict(f"vm-{vm_id} is not running")
        if vm_id in self.consoles and not self.consoles[vm_id].closed:
            raise Conflict("a console session is already open for this VM (libvirt)")
        self.consoles[vm_id] = FakeGuest(loop, on_output, on_end)
        return self.consoles[vm_id]

    def state_and_reason(self, vm_id: str) -> tuple[str, str]:
        return self.domains.get(vm_id, ("absent", ""))

    def migrate_away(self, vm_id: str) -> None:
        del self.domains[vm_id]
        self.consoles[vm_id].end()

    def power_off(self, vm_id: str) -> None:
        self.domains[vm_id] = ("shutoff", "destroyed")
        self.consoles[vm_id].end()


@dataclass
class Row:
    id: str
    name: str
    state: VmState
    host_id: str | None
    tenant: str = "default"


class FakeInventory:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}

    def get(self, vm_id: str, tenant: str | None = None) -> Row:
        row = self.rows.get(vm_id)
        if row is None or (tenant is not None and row.tenant != tenant):
            raise NotFound(f"no VM with id '{vm_id}'")
        return row


@dataclass
class World:
    api_url: str
    inventory: FakeInventory
    hv: FakeHypervisor
    console_dir: Path
    sessions: ConsoleSessions | None = None

    def add_vm(self, vm_id: str, state: VmState = VmState.RUNNING, host_id: str | None = HOST,
               domain: tuple[str, str] | None = ("running", ""), history: bytes = b"") -> None:
        self.inventory.rows[vm_id] = Row(vm_id, f"name-{vm_id}", state, host_id)
        if domain is not None:
            self.hv.domains[vm_id] = domain
        if history:
            Path(console_path(str(self.console_dir), vm_id)).write_bytes(history)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    console_dir = tmp_path_factory.mktemp("consoles")
    with nats_server() as nats_url:
        port = free_port()
        world = World(f"http://127.0.0.1:{port}", FakeInventory(), FakeHypervisor(), console_dir)

        @asynccontextmanager
        async def lifespan(app: FastAPI):
            nc = await nats.connect(nats_url)
            world.sessions = ConsoleSessions(nc, world.hv, HOST, str(console_dir), CONFIG)
            await world.sessions.start()
            app.state.platform = SimpleNamespace(settings=ApiSettings(request_timeout_s=2.0),
                                                 identities=FakeIdentities(),
                                                 inventory=world.inventory, nats=nc)
            app.state.console_config = CONFIG
            try:
                yield
            finally:
                await world.sessions.stop()
                await nc.close()

        app = FastAPI(lifespan=lifespan, dependencies=[Depends(authorize)])  # as the real app: a token or nothing
        app.include_router(console.router)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        thread.start()
        try:
            wait_until(lambda: server.started, 10, 0.05, "uvicorn")
            yield world
        finally:
            server.should_exit = True
            thread.join(10)


def closed_with(api_url: str, vm_id: str, token: str | None = ADMIN_TOKEN) -> tuple[int, str]:
    """Connect (with ``token``) and wait for the close: (code, reason)."""
    with connect(console_url(api_url, vm_id), open_timeout=5, additional_headers=bearer_headers(token)) as ws:
        try:
            while True:
                ws.recv(timeout=10)
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            return closed.rcvd.code, closed.rcvd.reason
    raise AssertionError("unreachable")


def test_refusals_carry_a_code_and_a_reason(world):
    assert closed_with(world.api_url, "no-such-vm") == (WS_CLOSE_NOT_FOUND, "no VM with id 'no-such-vm'")
    world.add_vm("stopped-vm", state=VmState.STOPPED, host_id=None, domain=None)
    code, reason = closed_with(world.api_url, "stopped-vm")
    assert (code, reason) == (WS_CLOSE_CONFLICT, "VM 'name-stopped-vm' is stopped: a console needs it running")
    world.add_vm("shutoff-domain", domain=("shutoff", "shutdown"))
    code, reason = closed_with(world.api_url, "shutoff-domain")
    assert code == WS_CLOSE_CONFLICT and "not running" in reason
    world.add_vm("elsewhere", domain=None)  # the inventory says h1; h1 has no such domain
    assert closed_with(world.api_url, "elsewhere") == (WS_CLOSE_VM_MOVED, "vm_moved")
    world.add_vm("no-worker", host_id="h9")
    code, reason = closed_with(world.api_url, "no-worker")
    assert code == WS_CLOSE_UNAVAILABLE and reason.startswith("host h9:")


def test_a_console_without_a_valid_token_is_refused_before_any_session(world):
    world.add_vm("vm-locked")
    code, reason = closed_with(world.api_url, "vm-locked", token=None)
    assert code == 4401 and "needs an API token" in reason
    assert closed_with(world.api_url, "vm-locked", token=f"vmf_{'1' * 16}_{'B' * 43}") == (4401, "unknown token")
    assert world.sessions.open_vm_ids == set()
    # The CLI says so, and how to log in.
    stdin_r, stdin_w = os.pipe()
    try:
        stderr = io.StringIO()
        status = console_client.attach(world.api_url, "vm-locked", "name-vm-locked", token=None, stdin_fd=stdin_r,
                                       stdout=io.BytesIO(), stderr=stderr, retries=0)
        assert status == 1
        assert "needs an API token" in stderr.getvalue() and "vmflow login" in stderr.getvalue()
    finally:
        os.close(stdin_r)
        os.close(stdin_w)


def test_driver_runs_commands_after_the_history_and_the_console_is_exclusive(world):
    world.add_vm("vm-a", history=b"booted earlier\r\n# ")
    with ConsoleDriver.for_vm(world.api_url, "vm-a", token=ADMIN_TOKEN) as driver:
        driver.expect("booted earlier", 5)
        assert driver.run("echo hello world", 5) == "hello world\n"
        assert driver.last_status == 0
        assert driver.run("true", 5) == ""
        # A second user is refused while the first one is attached.
        code, reason = closed_with(world.api_url, "vm-a")
        assert code == WS_CLOSE_CONFLICT and "already open" in reason
        # Idle for longer than the session timeout: keepalives hold it.
        time.sleep(CONFIG.session_timeout_s * 2)
        assert not driver.closed and world.sessions.open_vm_ids == {"vm-a"}
    # Leaving frees the console at once.
    wait_until(lambda: world.sessions.open_vm_ids == set(), 5, 0.05, "session freed")
    with ConsoleDriver.for_vm(world.api_url, "vm-a", token=ADMIN_TOKEN) as again:
        assert again.run("echo back", 5) == "back\n"


def test_the_socket_closes_with_the_reason_the_worker_gives(world):
    world.add_vm("vm-moves")
    with ConsoleDriver.for_vm(world.api_url, "vm-moves", token=ADMIN_TOKEN) as driver:
        driver.run("echo up", 5)
        world.hv.migrate_away("vm-moves")
        wait_until(lambda: driver.closed, 5, 0.05, "close")
        assert (driver.close_code, driver.close_reason) == (WS_CLOSE_VM_MOVED, "vm_moved")
    world.add_vm("vm-stops")
    with ConsoleDriver.for_vm(world.api_url, "vm-stops", token=ADMIN_TOKEN) as driver:
        driver.run("echo up", 5)
        world.hv.power_off("vm-stops")
        wait_until(lambda: driver.closed, 5, 0.05, "close")
        assert (driver.close_code, driver.close_reason) == (WS_CLOSE_VM_STOPPED, "vm_stopped")
    assert world.sessions.open_vm_ids == set()


def _attach_in_thread(world: World, vm_id: str, stdin_fd: int, **kwargs):
    stdout, stderr = io.BytesIO(), io.StringIO()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(console_client.attach(
        world.api_url, vm_id, f"name-{vm_id}", token=ADMIN_TOKEN, stdin_fd=stdin_fd, stdout=stdout, stderr=stderr,
        **kwargs)), daemon=True)
    thread.start()
    return thread, result, stdout, stderr


def test_cli_pipe_mode_sends_stdin_and_reconnects_when_the_vm_moves(world):
    world.add_vm("vm-cli", history=b"old output\r\n")
    read_fd, write_fd = os.pipe()
    try:
        thread, result, stdout, stderr = _attach_in_thread(world, "vm-cli", read_fd, idle_exit_s=0.5)
        wait_until(lambda: "vm-cli" in world.sessions.open_vm_ids, 5, 0.05, "attached")
        os.write(write_fd, b"echo first\n")
        wait_until(lambda: b"first\r\n# " in stdout.getvalue(), 5, 0.05, "first answer")
        world.hv.migrate_away("vm-cli")
        wait_until(lambda: "moved" in stderr.getvalue(), 5, 0.05, "reconnect notice")
        world.hv.domains["vm-cli"] = ("running", "")  # where the API finds it next
        wait_until(lambda: "vm-cli" in world.sessions.open_vm_ids, 5, 0.05, "attached again")
        os.write(write_fd, b"echo second\n")
        os.close(write_fd)
        write_fd = -1
        thread.join(10)
        assert result == [0], stderr.getvalue()
        out = stdout.getvalue()
        assert out.startswith(b"old output") and b"second\r\n" in out
        assert stderr.getvalue().startswith("Connected to name-vm-cli (escape character is ^])\n")
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def test_cli_interactive_mode_leaves_on_ctrl_bracket_and_restores_the_terminal(world):
    world.add_vm("vm-tty")
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        thread, result, stdout, stderr = _attach_in_thread(world, "vm-tty", slave)
        wait_until(lambda: "vm-tty" in world.sessions.open_vm_ids, 5, 0.05, "attached")
        assert termios.tcgetattr(slave) != before  # raw mode while attached
        os.write(master, b"echo typed\r")
        wait_until(lambda: b"typed\r\n# " in stdout.getvalue(), 5, 0.05, "answer")
        os.write(master, b"\x1d")
        thread.join(10)
        assert result == [0]
        assert termios.tcgetattr(slave) == before
        assert stderr.getvalue() == "Connected to name-vm-tty (escape character is ^])\r\n"
        wait_until(lambda: world.sessions.open_vm_ids == set(), 5, 0.05, "session freed")
    finally:
        os.close(master)
        os.close(slave)


def test_cli_reports_a_refusal_and_exits_non_zero(world):
    world.add_vm("vm-off", state=VmState.STOPPED, host_id=None, domain=None)
    read_fd, write_fd = os.pipe()
    try:
        thread, result, _stdout, stderr = _attach_in_thread(world, "vm-off", read_fd)
        thread.join(10)
        assert result == [1]
        assert "is stopped: a console needs it running" in stderr.getvalue()
    finally:
        os.close(read_fd)
        os.close(write_fd)
