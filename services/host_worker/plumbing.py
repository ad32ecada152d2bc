"""A host's plumbing of virtual networks: per network a Linux bridge, a VXLAN device with the
network's VNI flooding to the peer hosts (head-end replication through all-zero FDB entries),
nftables rules that keep DHCP on its host and, when the network has DHCP, a dnsmasq in a
namespace of its own joined to the bridge by a veth. The host-worker calls it from its
activities, inside the host's network namespace, as root.

VXLAN learning stays on. The bridge learns only that a remote MAC is behind the VXLAN port;
the VXLAN device learns behind which peer (its FDB), so unicast goes to that one host instead
of being copied to every peer and flooded to every local port there. A migrated VM's QEMU
announces itself (RARP) from its new host, which corrects the learnt entry at once. Static
per-MAC entries from the inventory (nolearning) are the later step, when ports know their host.

The commands come from the pure plumbing_config; this module reads the state, runs them (an
injected runner, so tests can record them) and owns dnsmasq's process and files.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from services.host_worker import plumbing_config as cfg
from shared.errors import NetworkError
from shared.networks import (
    NetworkPlumbing,
    bridge_name,
    dhcp_link_name,
    dhcp_namespace,
    vxlan_name,
)

log = structlog.get_logger(__name__)

COMMAND_TIMEOUT_S = 30.0
STOP_POLL_S = 0.02


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


class Runner(Protocol):
    async def __call__(self, argv: Sequence[str], stdin: str | None = None) -> CommandResult: ...


async def run_command(argv: Sequence[str], stdin: str | None = None) -> CommandResult:
    """Runs a command off the event loop; a missing program or a timeout is a failed result."""
    return await asyncio.to_thread(_run_blocking, list(argv), stdin)


def _run_blocking(argv: list[str], stdin: str | None) -> CommandResult:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                              check=False)
    except FileNotFoundError:
        return CommandResult(127, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return CommandResult(124, "", f"no answer within {COMMAND_TIMEOUT_S:.0f} s")
    return CommandResult(done.returncode, done.stdout, done.stderr)


class Processes(Protocol):
    def cmdline(self, pid: int) -> tuple[str, ...] | None:
        """The argv of a live process; None when there is none (or only its zombie)."""

    def signal(self, pid: int, signum: int) -> None: ...


class LocalProcesses:
    """This machine's processes, through /proc."""

    def cmdline(self, pid: int) -> tuple[str, ...] | None:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return tuple(raw.decode(errors="replace").split("\0")[:-1]) or None

    def signal(self, pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


class NetworkPlumber:
    """Builds, updates and removes the networks' plumbing on this host. Every method is
    idempotent, runs one at a time (a lock), and raises NetworkError naming the command that
    failed and its stderr; ensure raises InvalidRequest for values it cannot plumb."""

    def __init__(
        self, namespace_prefix: str, local_address: str, state_dir: Path,
        runner: Runner = run_command, processes: Processes | None = None, stop_timeout_s: float = 2.0,
    ) -> None:  # fmt: skip
        self._prefix = namespace_prefix
        self._local_address = local_address
        self._state_dir = state_dir
        self._run = runner
        self._processes = processes or LocalProcesses()
        self._stop_timeout_s = stop_timeout_s
        self._lock = asyncio.Lock()

    async def ensure(self, net: NetworkPlumbing, peers: Iterable[str]) -> None:
        """Makes the network's plumbing exactly as ``net`` says, flooding to ``peers`` (this
        host's own address among them is ignored): creates what is missing, corrects what
        differs, rewrites dnsmasq's hosts file (and SIGHUPs it) when entries changed, starts
        dnsmasq again when it died or its options changed. A repeat only reads."""
        cfg.check_plumbing(net)
        wanted = cfg.wanted_peers(peers, self._local_address)
        async with self._lock:
            started, changes = time.monotonic(), 0
            links = await self._links()
            changes += await self._apply(cfg.bridge_commands(net, links))
            # Before any port joins the bridge, so DHCP never crosses, not even for a moment; after
            # the bridge exists: on kernel 6.18 a bridge-family chain made in a namespace that never
            # had a bridge stays dead (sees no packet) even once bridges come.
            changes += await self._ensure_nft(net)
            changes += await self._apply(cfg.vxlan_commands(net, self._local_address, links))
            changes += await self._ensure_flooding(vxlan_name(net.vni), wanted)
            namespaces = await self._namespaces()
            if net.dhcp_address is not None:
                changes += await self._ensure_dhcp(net, links, namespaces)
            else:
                changes += await self._remove_dhcp(net.vni, links, namespaces)
        log.info("network.ensured", vni=net.vni, network_id=net.network_id, peers=len(wanted), changes=changes,
                 elapsed_ms=_elapsed_ms(started))  # fmt: skip

    async def remove(self, vni: int) -> None:
        """Stops the network's dnsmasq and deletes its namespace, veth, VXLAN device, bridge,
        nftables chain and state files; nothing of the network is left on this host."""
        async with self._lock:
            started = time.monotonic()
            links = await self._links()
            changes = await self._remove_dhcp(vni, links, await self._namespaces())
            devices = [name for name in (vxlan_name(vni), bridge_name(vni)) if name in links]
            changes += await self._apply([("ip", "link", "del", name) for name in devices])
            changes += await self._remove_nft(vni)
            await asyncio.to_thread(_unlink_all, cfg.dnsmasq_files(self._state_dir, vni).all())
        log.info("network.removed", vni=vni, changes=changes, elapsed_ms=_elapsed_ms(started))

    async def present(self) -> set[int]:
        """The VNIs with a bridge on this host."""
        return cfg.vnis_of(await self._links(), "bridge", bridge_name)

    async def sync_peers(self, peers: Iterable[str]) -> None:
        """Makes every local VXLAN device flood to exactly ``peers`` (minus this host)."""
        wanted = cfg.wanted_peers(peers, self._local_address)
        async with self._lock:
            vnis = cfg.vnis_of(await self._links(), "vxlan", vxlan_name)
            flood = cfg.parse_flood_peers(await self._read("bridge", "-j", "fdb", "show"))
            changes = 0
            for device in (vxlan_name(vni) for vni in sorted(vnis)):
                changes += await self._apply(cfg.flood_commands(device, flood.get(device, ()), wanted))
        log.info("network.peers_synced", vnis=len(vnis), peers=len(wanted), changes=changes)

    async def _ensure_flooding(self, device: str, wanted: frozenset[str]) -> int:
        flood = cfg.parse_flood_peers(await self._read("bridge", "-j", "fdb", "show", "dev", device), device)
        return await self._apply(cfg.flood_commands(device, flood.get(device, ()), wanted))

    # -- DHCP ------------------------------------------------------------------------------------------------

    async def _ensure_dhcp(
        self, net: NetworkPlumbing, host_links: Mapping[str, cfg.Link], namespaces: frozenset[str]
    ) -> int:
        namespace = dhcp_namespace(self._prefix, net.vni)
        inside = await self._links(namespace) if namespace in namespaces else None
        changes = await self._apply(cfg.dhcp_port_commands(net, namespace, host_links, inside))
        files = cfg.dnsmasq_files(self._state_dir, net.vni)
        hosts_changed = await asyncio.to_thread(_write_if_changed, files.hosts, cfg.hosts_file_text(net.hosts))
        argv = cfg.dnsmasq_argv(net, files)
        pid = await asyncio.to_thread(self._dnsmasq_pid, files)
        if pid is not None and self._processes.cmdline(pid) == argv:
            if hosts_changed:
                self._processes.signal(pid, signal.SIGHUP)  # dnsmasq re-reads --dhcp-hostsfile
                log.info("network.dhcp_hosts_reloaded", vni=net.vni, pid=pid, hosts=len(net.hosts))
            return changes + int(hosts_changed)
        # Options changed (gateway, MTU, subnet) or it died; a dnsmasq of a lost pid file would
        # hold the DHCP port: only a fresh start applies them.
        stale = set(await self._dnsmasqs_in(namespace)) | ({pid} if pid is not None else set())
        await self._stop(net.vni, sorted(stale))
        await self._apply([("ip", "netns", "exec", namespace, *argv)])
        log.info("network.dhcp_started", vni=net.vni, namespace=namespace, restarted=pid is not None)
        return changes + 1

    async def _remove_dhcp(
        self, vni: int, host_links: Mapping[str, cfg.Link], namespaces: frozenset[str]
    ) -> int:
        namespace, files = dhcp_namespace(self._prefix, vni), cfg.dnsmasq_files(self._state_dir, vni)
        pids = {pid} if (pid := await asyncio.to_thread(self._dnsmasq_pid, files)) else set()
        if namespace in namespaces:  # a dnsmasq whose pid file is lost would keep the namespace alive
            pids |= set(await self._dnsmasqs_in(namespace))
        await self._stop(vni, sorted(pids))
        commands = [("ip", "link", "del", dhcp_link_name(vni))] if dhcp_link_name(vni) in host_links else []
        if namespace in namespaces:
            commands.append(("ip", "netns", "del", namespace))
        return len(pids) + await self._apply(commands)

    async def _dnsmasqs_in(self, namespace: str) -> list[int]:
        pids = cfg.parse_pids(await self._read("ip", "netns", "pids", namespace))
        return [pid for pid in pids if cfg.is_dnsmasq(self._processes.cmdline(pid))]

    def _dnsmasq_pid(self, files: cfg.DnsmasqFiles) -> int | None:
        """The pid in the pid file, if that process is this network's dnsmasq."""
        try:
            pid = int(files.pid.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if cfg.is_dnsmasq_of(self._processes.cmdline(pid), files) else None

    async def _stop(self, vni: int, pids: Sequence[int]) -> None:
        """SIGTERM, then SIGKILL after stop_timeout_s; raises NetworkError if one outlives both."""
        for signum in (signal.SIGTERM, signal.SIGKILL):
            alive = [p for p in pids if cfg.is_dnsmasq(self._processes.cmdline(p))]
            for pid in alive:
                self._processes.signal(pid, signum)
            deadline = time.monotonic() + self._stop_timeout_s
            while alive and time.monotonic() < deadline:
                await asyncio.sleep(STOP_POLL_S)
                alive = [p for p in alive if cfg.is_dnsmasq(self._processes.cmdline(p))]
            if not alive:
                if pids:
                    log.info("network.dhcp_stopped", vni=vni, pids=list(pids))
                return
        raise NetworkError(f"network plumbing: dnsmasq {alive} of VNI {vni} survived SIGKILL")

    # -- nftables ----------------------------------------------------------------------------------------------

    async def _ensure_nft(self, net: NetworkPlumbing) -> int:
        listed = await self._run(("nft", "list", "chain", "bridge", cfg.NFT_TABLE, cfg.nft_chain_name(net.vni)))
        if listed.returncode == 0 and cfg.nft_chain_is_current(listed.stdout, net):
            return 0
        return await self._apply([("nft", "-f", "-")], stdin=cfg.nft_ensure_script(net, listed.returncode == 0))

    async def _remove_nft(self, vni: int) -> int:
        listed = await self._run(("nft", "list", "table", "bridge", cfg.NFT_TABLE))
        script = cfg.nft_remove_script(vni, listed.stdout) if listed.returncode == 0 else ""
        return await self._apply([("nft", "-f", "-")], stdin=script) if script else 0

    # -- running commands --------------------------------------------------------------------------------------

    async def _links(self, namespace: str | None = None) -> dict[str, cfg.Link]:
        where = ("-n", namespace) if namespace else ()
        return cfg.parse_links(await self._read("ip", *where, "-d", "-j", "address", "show"))

    async def _namespaces(self) -> frozenset[str]:
        return cfg.parse_namespaces(await self._read("ip", "netns", "list"))

    async def _read(self, *argv: str) -> str:
        return (await self._checked(argv)).stdout

    async def _apply(self, commands: Iterable[cfg.Command], stdin: str | None = None) -> int:
        """Runs state-changing commands in order, stopping at the first failure; how many ran."""
        count = 0
        for argv in commands:
            log.debug("network.command", argv=shlex.join(argv))
            await self._checked(argv, stdin)
            count += 1
        return count

    async def _checked(self, argv: Sequence[str], stdin: str | None = None) -> CommandResult:
        result = await self._run(argv, stdin)
        if result.returncode != 0:
            detail = result.stderr.strip() or result.stdout.strip() or "no output"
            raise NetworkError(f"network plumbing: `{shlex.join(argv)}` failed (exit {result.returncode}): {detail}")
        return result


def _write_if_changed(path: Path, text: str) -> bool:
    """Writes atomically; readable by all, as dnsmasq re-reads it after dropping root."""
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    os.replace(tmp, path)
    return True


def _elapsed_ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def _unlink_all(paths: Iterable[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
