"""A lab of simulated KVM hosts on one machine (LAB.md, "Several hosts on one machine").

A host is a network namespace plus a mount namespace in which /run, /etc/libvirt, /var/lib/libvirt,
/var/log/libvirt, /var/cache/libvirt and /etc/hosts are private, running its own libvirtd under
tini. The hosts meet on a bridge in a "switch" namespace; the root namespace's network is never
touched. Every namespace is named `<lab name>-<suffix>`, so labs with different names coexist.

Standard library only, so that teardown works from any interpreter, with or without the venv.
"""

from __future__ import annotations

import grp
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

PRIVATE_DIRS = ("run", "etc/libvirt", "var/lib/libvirt", "var/log/libvirt", "var/cache/libvirt")
CAPABILITIES_CACHE = Path.home() / ".cache" / "vmflow" / "libvirt-qemu-capabilities"
LAB_FILE = "lab.json"
MAX_HOSTS = 200  # addresses are 127.1.0.(10 + index)
GATEWAY_ADDRESS = "127.1.0.1"  # the switch's own address on the lab network

_CAPABILITIES_SUBDIR = "var/cache/libvirt/qemu/capabilities"
_NAME_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,39}")
_COLD_START_TIMEOUT_S = 90.0  # the first QEMU probe alone took 2-12 s on our machines
_WARM_START_TIMEOUT_S = 30.0
_COMMAND_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
# What a lab host runs. Other programs in its namespace (a test's virsh, say) are not ours to kill.
_HOST_PROGRAMS = ("tini", "libvirtd", "virtlockd", "qemu-system-", "dnsmasq")
# Daemons started by this process, kept so that stop_lab reaps them instead of leaving zombies.
_children: dict[int, subprocess.Popen[bytes]] = {}


class LabError(RuntimeError):
    """The lab could not be started, or the request contradicts what is on disk."""


@dataclass(frozen=True)
class LabHost:
    host_id: str
    namespace: str
    address: str
    root_dir: Path
    unix_uri: str
    tcp_uri: str
    host_uuid: str


@dataclass(frozen=True)
class Lab:
    name: str
    state_dir: Path
    hosts: tuple[LabHost, ...]


def start_lab(name: str, state_dir: Path, host_count: int, shared_dirs: Sequence[Path] = ()) -> Lab:
    """Start `host_count` hosts, return once every libvirtd answers on its unix socket.

    A lab already running under this name (or left in `state_dir`) is stopped first, and hosts
    start with empty libvirt state. `shared_dirs` are created and stay visible at the same path on
    every host, even below a directory that is otherwise private to each host. On failure all
    that was started is torn down again and LabError is raised.
    """
    _check_name(name)
    if not 1 <= host_count <= MAX_HOSTS:
        raise LabError(f"host_count must be between 1 and {MAX_HOSTS}, got {host_count}")
    state_dir = Path(state_dir).resolve()
    shared = tuple(Path(d).resolve() for d in shared_dirs)
    if _private_parent(state_dir):
        raise LabError(f"state_dir {state_dir} lies below a directory each host makes private")
    stop_lab(name, state_dir)
    shutil.rmtree(state_dir / "hosts", ignore_errors=True)
    lab = _plan_lab(name, state_dir, host_count)
    _write_lab_file(lab, shared)
    try:
        _ensure_kvm_group_access()
        for directory in shared:
            directory.mkdir(parents=True, exist_ok=True)
        for host in lab.hosts:
            _prepare_host_dirs(host, lab, shared)
        _create_network(lab)
        _start_daemons(lab, shared)
    except BaseException:
        stop_lab(name, state_dir)
        raise
    return lab


