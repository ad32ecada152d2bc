"""A watch on the lab's libvirtds for the length of a test session: when one stops answering, what
it was doing is written down at once (its threads' kernel and user stacks, its log's tail), before
the platform fences that host and the evidence is gone with it."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

from deploy import lab

POLL_INTERVAL_S = 10.0
ANSWER_TIMEOUT_S = 10.0
MISSES_BEFORE_DIAGNOSIS = 2  # one slow answer on a loaded machine is not a hang
LOG_TAIL_LINES = 40
GDB_TIMEOUT_S = 60.0


class LabWatch:
    """Polls each lab host's libvirtd in a thread of its own; ``reports`` holds what it found."""

    def __init__(self, the_lab: lab.Lab) -> None:
        self._lab = the_lab
        self._stop = threading.Event()
        self._misses: dict[str, int] = {}
        self.reports: dict[str, str] = {}
        self._thread = threading.Thread(target=self._run, name="lab-watch", daemon=True)

    def start(self) -> LabWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(ANSWER_TIMEOUT_S + GDB_TIMEOUT_S)

    def _run(self) -> None:
        while not self._stop.wait(POLL_INTERVAL_S):
            for host in self._lab.hosts:
                if host.host_id in self.reports or not lab.host_powered(self._lab.name, self._lab.state_dir,
                                                                        host.host_id):
                    continue  # reported once already, or powered off on purpose by a test
                if _answers(host.unix_uri):
                    self._misses[host.host_id] = 0
                    continue
                self._misses[host.host_id] = self._misses.get(host.host_id, 0) + 1
                if self._misses[host.host_id] >= MISSES_BEFORE_DIAGNOSIS:
                    self.reports[host.host_id] = diagnose(host)


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
