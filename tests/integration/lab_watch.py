"""A watch on the lab for the length of a test session: when a host's libvirtd stops answering,
or its worker falls silent, what it was doing is written down at once (the libvirtd's threads'
kernel and user stacks and its log's tail; the worker's Python stacks), before the platform fences
that host and the evidence is gone with it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from deploy import lab
from deploy.client import VmflowClient
from deploy.processes import read_pid

POLL_INTERVAL_S = 10.0
ANSWER_TIMEOUT_S = 10.0
MISSES_BEFORE_DIAGNOSIS = 2  # one slow answer on a loaded machine is not a hang
LOG_TAIL_LINES = 40
GDB_TIMEOUT_S = 60.0
STACK_DUMP_WAIT_S = 1.0


class LabWatch:
    """Polls each lab host's libvirtd, and the hosts' states through the API, in a thread of its
    own; ``reports`` holds what it found."""

    def __init__(self, the_lab: lab.Lab, run_dir: Path, api: VmflowClient) -> None:
        self._lab = the_lab
        self._run_dir = run_dir
        self._api = api
        self._stop = threading.Event()
        self._misses: dict[str, int] = {}
        self._silent_workers: set[str] = set()
        self.reports: list[str] = []  # each stuck spell once, at its start
        self._thread = threading.Thread(target=self._run, name="lab-watch", daemon=True)

    def start(self) -> LabWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(ANSWER_TIMEOUT_S + GDB_TIMEOUT_S)

    def _run(self) -> None:
        while not self._stop.wait(POLL_INTERVAL_S):
            self._watch_workers()
            for host in self._lab.hosts:
                if not lab.host_powered(self._lab.name, self._lab.state_dir, host.host_id):
                    continue  # powered off on purpose by a test
                if _answers(host.unix_uri):
                    self._misses[host.host_id] = 0
                    continue
                self._misses[host.host_id] = self._misses.get(host.host_id, 0) + 1
                if self._misses[host.host_id] == MISSES_BEFORE_DIAGNOSIS:
                    self.reports.append(diagnose(host))


    def _watch_workers(self) -> None:
        try:
            hosts = self._api.call("GET", "/v1/hosts")
        except Exception:
            return  # the API away is another test's business
        for host in hosts:
            host_id = host["id"]
            if host.get("state") != "worker_silent":
                self._silent_workers.discard(host_id)
            elif host_id not in self._silent_workers:  # a test may freeze a worker on purpose, too
                self._silent_workers.add(host_id)
                self.reports.append(dump_worker_stacks(self._run_dir, host_id))

    def close(self) -> None:
        self._api.close()


def dump_worker_stacks(run_dir: Path, host_id: str) -> str:
    """Ask a silent host's worker for its threads' stacks (SIGUSR1) and return them from its log."""
    name = f"host-worker-{host_id}"
    pid = read_pid(run_dir, name)
    log_file = run_dir / "logs" / f"{name}.log"
    if pid is None:
        return f"the worker of {host_id} is worker_silent and has no pid file"
    offset = log_file.stat().st_size if log_file.exists() else 0
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        return f"the worker of {host_id} (pid {pid}) is worker_silent and gone"
    time.sleep(STACK_DUMP_WAIT_S)
    with open(log_file, "rb") as log:
        log.seek(offset)
        dumped = log.read().decode(errors="replace")
    lines = [line for line in dumped.splitlines() if not line.startswith("{")]  # not the JSON log lines
    # One block per thread; a pool thread waiting for work says nothing.
    blocks = [block for block in "\n".join(lines).split("\n\n") if block.strip() and not _idle(block)]
    return "\n\n".join([f"the worker of {host_id} (pid {pid}) is worker_silent; its busy threads:", *blocks])


def _idle(thread_block: str) -> bool:
    """Whether a thread's stack (innermost frame first) is a pool thread waiting for work."""
    frames = [line for line in thread_block.splitlines() if line.lstrip().startswith("File ")]
    return bool(frames) and frames[0].rstrip().endswith("in _worker") and "concurrent/futures" in frames[0]


def _answers(uri: str) -> bool:
    try:
        return subprocess.run(["virsh", "-q", "-c", uri, "version"], capture_output=True,
                              timeout=ANSWER_TIMEOUT_S).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def diagnose(host: lab.LabHost) -> str:
    """What a libvirtd that does not answer is doing: every thread's state, kernel stack and, when
    gdb is installed, user stack; then the tail of its log."""
    lines = [f"libvirtd of {host.host_id} has not answered for {MISSES_BEFORE_DIAGNOSIS} polls "
             f"of {ANSWER_TIMEOUT_S:.0f} s"]
    pid = _libvirtd_pid(host)
    if pid is None:
        lines.append("no libvirtd process found")
    else:
        lines.append(f"libvirtd pid {pid}")
        for task in sorted(Path(f"/proc/{pid}/task").glob("*"), key=lambda p: int(p.name)):
            comm = _read(task / "comm").strip()
            state = next((line for line in _read(task / "status").splitlines() if line.startswith("State:")), "")
            stack = " < ".join(line.split()[-1] for line in _read(task / "stack").splitlines()[:6])
            lines.append(f"  thread {task.name} {comm}: {state} wchan={_read(task / 'wchan')} {stack}")
        if shutil.which("gdb"):
            try:
                gdb = subprocess.run(["gdb", "-batch", "-p", str(pid), "-ex", "thread apply all bt 12"],
                                     capture_output=True, text=True, timeout=GDB_TIMEOUT_S)
                lines.extend(line for line in gdb.stdout.splitlines() if line.startswith(("#", "Thread")))
            except subprocess.TimeoutExpired:
                lines.append("gdb did not finish")
    log = _read(host.root_dir / "libvirtd.log").splitlines()
    lines.append(f"the last {LOG_TAIL_LINES} lines of {host.root_dir / 'libvirtd.log'}:")
    lines.extend(log[-LOG_TAIL_LINES:])
    return "\n".join(lines)


def _libvirtd_pid(host: lab.LabHost) -> int | None:
    tini = _read(host.root_dir / "libvirtd.pid").strip()
    if not tini.isdigit():
        return None
    children = _read(Path(f"/proc/{tini}/task/{tini}/children")).split()
    return next((int(c) for c in children if _read(Path(f"/proc/{c}/comm")).strip() == "libvirtd"), None)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