def stop_lab(name: str, state_dir: Path) -> None:
    """Destroy and undefine the lab's guests, stop its daemons, delete its namespaces.

    Needs nothing but the name and state directory (works from another process, after a crash),
    is idempotent and never raises because something is already gone; LabError only if
    `state_dir` holds a lab of another name. Only namespaces named `<name>-sw` or `<name>-h<N>`
    are touched. Files under `state_dir` (logs) are kept for post-mortems.
    """
    _check_name(name)
    state_dir = Path(state_dir).resolve()
    try:
        load_lab(name, state_dir)  # raises LabError for a lab of another name
    except (ValueError, KeyError, TypeError):
        pass  # a half-written or damaged lab.json must not stop the teardown
    namespaces = _lab_namespaces(name)
    host_ids = {p.name for p in (state_dir / "hosts").glob("h*")}
    host_ids |= {ns[len(name) + 1 :] for ns in namespaces}
    host_ids = {h for h in host_ids if re.fullmatch(r"h\d+", h)}
    with ThreadPoolExecutor(max_workers=max(1, len(host_ids))) as pool:
        list(pool.map(lambda h: _stop_host(name, state_dir, h), sorted(host_ids)))
    for namespace in namespaces:
        _run(["ip", "netns", "del", namespace], check=False)


def power_off_host(name: str, state_dir: Path, host_id: str) -> None:
    """Cut a host's power, as a fence agent does: every process in its namespace (libvirtd,
    each QEMU, its worker when it runs there) is killed at once, nothing is shut down cleanly.
    Its definitions stay on its disk, as a real host's do. Idempotent."""
    state_dir = Path(state_dir).resolve()
    in_namespace = _pids_in_namespace(f"{name}-{host_id}") or set()
    tini = _read_pid(state_dir / "hosts" / host_id / "libvirtd.pid")
    victims = sorted(in_namespace | ({tini} if tini and _runs_host_program(tini) else set()))
    for pid in victims:
        _signal(pid, signal.SIGKILL)
    _wait_gone(victims, _STOP_TIMEOUT_S)
    (state_dir / "hosts" / host_id / "libvirtd.pid").unlink(missing_ok=True)
    _drop_host_networks(name, host_id)


def power_on_host(name: str, state_dir: Path, host_id: str) -> None:
    """Start a powered-off host's libvirtd again (its domains stay off: nothing autostarts)."""
    lab = load_lab(name, state_dir)
    if lab is None:
        raise LabError(f"no lab {name!r} in {state_dir}")
    if host_powered(name, state_dir, host_id):
        return
    host = next((h for h in lab.hosts if h.host_id == host_id), None)
    if host is None:
        raise LabError(f"lab {name!r} has no host {host_id!r}")
    shared = [Path(d) for d in json.loads((Path(state_dir).resolve() / LAB_FILE).read_text()).get("shared_dirs", [])]
    _launch_and_wait([host], shared, _WARM_START_TIMEOUT_S)


def host_powered(name: str, state_dir: Path, host_id: str) -> bool:
    """Whether anything of the host still runs: its libvirtd or any QEMU."""
    tini = _read_pid(Path(state_dir).resolve() / "hosts" / host_id / "libvirtd.pid")
    if tini and _runs_host_program(tini):
        return True
    return any(_runs_host_program(pid) for pid in _pids_in_namespace(f"{name}-{host_id}") or ())


def lab_health(lab: Lab) -> dict[str, bool]:
    """host_id -> whether that host's libvirtd answers on its unix socket within 5 s."""
    with ThreadPoolExecutor(max_workers=max(1, len(lab.hosts))) as pool:
        answers = pool.map(lambda h: _libvirtd_answers(h.unix_uri, 5.0), lab.hosts)
        return {host.host_id: ok for host, ok in zip(lab.hosts, answers)}


def load_lab(name: str, state_dir: Path) -> Lab | None:
    """The lab recorded in `state_dir` (running or not), None if there is none."""
    path = Path(state_dir).resolve() / LAB_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    if data["name"] != name:
        raise LabError(f"{path} describes lab {data['name']!r}, not {name!r}")
    hosts = tuple(LabHost(**{**h, "root_dir": Path(h["root_dir"])}) for h in data["hosts"])
    return Lab(name=name, state_dir=Path(data["state_dir"]), hosts=hosts)


def _check_name(name: str) -> None:
    # The name prefixes namespace names and hostnames; keep it to characters both accept.
    if not _NAME_PATTERN.fullmatch(name):
        raise LabError(f"lab name {name!r} must match {_NAME_PATTERN.pattern}")


