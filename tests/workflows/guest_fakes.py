"""Stand-ins for the activities that prepare a host for a VM's guest (networks, seed), for
workflow tests whose subject is something else: they record which host prepared or released
which VM."""

from __future__ import annotations

from temporalio import activity

from shared.guest import VmRelease, VmSetup, VmSetupRequest


class GuestHosts:
    def __init__(self) -> None:
        self.calls: list[str] = []  # "prepare:<vm_id>@<host>", "release:<vm_id>@<host>"

    def inventory_activities(self) -> list:
        @activity.defn(name="inventory.vm_setup")
        async def vm_setup(req: VmSetupRequest) -> VmSetup:
            return VmSetup(req.vm_id)

        return [vm_setup]

    def host_activities(self, host: str) -> list:
        @activity.defn(name="host.prepare_vm")
        async def prepare_vm(setup: VmSetup) -> None:
            self.calls.append(f"prepare:{setup.vm_id}@{host}")

        @activity.defn(name="host.release_vm")
        async def release_vm(release: VmRelease) -> None:
            self.calls.append(f"release:{release.vm_id}@{host}")

        return [prepare_vm, release_vm]
