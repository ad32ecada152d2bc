"""A stack on a NATS cluster of three (JetStream keeping 3 copies of the event stream and every
bucket): a node killed in the middle of a provision and of a live migration costs nothing. Both
succeed, no host looks down for a moment, and the event stream keeps every event."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import nats
import pytest

from deploy import lab, processes, stack
from deploy.client import VmflowClient
from tests.integration.libvirt_probe import LibvirtProbe, wait_until


@pytest.fixture(scope="module")
def cluster_stack():
    run_dir = Path(tempfile.mkdtemp(prefix="vmflow-cluster-"))
    cfg = stack.StackConfig.isolated(run_dir, f"vmc{os.getpid() % 100000}", host_count=2, nats_cluster=3)
    try:
        cfg = stack.up(cfg, say=lambda _m: None)
        yield cfg
    finally:
        stack.down(run_dir, say=lambda _m: None)
        if not os.environ.get("VMFLOW_KEEP_TEST_RUN"):
            shutil.rmtree(run_dir, ignore_errors=True)


def jetstream(cfg, ask):
    async def run():
        nc = await nats.connect(cfg.nats_url.split(","))
        try:
            return await ask(nc.jetstream())
        finally:
            await nc.close()
    return asyncio.run(run())


def leader_of(cfg, stream: str) -> str:
    async def ask(js):
        return (await js.stream_info(stream)).cluster.leader
    return jetstream(cfg, ask)


def stored_events(cfg, vm_id: str, op_ids: list[str]) -> list[tuple[str, dict]]:
    """(subject, data) of every event the stream holds about the VM or the operations."""
    async def ask(js):
        found = []
        sub = await js.pull_subscribe("vmflow.evt.>", stream="VMFLOW_EVENTS")
        try:
            while True:
                try:
                    batch = await sub.fetch(500, timeout=2)
                except nats.errors.TimeoutError:
                    return found
                for msg in batch:
                    if vm_id in msg.subject or any(op.replace(".", "_") in msg.subject for op in op_ids):
                        found.append((msg.subject, json.loads(msg.data)["data"]))
                    await msg.ack()
        finally:
            await sub.unsubscribe()
    return jetstream(cfg, ask)


class HostWatch:
    """Every state the API gives any host, twice a second, in a thread."""

    def __init__(self, client: VmflowClient) -> None:
        self.seen: set[tuple[str, str]] = set()
        self._client = client
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for host in self._client.call("GET", "/v1/hosts"):
                    self.seen.add((host["id"], host["state"]))
            except Exception as exc:  # the API must answer throughout
                self.seen.add(("api", f"{type(exc).__name__}: {exc}"[:200]))
            time.sleep(0.5)

    def stop(self) -> set[tuple[str, str]]:
        self._stop.set()
        self._thread.join(10)
        return self.seen


def kill_node(cfg, name: str) -> int:
    index = cfg.nats_names().index(name)
    assert processes.crash_process(cfg.root, name)
    return index


STREAMS = ("VMFLOW_EVENTS", "KV_vmflow_hosts")  # the streams whose leaders the test kills


def streams_settled(cfg) -> bool:
    """Whether each stream has a leader and every copy of it is current: a node that came back
    has caught up, so the next kill takes one node of three, not a second before the first is whole."""
    async def ask(js):
        for stream in STREAMS:
            cluster = (await js.stream_info(stream)).cluster
            if cluster is None or not cluster.leader or not all(p.current for p in cluster.replicas or ()):
                return False
        return True
    try:
        return jetstream(cfg, ask)
    except Exception:  # a leader being elected does not answer yet
        return False


def bring_back(cfg, index: int) -> None:
    stack.start_nats_node(cfg, index)
    wait_until(lambda: processes.port_open(cfg.nats_ports[index]), timeout_s=20, what="the node back")
    wait_until(lambda: stack.jetstream_ready(cfg), timeout_s=30, what="JetStream")
    wait_until(lambda: streams_settled(cfg), timeout_s=60, what="every stream led, its copies current")


def test_a_node_killed_mid_provision_and_mid_migration_costs_nothing(cluster_stack):
    cfg = cluster_stack
    client = VmflowClient(cfg.api_url, stack.admin_token(cfg), timeout_s=60)
    the_lab = lab.load_lab(cfg.lab_name, cfg.root / "lab")
    probe = LibvirtProbe({h.host_id: h.unix_uri for h in the_lab.hosts})
    watch = HostWatch(client)
    try:
        # A provision, with the event stream's leader killed a moment after it starts.
        accepted = client.create_vm("cluster-vm", 1, 128, 1, "lab-guest")
        vm_id, provision_op = accepted["vm"]["id"], accepted["operation_id"]
        time.sleep(0.5)
        killed = kill_node(cfg, leader_of(cfg, "VMFLOW_EVENTS"))
        op = client.wait_operation(provision_op, timeout_s=300)
        assert op["state"] == "succeeded", op
        source = client.call("GET", f"/v1/vms/{vm_id}")["host_id"]
        assert probe.where(vm_id) == [source]
        bring_back(cfg, killed)

        # A live migration, with the heartbeat bucket's leader killed in the middle.
        target = next(h for h in probe.uris if h != source)
        migrate_op = client.call("POST", f"/v1/vms/{vm_id}/migrate", json={"target_host_id": target})["operation_id"]
        time.sleep(0.5)
        killed = kill_node(cfg, leader_of(cfg, "KV_vmflow_hosts"))
        op = client.wait_operation(migrate_op, timeout_s=300)
        assert op["state"] == "succeeded", op
        assert probe.where(vm_id) == [target]
        assert client.call("GET", f"/v1/vms/{vm_id}")["host_id"] == target
        bring_back(cfg, killed)
    finally:
        seen = watch.stop()
    assert seen == {(h, "up") for h in probe.uris}, f"a host looked other than up, or the API failed: {seen}"

    events = stored_events(cfg, vm_id, [provision_op, migrate_op])
    kinds = {subject.rsplit(".", 1)[-1] for subject, _ in events}
    assert {"created", "state", "moved"} <= kinds, kinds
    assert any(data.get("state") == "running" for subject, data in events if subject.endswith(".state")), events
    outcomes = {(s.split(".")[4], s.rsplit(".", 1)[-1]) for s, _ in events if s.startswith("vmflow.evt.op.")}
    assert {(provision_op, "succeeded"), (migrate_op, "succeeded")} <= outcomes, outcomes

    client.wait_operation(client.call("DELETE", f"/v1/vms/{vm_id}")["operation_id"], timeout_s=120)