def _plan_lab(name: str, state_dir: Path, host_count: int) -> Lab:
    hosts = []
    for index in range(1, host_count + 1):
        host_id, address = f"h{index}", f"127.1.0.{10 + index}"
        root_dir = state_dir / "hosts" / host_id
        hosts.append(LabHost(
            host_id=host_id,
            namespace=f"{name}-{host_id}",
            address=address,
            root_dir=root_dir,
            unix_uri=_unix_uri(root_dir),
            tcp_uri=f"qemu+tcp://{address}/system",
            # Distinct, or libvirt refuses a migration between two hosts as one to "itself".
            host_uuid=str(uuid.uuid4()),
        ))  # fmt: skip
    return Lab(name=name, state_dir=state_dir, hosts=tuple(hosts))


def _unix_uri(root_dir: Path) -> str:
    return f"qemu+unix:///system?socket={root_dir}/run/libvirt/libvirt-sock"


def _write_lab_file(lab: Lab, shared: Sequence[Path]) -> None:
    # Written before anything starts, so that stop_lab finds even a half-started lab.
    lab.state_dir.mkdir(parents=True, exist_ok=True)
    data = asdict(lab) | {"shared_dirs": [str(d) for d in shared]}
    tmp = lab.state_dir / f".{LAB_FILE}.tmp"
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, lab.state_dir / LAB_FILE)  # readers never see half a file


def _private_parent(path: Path) -> str | None:
    """The private directory (relative, e.g. "var/lib/libvirt") that hides `path` on a host."""
    for rel in PRIVATE_DIRS:
        if path == Path("/", rel) or Path("/", rel) in path.parents:
            return rel
    return None


def _skip_host_specific(directory: str, names: list[str]) -> set[str]:
    # The root daemon's domains and autostarted networks must not appear on every host.
    rel = Path(directory).relative_to("/etc/libvirt").as_posix()
    if rel == "qemu":
        return {n for n in names if n.endswith(".xml") or n == "autostart"}
    if rel == "qemu/networks":
        return {"autostart"} & set(names)
    return set()


def _prepare_host_dirs(host: LabHost, lab: Lab, shared: Sequence[Path]) -> None:
    root = host.root_dir
    for rel in PRIVATE_DIRS:
        (root / rel).mkdir(parents=True, exist_ok=True)
    # /var/lock is /run/lock: libvirt locks a console's pty there (one session at a time).
    (root / "run" / "lock").mkdir(exist_ok=True)
    etc = root / "etc/libvirt"
    shutil.copytree(
        "/etc/libvirt", etc, ignore=_skip_host_specific, symlinks=True, dirs_exist_ok=True
    )
    (etc / "libvirtd.conf").write_text(_libvirtd_conf(host))
    (etc / "qemu.conf").write_text(_qemu_conf(host))
    # Disk leases (libvirt's lockd): each disk a domain runs on holds a lease in a lockspace on
    # the shared storage, so a second QEMU cannot start on it while the first holds it.
    if shared:
        lockspace = shared[0] / "leases"
        lockspace.mkdir(parents=True, exist_ok=True)
        (etc / "qemu-lockd.conf").write_text(_conf_text({
            "auto_disk_leases": 1, "require_lease_for_disks": 1, "file_lockspace_dir": str(lockspace),
        }))
    # Hosts resolve their own hostname and their peers' without DNS, which the lab lacks.
    peers = "".join(f"{h.address}\t{h.namespace} {h.host_id}\n" for h in lab.hosts)
    (root / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost\n{peers}")
    for directory in shared:
        if _private_parent(directory):  # a mount point for the bind made in _launch_script
            (root / directory.relative_to("/")).mkdir(parents=True, exist_ok=True)
    _copy_files(CAPABILITIES_CACHE, root / _CAPABILITIES_SUBDIR)


def _libvirtd_conf(host: LabHost) -> str:
    return _conf_text({
        "listen_tcp": 1, "listen_tls": 0, "listen_addr": host.address, "auth_tcp": "none",
        "auth_unix_rw": "none", "auth_unix_ro": "none", "unix_sock_group": "root",
        "host_uuid": host.host_uuid,
    })  # fmt: skip


def _qemu_conf(host: LabHost) -> str:
    # stdio_handler "file": QEMU writes its own logs, so no virtlogd has to run per host.
    return _conf_text({
        "user": "+0", "group": "+0", "dynamic_ownership": 0, "security_driver": "none",
        "migration_address": host.address, "migration_host": host.address, "stdio_handler": "file",
        "lock_manager": "lockd",
    })  # fmt: skip


def _conf_text(settings: dict[str, str | int]) -> str:
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())


