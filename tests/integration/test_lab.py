"""The lab of simulated KVM hosts (deploy/lab.py), against real namespaces and libvirtds.

Needs root, iproute2, tini and libvirt's daemon; each test starts its own lab under a name unique
to this test process, so a developer's lab (`vmflow up`) can run beside it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

import pytest

from deploy.lab import Lab, lab_health, load_lab, start_lab, stop_lab

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or not all(shutil.which(p) for p in ("ip", "tini", "libvirtd", "virsh")),
        reason="needs root, iproute2, tini and libvirtd",
    ),
]

LAB_NAME = f"vmft{os.getpid() % 10000}"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    state_dir = tmp_path / "lab"
    try:
        yield start_lab(LAB_NAME, state_dir, host_count=2)
    finally:
        stop_lab(LAB_NAME, state_dir)


def virsh(uri: str, *args: str, namespace: str | None = None) -> str:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    result = subprocess.run(
        [*prefix, "virsh", "-c", uri, *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def lab_namespaces(name: str) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith(f"{name}-")]


def is_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def daemon_pids(lab: Lab) -> list[int]:
    """tini and libvirtd of every host (tini, a subreaper, also parents the QEMUs)."""
    pids = []
    for host in lab.hosts:
        tini = int((host.root_dir / "libvirtd.pid").read_text())
        children = Path(f"/proc/{tini}/task/{tini}/children").read_text().split()
        libvirtd = [int(c) for c in children if Path(f"/proc/{c}/comm").read_text() == "libvirtd\n"]
        assert len(libvirtd) == 1
        pids += [tini, *libvirtd]
    return pids


def tiny_domain_xml(name: str, console: Path) -> str:
    # No disk and no kernel: SeaBIOS finds nothing to boot and QEMU just keeps running.
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>96</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>"""


def define(uri: str, xml: str, tmp_path: Path) -> None:
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    virsh(uri, "define", str(path))


def test_hosts_answer_with_distinct_host_uuids(lab: Lab) -> None:
    assert lab_health(lab) == {"h1": True, "h2": True}
    uuids = [ET.fromstring(virsh(h.unix_uri, "capabilities")).findtext("host/uuid") for h in lab.hosts]
    assert uuids == [h.host_uuid for h in lab.hosts]
    assert uuids[0] != uuids[1]
    assert load_lab(LAB_NAME, lab.state_dir) == lab


def test_a_host_reaches_another_over_tcp_from_its_namespace(lab: Lab) -> None:
    h1, h2 = lab.hosts
    hostname = virsh(h2.tcp_uri, "hostname", namespace=h1.namespace).strip()
    assert hostname == h2.namespace


def test_domains_are_private_to_their_host(lab: Lab, tmp_path: Path) -> None:
    h1, h2 = lab.hosts
    define(h1.unix_uri, tiny_domain_xml("only-on-h1", tmp_path / "console.log"), tmp_path)
    assert virsh(h1.unix_uri, "list", "--all", "--name").split() == ["only-on-h1"]
    assert virsh(h2.unix_uri, "list", "--all", "--name").split() == []


def test_stop_leaves_no_namespace_daemon_or_guest(lab: Lab, tmp_path: Path) -> None:
    h1 = lab.hosts[0]
    define(h1.unix_uri, tiny_domain_xml("guest", tmp_path / "console.log"), tmp_path)
    virsh(h1.unix_uri, "start", "guest")
    qemu = int((h1.root_dir / "run/libvirt/qemu/guest.pid").read_text())
    daemons = daemon_pids(lab)
    assert all(is_running(pid) for pid in [qemu, *daemons])

    stop_lab(lab.name, lab.state_dir)

    assert lab_namespaces(lab.name) == []
    assert not any(is_running(pid) for pid in [qemu, *daemons])
    stop_lab(lab.name, lab.state_dir)  # idempotent


def test_stop_after_a_crash_kills_the_orphaned_guest(lab: Lab, tmp_path: Path) -> None:
    h1 = lab.hosts[0]
    define(h1.unix_uri, tiny_domain_xml("orphan", tmp_path / "console.log"), tmp_path)
    virsh(h1.unix_uri, "start", "orphan")
    qemu = int((h1.root_dir / "run/libvirt/qemu/orphan.pid").read_text())
    daemons = daemon_pids(lab)
    for pid in daemons:  # the daemons die as in a crash; their QEMU lives on
        os.kill(pid, signal.SIGKILL)
    assert is_running(qemu)

    stop_lab(lab.name, lab.state_dir)

    assert not is_running(qemu)
    assert lab_namespaces(lab.name) == []


def test_starting_a_running_lab_again_replaces_it(lab: Lab) -> None:
    old_daemons = daemon_pids(lab)
    again = start_lab(lab.name, lab.state_dir, host_count=3)
    assert lab_health(again) == {"h1": True, "h2": True, "h3": True}
    assert not any(is_running(pid) for pid in old_daemons)
    assert sorted(lab_namespaces(lab.name)) == [f"{lab.name}-{h}" for h in ("h1", "h2", "h3", "sw")]
