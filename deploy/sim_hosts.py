"""Simulated KVM hosts for ``vmflow bench control-plane``: many host workers' heartbeats in one
process, each from a libvirt mock-driver host of its own.

Each simulated host is what the real worker has for heartbeats, and nothing else (no Temporal
worker, no consoles, no peer probing): its own libvirt test-driver connection through the
project's adapter (``Hypervisor``), opened from a node file so that every host is a host of its
own (every ``test:///default`` connection of a process shares one host); its domains defined
and started through the same adapter, one per VM the inventory puts on it; its own NATS
connection; and the worker's own ``heartbeat_loop``, which publishes each beat as a plain
message and into the heartbeat bucket. Hosts start beating at random moments within one
interval, as workers started at different times would.

Every second the process writes what it did to its status file (JSON): how many hosts are set
up and connected, how many beats they published, its RSS.

Run by the benchmark: ``python -m deploy.sim_hosts --run-dir D --first 0 --count 250 ...``;
NATS is ``$VMFLOW_NATS_URL``. Stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import time
from pathlib import Path

from deploy.bench_control_plane import HOST_FLAVOUR, host_id_for, vms_of_host
from deploy.bench_placement import node_xml
from services.host_worker.domain_xml import build_domain_xml
from services.host_worker.hypervisor import Hypervisor
from services.host_worker.peers import PeerProbe
from services.host_worker.reporting import heartbeat_loop
from services.host_worker.settings import HostWorkerSettings
from shared.lifecycle import run_until_signalled
from shared.logging import configure_logging
from shared.messaging import EventPublisher, connect, heartbeat_bucket
from shared.models import DomainSpec

DOMAIN_TYPE = "qemu"
CONNECT_CONCURRENCY = 50


class CountingNats:
    """The host's NATS connection as ``heartbeat_loop`` uses it (``publish`` only), counting
    what it publishes into one counter shared by the process's hosts."""

    def __init__(self, nc, counter: list[int]) -> None:
        self._nc = nc
        self._counter = counter

    async def publish(self, subject: str, payload: bytes) -> None:
        await self._nc.publish(subject, payload)
        self._counter[0] += 1


def open_hosts(run_dir: Path, first: int, count: int, hosts: int, vms: int, tenants: int) -> list[Hypervisor]:
    """Mock hosts ``first`` .. ``first + count - 1``, each running its planned domains."""
    node_file = run_dir / "sim-node.xml"
    if not node_file.exists():
        tmp = node_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(node_xml(HOST_FLAVOUR))
        os.replace(tmp, node_file)
    opened: list[Hypervisor] = []
    try:
        for index in range(first, first + count):
            hv = Hypervisor(f"test://{node_file}")  # no on_lifecycle: no event registration
            hv.connection()
            opened.append(hv)
            for vm in vms_of_host(index, hosts, vms, tenants):
                spec = DomainSpec(vm_id=vm.vm_id, vm_name=vm.name, tenant=vm.tenant, vcpus=vm.vcpus,
                                  memory_mib=vm.memory_mib, disk_path=f"{run_dir}/disks/{vm.vm_id}.qcow2",
                                  domain_type=DOMAIN_TYPE, disk_gib=0)
                hv.define(build_domain_xml(spec, str(run_dir / "consoles")))
                hv.start(vm.vm_id)
    except BaseException:
        for hv in opened:
            hv.close()
        raise
    return opened


def write_status(path: Path, status: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, path)


async def run_hosts(args: argparse.Namespace, hvs: list[Hypervisor], setup_s: float) -> None:
    status_file = Path(args.status_file)
    published = [0]
    status = {"pid": os.getpid(), "hosts": len(hvs), "setup_s": setup_s, "connected": 0, "beats": 0}
    write_status(status_file, status)
    conns, tasks = [], []
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def start_host(offset: int, hv: Hypervisor) -> None:
        host_id = host_id_for(args.first + offset)
        settings = HostWorkerSettings(host_id=host_id, heartbeat_interval_s=args.interval_s, domain_type=DOMAIN_TYPE,
                                      local_disk_dir=str(args.run_dir), console_dir=str(Path(args.run_dir) / "consoles"))
        async with gate:
            nc = await connect(settings, f"vmflow-host-worker-{host_id}")
            conns.append(nc)
            js = nc.jetstream()
            kv = await heartbeat_bucket(js, settings.heartbeat_bucket, settings.jetstream_replicas)
        status["connected"] += 1
        await asyncio.sleep(random.uniform(0, args.interval_s))  # workers never start in step
        await heartbeat_loop(settings, hv, CountingNats(nc, published), kv,
                             EventPublisher(js, f"host-worker/{host_id}"), DOMAIN_TYPE, PeerProbe(host_id))

    async def report() -> None:
        while True:
            status["beats"] = published[0]
            status["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            status["at_s"] = time.time()
            write_status(status_file, status)
            await asyncio.sleep(1.0)

    tasks = [asyncio.create_task(start_host(i, hv)) for i, hv in enumerate(hvs)]
    tasks.append(asyncio.create_task(report()))
    try:
        await run_until_signalled()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for nc in conns:
            await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--status-file", required=True)
    parser.add_argument("--first", type=int, required=True, help="index of this process's first host")
    parser.add_argument("--count", type=int, required=True, help="hosts in this process")
    parser.add_argument("--hosts", type=int, required=True, help="hosts in the whole fleet")
    parser.add_argument("--vms", type=int, required=True, help="VMs in the whole fleet")
    parser.add_argument("--tenants", type=int, required=True)
    parser.add_argument("--interval-s", type=float, required=True, help="heartbeat interval")
    args = parser.parse_args()
    configure_logging("sim-hosts", "warning", json=True)
    run_dir = Path(args.run_dir)
    for sub in ("disks", "consoles"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    started_s = time.perf_counter()
    hvs = open_hosts(run_dir, args.first, args.count, args.hosts, args.vms, args.tenants)
    try:
        asyncio.run(run_hosts(args, hvs, time.perf_counter() - started_s))
    finally:
        for hv in hvs:
            hv.close()


if __name__ == "__main__":
    main()