def _copy_files(source: Path, target: Path) -> None:
    """Copy the plain files of `source` into `target`, each replaced atomically."""
    if not source.is_dir():
        return
    target.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        if file.is_file() and not file.name.startswith("."):
            # Two labs may fill the shared cache at once: a temporary name of our own each.
            tmp = target / f".{file.name}.{uuid.uuid4().hex}"
            shutil.copy2(file, tmp)
            os.replace(tmp, target / file.name)


def _ensure_kvm_group_access() -> None:
    # Without udev /dev/kvm is root-only and libvirt re-probes QEMU on every domain start (+4 s).
    # Only change it when needed: a ctime change invalidates the cached QEMU capabilities.
    kvm = Path("/dev/kvm")
    try:
        kvm_gid, st = grp.getgrnam("kvm").gr_gid, kvm.stat()
    except (KeyError, OSError):
        return
    if st.st_gid != kvm_gid:
        os.chown(kvm, -1, kvm_gid)
    if st.st_mode & 0o777 != 0o660:
        kvm.chmod(0o660)


def _create_network(lab: Lab) -> None:
    switch = f"{lab.name}-sw"
    for namespace in (switch, *(h.namespace for h in lab.hosts)):
        _run(["ip", "netns", "add", namespace])
    for host in lab.hosts:
        _ip_batch(host.namespace, [
            "link set lo up",
            # 127.0.0.0/8 on lo would make every peer's 127.1.0.x address local to this host.
            "address del 127.0.0.1/8 dev lo",
            "address add 127.0.0.1/32 dev lo",
            # Created in the namespaces, the names never meet the root namespace's interfaces.
            f"link add eth0 type veth peer name v{host.host_id} netns {switch}",
            f"address add {host.address}/16 dev eth0",
            "link set eth0 up",
        ])  # fmt: skip
        # Without route_localnet the kernel drops 127/8 traffic off lo as martian.
        sysctl = ["sysctl", "-q", "-w", "net.ipv4.conf.all.route_localnet=1"]
        sysctl.append("net.ipv4.conf.eth0.route_localnet=1")
        _run(["ip", "netns", "exec", host.namespace, *sysctl])
    ports = [f"link set v{h.host_id} master br0 up" for h in lab.hosts]
    # The switch has an address of its own on the lab network, where hosts reach the control
    # plane (relayed to the root namespace's loopback, see deploy/stack.py).
    _ip_batch(switch, [
        "link set lo up", "address del 127.0.0.1/8 dev lo", "address add 127.0.0.1/32 dev lo",
        "link add br0 type bridge", f"address add {GATEWAY_ADDRESS}/16 dev br0", "link set br0 up", *ports,
    ])  # fmt: skip
    _run(["ip", "netns", "exec", switch, "sysctl", "-q", "-w", "net.ipv4.conf.all.route_localnet=1",
          "net.ipv4.conf.br0.route_localnet=1"])


def _ip_batch(namespace: str, commands: Sequence[str]) -> None:
    _run(["ip", "-n", namespace, "-batch", "-"], stdin="\n".join(commands) + "\n")


def _lab_namespaces(name: str) -> list[str]:
    listed = _run(["ip", "netns", "list"], check=False)
    # A host's own namespaces (its networks' DHCP servers) are named <name>-h<N>-<what>.
    pattern = re.compile(re.escape(name) + r"-(sw|h\d+(-[a-z0-9-]+)?)")
    return [n for n in (line.split(" ")[0] for line in listed.splitlines()) if pattern.fullmatch(n)]


