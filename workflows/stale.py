"""RemoveStaleCopy: a host holds a definition of a VM that lives elsewhere now (it was fenced and
its VMs restarted on other hosts), or of a VM that was deleted meanwhile. Destroy and undefine it
there, keeping the disk and console the living copy uses."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from shared.failover import StaleCopy

from workflows import steps


@workflow.defn(name="RemoveStaleCopy")
class RemoveStaleCopy:
    @workflow.run
    async def run(self, stale: StaleCopy) -> str:
        await steps.evict_domain(stale.host_id, stale.vm_id)
        return f"stale copy of {stale.vm_id} removed from {stale.host_id}"
