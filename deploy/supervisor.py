"""Keeps the processes ``vmflow up`` started running: one that exits is started again, with a
backoff (0.5 s doubling to 30 s, back to 0.5 s once it stayed up a minute), and every restart is
logged and counted. What production does with one systemd unit per service (deploy/systemd).

    python -m deploy.supervisor <run dir>

The processes to keep are listed in ``<run dir>/supervised.json`` (name -> argv, env, cwd);
restart counts go to ``<run dir>/supervisor-state.json``. Standard library only.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from deploy.processes import is_alive, read_pid, start_process

SUPERVISED_FILE = "supervised.json"
STATE_FILE = "supervisor-state.json"
FIRST_BACKOFF_S, MAX_BACKOFF_S, STABLE_AFTER_S = 0.5, 30.0, 60.0


def _log(run_dir: Path, **fields) -> None:
    with open(run_dir / "logs" / "supervisor.log", "a") as out:
        out.write(json.dumps({"time_s": round(time.time(), 3), **fields}) + "\n")


def _reap_children() -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def supervise(run_dir: Path, interval_s: float = 0.25) -> None:
    stop = False

    def on_signal(_signum, _frame) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    backoff: dict[str, float] = {}
    next_try: dict[str, float] = {}
    up_since: dict[str, float] = {}
    restarts: dict[str, int] = {}
    while not stop:
        _reap_children()
        try:
            specs = json.loads((run_dir / SUPERVISED_FILE).read_text())
        except (FileNotFoundError, ValueError):
            specs = {}
        now = time.monotonic()
        for name, spec in specs.items():
            if is_alive(read_pid(run_dir, name)):
                up_since.setdefault(name, now)
                if now - up_since[name] > STABLE_AFTER_S:
                    backoff.pop(name, None)
                continue
            up_since.pop(name, None)
            if now < next_try.get(name, 0.0):
                continue
            wait_s = backoff.get(name, FIRST_BACKOFF_S)
            if name not in next_try:  # noticed just now: wait the backoff first
                next_try[name] = now + wait_s
                _log(run_dir, event="exited", name=name, restart_in_s=wait_s)
                continue
            pid = start_process(name, spec["argv"], run_dir, spec.get("env"), Path(spec["cwd"]) if spec.get("cwd") else None)
            restarts[name] = restarts.get(name, 0) + 1
            backoff[name] = min(MAX_BACKOFF_S, wait_s * 2)
            next_try.pop(name, None)
            _log(run_dir, event="restarted", name=name, pid=pid, restarts=restarts[name])
            (run_dir / STATE_FILE).write_text(json.dumps({"restarts": restarts}, indent=2))
        time.sleep(interval_s)


if __name__ == "__main__":
    supervise(Path(sys.argv[1]).resolve())