def _start_daemons(lab: Lab, shared: Sequence[Path]) -> None:
    # Without a cached QEMU probe, one host pays for it and hands its cache to the others,
    # instead of every host probing at once on a small machine.
    cold = not any(CAPABILITIES_CACHE.glob("*.xml"))
    first = lab.hosts[:1] if cold else lab.hosts
    _launch_and_wait(first, shared, _COLD_START_TIMEOUT_S if cold else _WARM_START_TIMEOUT_S)
    # Refreshed on every start: libvirt re-probes by itself when QEMU or libvirt changed.
    _copy_files(lab.hosts[0].root_dir / _CAPABILITIES_SUBDIR, CAPABILITIES_CACHE)
    rest = lab.hosts[len(first) :]
    for host in rest:
        _copy_files(CAPABILITIES_CACHE, host.root_dir / _CAPABILITIES_SUBDIR)
    _launch_and_wait(rest, shared, _WARM_START_TIMEOUT_S)


def _launch_and_wait(hosts: Sequence[LabHost], shared: Sequence[Path], timeout_s: float) -> None:
    processes = [_launch_libvirtd(host, shared) for host in hosts]
    deadline = time.monotonic() + timeout_s
    for host, process in zip(hosts, processes):
        while not _libvirtd_answers(host.unix_uri, max(1.0, deadline - time.monotonic())):
            if process.poll() is not None or time.monotonic() > deadline:
                log = host.root_dir / "libvirtd.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise LabError(f"libvirtd of {host.host_id} did not answer; {log}:\n{tail}")
            time.sleep(0.2)


def _launch_script(host: LabHost, shared: Sequence[Path]) -> str:
    """Shell run in the host's new mount namespace: private dirs, hostname, then libvirtd."""
    root, q = host.root_dir, shlex.quote
    lines = ["set -e"]
    for directory in shared:
        if _private_parent(directory):
            # Bound into the host's copy first; the recursive bind below carries it along.
            mirror = root / directory.relative_to("/")
            lines.append(f"mount --bind {q(str(directory))} {q(str(mirror))}")
    for rel in PRIVATE_DIRS:
        lines.append(f"mkdir -p /{rel} && mount --rbind {q(str(root / rel))} /{rel}")
    lines.append(f"mount --bind {q(str(root / 'etc/hosts'))} /etc/hosts")
    lines.append(f"hostname {q(host.namespace)}")
    lines.append("virtlockd -d")  # the disk leases' lock daemon, on the host's private /run
    # tini reaps QEMU's double-forked parents at once (PID 1 here takes 1.5-2 s per destroy).
    lines.append("exec tini -s -- libvirtd --listen")
    return "\n".join(lines)


