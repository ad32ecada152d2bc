"""What a host carries for its VMs besides domains: the networks their NICs are on (bridge, VXLAN,
DHCP; see plumbing.py) and their cloud-init seeds.

A network stays on the host while a domain here is plugged into its bridge, or while a VM holds
it: ``prepare`` holds the VM's networks until the domain that needs them is defined (or has
arrived by migration), ``release`` lets go. Holds expire after ``HOLD_S`` so that a VM whose
workflow died between the two never pins a network forever. One lock orders every change, so a
network is never torn down under a VM being set up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from services.host_worker.domain_xml import seed_path
from services.host_worker.hypervisor import Hypervisor
from services.host_worker.plumbing import NetworkPlumber
from services.host_worker.seed import remove_seed, write_seed
from shared.guest import VmRelease, VmSetup
from shared.networks import NetworkPlumbing, bridge_name

log = structlog.get_logger(__name__)

HOLD_S = 600.0  # longer than any define or migration takes


class GuestSetup:
    def __init__(self, hypervisor: Hypervisor, plumber: NetworkPlumber, seed_dir: str,
                 peers: Callable[[], set[str]] = set) -> None:
        self._hv = hypervisor
        self._plumber = plumber
        self._seed_dir = seed_dir
        self._peers = peers  # the other hosts' tunnel addresses, as known now
        self._holds: dict[str, tuple[set[int], float]] = {}  # vm id -> (VNIs, until when)
        self._lock = asyncio.Lock()

    def seed_file(self, vm_id: str) -> Path:
        return Path(seed_path(self._seed_dir, vm_id))

    async def prepare(self, setup: VmSetup) -> None:
        """The VM's networks and seed are in place here when this returns. Idempotent; refreshes
        each network's DHCP entries and tunnel peers."""
        async with self._lock:
            self._holds[setup.vm_id] = ({n.vni for n in setup.networks}, time.monotonic() + HOLD_S)
            peers = self._peers()
            for network in setup.networks:
                await self._plumber.ensure(network, peers)
        if setup.seed is not None:
            wrote = await asyncio.to_thread(write_seed, self.seed_file(setup.vm_id), setup.seed)
            if wrote:
                log.info("seed written", vm_id=setup.vm_id, path=str(self.seed_file(setup.vm_id)))

    async def plug(self, vm_id: str, networks: tuple[NetworkPlumbing, ...]) -> None:
        """Make ``networks`` ready for a NIC about to be plugged into the VM (held for it)."""
        async with self._lock:
            vnis, _until = self._holds.get(vm_id, (set(), 0.0))
            self._holds[vm_id] = (vnis | {n.vni for n in networks}, time.monotonic() + HOLD_S)
            peers = self._peers()
            for network in networks:
                await self._plumber.ensure(network, peers)

    async def release(self, release: VmRelease) -> None:
        """Drop the VM's hold; remove every network nothing here uses any more; with
        ``remove_seed`` delete its seed. Idempotent."""
        async with self._lock:
            self._holds.pop(release.vm_id, None)
            await self._collect()
        if release.remove_seed:
            await asyncio.to_thread(remove_seed, self.seed_file(release.vm_id))

    async def remove_network(self, vni: int) -> None:
        """Remove the network whatever holds it (it is being deleted: no NIC is on it)."""
        async with self._lock:
            await self._plumber.remove(vni)

    async def reconcile(self) -> None:
        """Remove what no domain uses and no VM holds: after a restart, a lost release, a host
        that came back. Then align every tunnel with the peers known now."""
        async with self._lock:
            await self._collect()
            await self._plumber.sync_peers(self._peers())

    async def _collect(self) -> None:
        now = time.monotonic()
        self._holds = {vm: hold for vm, hold in self._holds.items() if hold[1] > now}
        held = set().union(*(vnis for vnis, _until in self._holds.values()))
        present = await self._plumber.present()
        if not present - held:  # nothing that could be unused: no need to ask libvirt
            return
        in_use = await asyncio.to_thread(self._hv.bridges_in_use)
        for vni in sorted(present):
            if vni not in held and bridge_name(vni) not in in_use:
                log.info("network no longer used here", vni=vni)
                await self._plumber.remove(vni)


async def keep_reconciled(setup: GuestSetup, interval_s: float) -> None:
    """Reconcile now and every ``interval_s``: tunnels follow hosts that come and go."""
    while True:
        try:
            await setup.reconcile()
        except Exception as exc:  # libvirt or a command away for a moment: next round
            log.warning("network reconcile failed", error=str(exc))
        await asyncio.sleep(interval_s)
