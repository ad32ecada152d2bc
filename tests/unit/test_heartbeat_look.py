"""The heartbeat's look at libvirt is bounded: a libvirtd that stops answering makes the beats
say so instead of silencing them, and a hung call is never joined by a second one."""

from __future__ import annotations

import asyncio
import threading
import time

from services.host_worker.reporting import LibvirtLooker
from shared.errors import HostUnavailable


class StuckHypervisor:
    def __init__(self) -> None:
        self.answer = threading.Event()
        self.calls = 0
        self.fail = False

    def host_capacity(self) -> tuple[int, int]:
        self.calls += 1
        self.answer.wait(5)
        if self.fail:
            raise HostUnavailable("libvirt: connection refused")
        return 8, 4096

    def list_domains(self) -> list:
        return []


async def test_a_hung_call_makes_looks_not_ok_and_only_one_call_waits():
    hv = StuckHypervisor()
    looker = LibvirtLooker(hv, answer_timeout_s=0.05)
    assert (await looker.look()).ok is False
    started_s = time.monotonic()
    assert (await looker.look()).ok is False
    assert time.monotonic() - started_s < 0.04  # past the bound already: the beat goes out at once
    assert hv.calls == 1  # the second look waited on the first call, it did not start another
    hv.answer.set()
    await asyncio.sleep(0.05)
    look = await looker.look()
    assert (look.ok, look.vcpus, look.memory_mib) == (True, 8, 4096)
    assert (await looker.look()).ok and hv.calls == 2


async def test_a_failing_call_is_not_ok_and_the_next_look_asks_again():
    hv = StuckHypervisor()
    hv.answer.set()
    hv.fail = True
    looker = LibvirtLooker(hv, answer_timeout_s=1.0)
    assert (await looker.look()).ok is False
    hv.fail = False
    assert (await looker.look()).ok is True
    assert hv.calls == 2
