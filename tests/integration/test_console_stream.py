"""The host-worker's end of the interactive console: ``Hypervisor.open_console`` and
``ConsoleSessions`` against one lab host's libvirtd and a real nats-server, speaking the protocol
of ``shared/console.py`` as the API does. No Temporal, no API: the whole stack is not needed.

Works with either lab guest: the counter guest prints ``vmflow-counter N`` every second on
ttyS0 and ignores input; the interactive one runs a shell there, in which the tests start a
background loop printing the same lines (its own counter goes to ttyS1). The input test runs
only with the interactive guest. VMFLOW_CONSOLE_TEST_IMAGE names another image directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest

from deploy import lab
from services.host_worker.console_sessions import ConsoleSessions
from services.host_worker.domain_xml import build_domain_xml, console_path
from services.host_worker.hypervisor import Hypervisor
from shared import codec, subjects
from shared.console import (
    FRAME_HEADER,
    CloseReason,
    ConsoleClosed,
    ConsoleConfig,
    ConsoleOpen,
    ConsoleOpened,
    FrameKind,
)
from shared.errors import Conflict, NotFound
from shared.messaging import request
from shared.models import BootSpec, DomainSpec
from tests.integration.libvirt_probe import wait_until
from tests.integration.nats_server import nats_server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or not all(shutil.which(p) for p in ("ip", "tini", "libvirtd", "nats-server", "qemu-img")),
        reason="needs root, iproute2, tini, libvirtd, qemu-img and nats-server",
    ),
]

IMAGE_DIR = Path(os.environ.get("VMFLOW_CONSOLE_TEST_IMAGE",
                                Path.home() / ".cache" / "vmflow" / "images" / "lab-guest"))
LAB_NAME = f"vcon{os.getpid() % 100000}"
HOST = "h1"
COUNTER = re.compile(rb"vmflow-counter (\d+)")
PROMPT = re.compile(rb"# ")
# Typed into an interactive guest's shell: the counter guest's lines, on the console. Its echo
# ("vmflow-counter $i") does not match COUNTER.
CHATTER = b'(i=0; while :; do i=$((i+1)); echo "vmflow-counter $i"; sleep 1; done) &\n'
CONFIG = ConsoleConfig(session_timeout_s=1.5, settle_s=0.1)


@dataclass(frozen=True)
class LabSide:
    host: lab.LabHost
    hv: Hypervisor
    peer: lab.LabHost  # a second host, to migrate to
    peer_hv: Hypervisor
    files: Path  # kernel, initrd, disks and console logs: shared with the lab host
    boot: BootSpec
    interactive: bool  # the guest runs a shell on ttyS0


@pytest.fixture(scope="module")
def side() -> Iterator[LabSide]:
    if not (IMAGE_DIR / "image.json").exists():
        pytest.skip(f"no lab guest image in {IMAGE_DIR} (vmflow up builds it)")
    root = Path(tempfile.mkdtemp(prefix="vmflow-console-"))
    files = root / "files"
    try:
        files.mkdir()
        image = json.loads((IMAGE_DIR / "image.json").read_text())
        # Copies: the image may be rebuilt while this runs.
        for name in (image["kernel"], image["initrd"], image["disk"]):
            shutil.copy2(IMAGE_DIR / name, files / name)
        boot = BootSpec(str(files / image["kernel"]), str(files / image["initrd"]), image["cmdline"])
        the_lab = lab.start_lab(LAB_NAME, root / "lab", 2, shared_dirs=[files])
        for host in the_lab.hosts:
            # libvirt locks a console's pty under /var/lock (-> /run/lock), which every real
            # host has; a lab host's /run is private and starts empty.
            (host.root_dir / "run" / "lock").mkdir(exist_ok=True)
        host, peer = the_lab.hosts
        hv, peer_hv = Hypervisor(host.unix_uri), Hypervisor(peer.unix_uri)
        try:
            yield LabSide(host, hv, peer, peer_hv, files, boot, "shell" in image.get("description", ""))
        finally:
            hv.close()
            peer_hv.close()
    finally:
        lab.stop_lab(LAB_NAME, root / "lab")
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def running_guest(side: LabSide, wait_counter: int = 2) -> Iterator[str]:
    """A started guest on a qcow2 overlay; undefined afterwards. Yields its VM id once its console
    log shows ``wait_counter`` counter lines (or its boot, for an interactive guest)."""
    vm_id = str(uuid.uuid4())
    disk = side.files / f"{vm_id}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                    "-b", str(side.files / "disk.qcow2"), str(disk)], check=True)
    spec = DomainSpec(vm_id=vm_id, vm_name=f"con-{vm_id[:6]}", tenant="console-test", vcpus=1,
                      memory_mib=128, disk_path=str(disk), domain_type="qemu", boot=side.boot)
    log = Path(console_path(str(side.files), vm_id))
    try:
        side.hv.define(build_domain_xml(spec, str(side.files)))
        side.hv.start(vm_id)
        if side.interactive:
            start_chatter(side, vm_id, log)
        wait_until(lambda: log.exists() and len(COUNTER.findall(log.read_bytes())) >= wait_counter,
                   60, 0.1, f"{wait_counter} counter lines")
        yield vm_id
    finally:
        side.hv.undefine(vm_id)
        side.peer_hv.undefine(vm_id)
        disk.unlink(missing_ok=True)


def start_chatter(side: LabSide, vm_id: str, log: Path) -> None:
    """Once the shell prompts, type the counter loop into it (straight through libvirt)."""
    def prompted() -> bool:
        text = log.read_bytes() if log.exists() else b""
        return b"VMFLOW-GUEST-BOOTED" in text and bool(PROMPT.search(text, text.index(b"VMFLOW-GUEST-BOOTED")))

    wait_until(prompted, 60, 0.1, "the shell's prompt")
    stream = side.hv.open_console(vm_id, asyncio.get_running_loop(), lambda _data: None, lambda _message: None)
    try:
        stream.write(CHATTER)
        wait_until(lambda: COUNTER.search(log.read_bytes()), 10, 0.1, "the loop's first line")
    finally:
        stream.close()


@pytest.fixture(scope="module")
async def guest(side) -> Iterator[str]:
    """A guest the tests that leave it running share (each boot costs seconds under TCG)."""
    with running_guest(side, wait_counter=3) as vm_id:
        yield vm_id


@pytest.fixture(scope="module")
async def nc(side):
    with nats_server() as url:
        client = await nats.connect(url)
        try:
            yield client
        finally:
            await client.close()


@pytest.fixture
async def sessions(side, nc):
    service = ConsoleSessions(nc, side.hv, HOST, str(side.files), CONFIG)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


class ApiSide:
    """One console session as the API holds it: frames in arrival order."""

    def __init__(self, nc, host_id: str = HOST) -> None:
        self.nc = nc
        self.host_id = host_id
        self.session_id = uuid.uuid4().hex
        self.frames: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._sub = None
        self._keepalives: asyncio.Task | None = None

    async def open(self, vm_id: str, keepalives: bool = True) -> ConsoleOpened:
        """Subscribe, then ask (the order the protocol needs); keep the session alive as the
        API does, every 0.4 s, unless told not to."""
        async def collect(msg) -> None:
            await self.frames.put(((msg.headers or {}).get(FRAME_HEADER, ""), msg.data))

        self._sub = await self.nc.subscribe(subjects.console_output(self.session_id), cb=collect)
        try:
            opened = await request(self.nc, subjects.console_open(self.host_id), ConsoleOpen(vm_id, self.session_id),
                                   ConsoleOpened, timeout_s=10)
        except BaseException:
            await self._sub.unsubscribe()
            raise
        if keepalives:
            self._keepalives = asyncio.create_task(self._keep_alive())
        return opened

    async def _keep_alive(self) -> None:
        while True:
            await self.send(FrameKind.KEEPALIVE)
            await asyncio.sleep(0.4)

    async def send(self, kind: FrameKind, data: bytes = b"") -> None:
        await self.nc.publish(subjects.console_input(self.session_id), data, headers={FRAME_HEADER: kind.value})

    async def next_frame(self, timeout_s: float = 10.0) -> tuple[str, bytes]:
        return await asyncio.wait_for(self.frames.get(), timeout_s)

    async def output_until(self, pattern: re.Pattern[bytes], timeout_s: float) -> bytes:
        """Output (and history) until ``pattern`` appears in it; fails on a closed frame."""
        seen = b""
        deadline = time.monotonic() + timeout_s
        while not pattern.search(seen):
            kind, data = await self.next_frame(max(0.01, deadline - time.monotonic()))
            if kind == FrameKind.KEEPALIVE:
                continue
            assert kind != FrameKind.CLOSED, f"closed early: {codec.decode(ConsoleClosed, data)}"
            if kind in (FrameKind.HISTORY, FrameKind.OUTPUT):
                seen += data
        return seen

    async def closed(self, timeout_s: float) -> ConsoleClosed:
        """The closed frame, skipping any output before it."""
        deadline = time.monotonic() + timeout_s
        while True:
            kind, data = await self.next_frame(max(0.01, deadline - time.monotonic()))
            if kind == FrameKind.CLOSED:
                return codec.decode(ConsoleClosed, data)

    async def stop(self) -> None:
        if self._keepalives is not None:
            self._keepalives.cancel()
        if self._sub is not None:
            await self._sub.unsubscribe()


async def test_history_comes_first_then_live_output_without_gap_or_repeat(guest, nc, sessions):
    vm_id = guest
    api = ApiSide(nc)
    opened = await api.open(vm_id)
    assert (opened.vm_id, opened.host_id) == (vm_id, HOST)
    kind, history = await api.next_frame()
    assert kind == FrameKind.HISTORY
    assert len(history) == opened.history_bytes and 0 < len(history) <= CONFIG.history_bytes
    before = [int(n) for n in COUNTER.findall(history)]
    assert len(before) >= 3, history
    last = before[-1]
    seen = history + await api.output_until(re.compile(rb"vmflow-counter %d\r?\n" % (last + 3)), 15)
    counters = [int(n) for n in COUNTER.findall(seen)]
    # The log's tail and the stream join up: every counter once, in order.
    assert counters == list(range(counters[0], last + 4)), seen[-600:]
    await api.send(FrameKind.CLOSE)
    assert (await api.closed(5)).reason is CloseReason.CLIENT_CLOSED
    await api.stop()
    assert sessions.open_vm_ids == set()


async def test_one_session_per_vm_in_memory_and_in_libvirt(side, guest, nc, sessions):
    vm_id = guest
    first = ApiSide(nc)
    await first.open(vm_id)
    second = ApiSide(nc)
    with pytest.raises(Conflict, match="already open"):
        await second.open(vm_id)
    # libvirt refuses too (CONSOLE_SAFE), whoever asks: here the host's own adapter.
    loop = asyncio.get_running_loop()
    with pytest.raises(Conflict, match="already open"):
        await asyncio.to_thread(side.hv.open_console, vm_id, loop, lambda _d: None, lambda _m: None)
    await first.send(FrameKind.CLOSE)
    await first.closed(5)
    await first.stop()
    # Once closed, the console is free for the next session, in the worker and in libvirt.
    third = ApiSide(nc)
    await third.open(vm_id)
    await third.output_until(COUNTER, 5)
    await third.send(FrameKind.CLOSE)
    await third.closed(5)
    await third.stop()


async def test_keepalives_hold_a_session_and_their_absence_frees_it(guest, nc, sessions):
    vm_id = guest
    api = ApiSide(nc)
    await api.open(vm_id, keepalives=False)
    answers = 0
    for _ in range(8):  # 2.4 s of keepalives, longer than the 1.5 s timeout
        await api.send(FrameKind.KEEPALIVE)
        await asyncio.sleep(0.3)
    while not api.frames.empty():
        kind, _data = api.frames.get_nowait()
        assert kind != FrameKind.CLOSED
        answers += kind == FrameKind.KEEPALIVE
    assert answers >= 7  # the worker answers each one, so the API can tell it is alive
    assert sessions.open_vm_ids == {vm_id}
    started = time.monotonic()
    closed = await api.closed(CONFIG.session_timeout_s + 3)
    assert closed.reason is CloseReason.KEEPALIVE_TIMEOUT
    assert time.monotonic() - started >= CONFIG.session_timeout_s - 0.5
    await api.stop()
    assert sessions.open_vm_ids == set()
    again = ApiSide(nc)
    await again.open(vm_id)  # libvirt let go of it too
    await again.send(FrameKind.CLOSE)
    await again.closed(5)
    await again.stop()


async def test_the_guest_stopping_closes_the_session_with_a_reason(side, nc, sessions):
    with running_guest(side) as vm_id:
        api = ApiSide(nc)
        await api.open(vm_id)
        await api.output_until(COUNTER, 5)
        await asyncio.to_thread(side.hv.destroy, vm_id)
        closed = await api.closed(10)
        assert closed.reason is CloseReason.VM_STOPPED, closed
        await api.stop()
        assert sessions.open_vm_ids == set()
        with pytest.raises(Conflict, match="not running"):
            await ApiSide(nc).open(vm_id)
    with pytest.raises(NotFound):
        await ApiSide(nc).open(str(uuid.uuid4()))


async def test_input_reaches_the_guest_shell(side, guest, nc, sessions):
    if not side.interactive:
        pytest.skip("the lab guest image runs no shell on ttyS0 yet")
    vm_id = guest
    api = ApiSide(nc)
    await api.open(vm_id)
    await api.send(FrameKind.INPUT, b'echo "con""sole-$((6*7))"\n')
    await api.output_until(re.compile(rb"console-42"), 10)
    await api.send(FrameKind.CLOSE)
    await api.closed(5)
    await api.stop()


async def test_a_live_migration_closes_the_session_as_vm_moved_and_the_new_host_serves_it(side, nc, sessions):
    peer_sessions = ConsoleSessions(nc, side.peer_hv, side.peer.host_id, str(side.files), CONFIG)
    await peer_sessions.start()
    try:
        with running_guest(side) as vm_id:
            api = ApiSide(nc)
            await api.open(vm_id)
            await api.output_until(COUNTER, 5)
            await asyncio.to_thread(side.hv.migrate_live, vm_id, side.peer.tcp_uri)
            closed = await api.closed(10)
            assert closed.reason is CloseReason.VM_MOVED, closed
            await api.stop()
            assert sessions.open_vm_ids == set()
            # What a reconnecting client does once the inventory names the new host.
            moved = ApiSide(nc, side.peer.host_id)
            await moved.open(vm_id)
            kind, history = await moved.next_frame()
            assert kind == FrameKind.HISTORY and COUNTER.search(history)
            last = int(COUNTER.findall(history)[-1])
            await moved.output_until(re.compile(rb"vmflow-counter %d\r?\n" % (last + 1)), 10)
            await moved.send(FrameKind.CLOSE)
            await moved.closed(5)
            await moved.stop()
    finally:
        await peer_sessions.stop()