def _launch_libvirtd(host: LabHost, shared: Sequence[Path]) -> subprocess.Popen[bytes]:
    # `ip netns exec`, `unshare` and `sh -c 'exec ...'` all exec, so the PID is tini's. The UTS
    # namespace gives each host its own hostname. Private propagation keeps our mounts (and the
    # hidden /run/netns) inside; `ip netns del` still frees a namespace, as unlinking its file
    # detaches every copy of that mount.
    unshare = ["unshare", "--mount", "--uts", "--propagation", "private", "--"]
    script = _launch_script(host, shared)
    command = ["ip", "netns", "exec", host.namespace, *unshare, "sh", "-c", script]
    with open(host.root_dir / "libvirtd.log", "ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    _children[process.pid] = process
    (host.root_dir / "libvirtd.pid").write_text(f"{process.pid}\n")
    return process


def _libvirtd_answers(uri: str, timeout_s: float) -> bool:
    try:
        _run(["virsh", "-c", uri, "version"], timeout_s=timeout_s)
    except LabError:
        return False
    return True


def _stop_host(name: str, state_dir: Path, host_id: str) -> None:
    root = state_dir / "hosts" / host_id
    # Everything a host runs lives in its network namespace; once that is gone, pidfiles remain.
    in_namespace = _pids_in_namespace(f"{name}-{host_id}")
    pidfile = root / "libvirtd.pid"
    tini = _read_pid(pidfile)
    if tini and _runs_host_program(tini) and (in_namespace is None or tini in in_namespace):
        _remove_domains(_unix_uri(root))
        _signal(tini, signal.SIGTERM)  # tini passes it on to libvirtd
        if not _wait_gone([tini], _STOP_TIMEOUT_S):
            # tini gives libvirtd a process group of its own, so name both.
            stuck = [tini, *_child_pids(tini)]
            for pid in stuck:
                _signal(pid, signal.SIGKILL)
            _wait_gone(stuck, _STOP_TIMEOUT_S)
    pidfile.unlink(missing_ok=True)
    # What still runs is debris of a crash: QEMU outlives a killed libvirtd.
    if in_namespace is None:
        in_namespace = {p for p in map(_read_pid, (root / "run/libvirt/qemu").glob("*.pid")) if p}
    leftovers = [pid for pid in in_namespace if _runs_host_program(pid)]
    for pid in leftovers:
        _signal(pid, signal.SIGKILL)
    _wait_gone(leftovers, _STOP_TIMEOUT_S)
    _drop_host_networks(name, host_id)


def _drop_host_networks(name: str, host_id: str) -> None:
    """What a host held of its VMs' networks in memory goes with its power, as a reboot loses it:
    the DHCP servers and their namespaces, the bridges and tunnels, the filter rules."""
    namespace = f"{name}-{host_id}"
    for inner in (n for n in _lab_namespaces(name) if n.startswith(namespace + "-")):
        pids = [p for p in (_pids_in_namespace(inner) or set()) if _runs_host_program(p)]
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        _wait_gone(pids, _STOP_TIMEOUT_S)
        _run(["ip", "netns", "del", inner], check=False)
    if _pids_in_namespace(namespace) is None:
        return
    links = _run(["ip", "-n", namespace, "-o", "link", "show"], check=False)
    for link in re.findall(r"^\d+: (vn[bxd]-\d+)[@:]", links, re.M):
        _run(["ip", "-n", namespace, "link", "del", link], check=False)
    _run(["ip", "netns", "exec", namespace, "nft", "flush", "ruleset"], check=False)


def _remove_domains(uri: str) -> None:
    try:
        names = _run(["virsh", "-c", uri, "list", "--all", "--name"], timeout_s=5.0).split()
    except LabError:
        return  # libvirtd does not answer; its QEMU processes are killed afterwards
    for domain in names:
        _run(["virsh", "-c", uri, "destroy", domain], check=False)
        _run(["virsh", "-c", uri, "undefine", "--nvram", "--managed-save", domain], check=False)


def _pids_in_namespace(namespace: str) -> set[int] | None:
    """PIDs living in the named network namespace; None if the namespace does not exist."""
    try:
        inode = os.stat(f"/run/netns/{namespace}").st_ino
    except OSError:
        return None
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.stat(entry / "ns/net").st_ino == inode:
                pids.add(int(entry.name))
        except OSError:
            continue  # exited meanwhile
    return pids


def _runs_host_program(pid: int) -> bool:
    """Whether `pid` is a live tini, libvirtd or QEMU: a PID read from a file may be reused."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except (OSError, UnicodeDecodeError):
        return False
    return Path(argv0).name.startswith(_HOST_PROGRAMS) and not _is_gone(pid)


def _is_gone(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _children.pop(pid, None)
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"  # a zombie is dead; only its parent can still reap it


def _wait_gone(pids: Iterable[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    remaining = [p for p in pids if not _is_gone(p)]
    while remaining:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
        remaining = [p for p in remaining if not _is_gone(p)]
    return True


def _child_pids(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _run(
    argv: list[str], check: bool = True, timeout_s: float = _COMMAND_TIMEOUT_S, stdin: str = ""
) -> str:
    """Run a short command and return its stdout; LabError on failure when `check`."""
    try:
        result = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired as exc:
        if check:
            raise LabError(f"{shlex.join(argv)} timed out after {timeout_s:.0f} s") from exc
        return ""
    if check and result.returncode != 0:
        raise LabError(f"{shlex.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout
