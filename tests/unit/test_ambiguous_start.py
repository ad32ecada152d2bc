"""A create whose workflow start failed may still have reached the server: the row goes only
when the server says the workflow does not exist, so no domain or disk is left without a row.
A real inventory (SQLite, PostgreSQL); the Temporal client stands in for the three answers it can give."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from temporalio.service import RPCError, RPCStatusCode

from services.api.db import Inventory
from services.api.models import Vm
from services.api.routes.vms import _settle_ambiguous_start
from shared.errors import ServiceUnavailable
from shared.models import VmState


class Handle:
    def __init__(self, answer) -> None:
        self._answer = answer

    async def describe(self):
        if isinstance(self._answer, Exception):
            raise self._answer
        return self._answer


def platform(engine, answer):
    inventory = Inventory(engine)
    temporal = SimpleNamespace(get_workflow_handle=lambda _id: Handle(answer))
    return SimpleNamespace(inventory=inventory, temporal=temporal)


def new_vm(p) -> Vm:
    return p.inventory.add(Vm(name="a", vcpus=1, memory_mib=128, disk_gib=1, image="lab-guest", tenant="t"))


async def test_a_start_that_reached_the_server_goes_on(engine):
    p = platform(engine, SimpleNamespace(status="RUNNING"))
    vm = new_vm(p)
    await _settle_ambiguous_start(p, vm, f"vm-{vm.id}-provision", TimeoutError("deadline exceeded"))
    assert p.inventory.get(vm.id).state is VmState.PROVISIONING


async def test_a_start_the_server_never_saw_removes_the_row(engine):
    p = platform(engine, RPCError("not found", RPCStatusCode.NOT_FOUND, b""))
    vm = new_vm(p)
    with pytest.raises(ServiceUnavailable, match="could not start the provisioning"):
        await _settle_ambiguous_start(p, vm, f"vm-{vm.id}-provision", TimeoutError("deadline exceeded"))
    assert p.inventory.find(vm.id) is None


async def test_when_nobody_can_tell_the_row_stays_in_error_for_its_owner(engine):
    p = platform(engine, RPCError("unavailable", RPCStatusCode.UNAVAILABLE, b""))
    vm = new_vm(p)
    with pytest.raises(ServiceUnavailable, match="could not confirm"):
        await _settle_ambiguous_start(p, vm, f"vm-{vm.id}-provision", TimeoutError("deadline exceeded"))
    kept = p.inventory.get(vm.id)
    assert kept.state is VmState.ERROR and "delete the VM to clean up" in kept.error
