"""Starting and stopping the local processes of a stack: detached, logged, tracked by pid file."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def start_process(name: str, argv: Sequence[str], run_dir: Path, env: Mapping[str, str] | None = None,
                  cwd: Path | None = None) -> int:
    """Start ``argv`` in its own session (so stopping it takes its children too), output to
    ``logs/<name>.log``, pid to ``pids/<name>.pid``. Returns the pid."""
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    (run_dir / "pids").mkdir(parents=True, exist_ok=True)
    log = open(run_dir / "logs" / f"{name}.log", "ab")
    proc = subprocess.Popen(
        list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
    )
    log.close()
    (run_dir / "pids" / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def read_pid(run_dir: Path, name: str) -> int | None:
    try:
        return int((run_dir / "pids" / f"{name}.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None


def is_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_process(run_dir: Path, name: str, timeout_s: float = 10.0) -> bool:
    """SIGTERM the process group we started, SIGKILL it after ``timeout_s``. Idempotent."""
    pid = read_pid(run_dir, name)
    if pid is None:
        return False
    was_alive = is_alive(pid)
    if was_alive:
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while is_alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)
        if is_alive(pid):
            _signal_group(pid, signal.SIGKILL)
            time.sleep(0.1)
        _reap(pid)
    (run_dir / "pids" / f"{name}.pid").unlink(missing_ok=True)
    return was_alive


def crash_process(run_dir: Path, name: str) -> bool:
    """SIGKILL the process group at once, as a crash would: no shutdown of any kind. For tests of
    what survives one. Returns whether it was alive."""
    pid = read_pid(run_dir, name)
    was_alive = is_alive(pid)
    if was_alive:
        _signal_group(pid, signal.SIGKILL)
        while is_alive(pid):
            _reap(pid)
            time.sleep(0.05)
    return was_alive


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # started with start_new_session: pgid == pid, all ours
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# Below the kernel's ephemeral range (32768+), so outgoing connections never take a port between
# the moment it is picked here and the moment its server binds it; random, so stacks started
# side by side rarely pick the same one.
_PORT_RANGE = (20000, 32000)


_handed_out: set[int] = set()  # free now, but maybe not bound yet by the one that asked for it


def free_port() -> int:
    """A port nothing listens on, never the same twice in one process."""
    for _ in range(100):
        port = random.randint(*_PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port found")


def port_open(port: int, host: str = "127.0.0.1", timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for(check, timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not ready after {timeout_s:g} s")
