"""Typed calls to the network activities: the inventory's (ports, setups) and each host's
(plumbing, seeds, NIC hot-plug)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from shared.guest import NicChange, NicRef, VmRelease, VmSetup, VmSetupRequest
    from shared.networks import HostIds, NetworkOpInput, PortAttached

from workflows.steps import INVENTORY_QUEUE, on_host, run_activity

_DETACH = timedelta(seconds=60)  # a running guest must let go of a NIC it is using
_UNREACHED_HOST = timedelta(seconds=10)  # a down host reconciles its plumbing when it is back


async def vm_setup(vm_id: str) -> VmSetup:
    return await run_activity(INVENTORY_QUEUE, "inventory.vm_setup", VmSetupRequest(vm_id), VmSetup)


async def prepare_host(host_id: str, setup: VmSetup) -> None:
    """The VM's networks and seed in place on the host; idempotent."""
    await on_host(host_id, "host.prepare_vm", setup)


async def release_host(host_id: str, release: VmRelease) -> None:
    await on_host(host_id, "host.release_vm", release)


async def attach_nic(host_id: str, change: NicChange) -> None:
    await on_host(host_id, "host.attach_nic", change)


async def detach_nic(host_id: str, change: NicChange) -> None:
    await on_host(host_id, "host.detach_nic", change, timeout=_DETACH)


async def remove_network(host_id: str, inp: NetworkOpInput) -> None:
    await on_host(host_id, "host.remove_network", inp, schedule_to_start_timeout=_UNREACHED_HOST)


async def network_active(inp: NetworkOpInput) -> None:
    await run_activity(INVENTORY_QUEUE, "inventory.network_active", inp)


async def forget_network(inp: NetworkOpInput) -> None:
    await run_activity(INVENTORY_QUEUE, "inventory.forget_network", inp)


async def hosts_up(inp: NetworkOpInput) -> tuple[str, ...]:
    hosts: HostIds = await run_activity(INVENTORY_QUEUE, "inventory.hosts_up", inp, HostIds)
    return hosts.host_ids


async def port_attached(port_id: str, attached: bool) -> None:
    await run_activity(INVENTORY_QUEUE, "inventory.port_attached", PortAttached(port_id, attached))


async def forget_port(vm_id: str, port_id: str) -> None:
    await run_activity(INVENTORY_QUEUE, "inventory.forget_port", NicRef(vm_id, port_id))


async def nic_change(vm_id: str, port_id: str) -> NicChange:
    """The NIC and its network, as the VM's host needs them to plug or pull it."""
    return await run_activity(INVENTORY_QUEUE, "inventory.nic_change", NicRef(vm_id, port_id), NicChange)
