"""Fence agents, the way Pacemaker and oVirt drive them: a ``fence_*`` program that reads its
options from stdin as ``name=value`` lines, ``action`` among them (off, on, status, reboot).
Exit status 0 means done; for ``status``, 0 means the power is on and 2 that it is off.

A site plugs in ``fence_ipmilan``, ``fence_redfish`` or any other agent per host in the fencing
configuration; the lab ships ``deploy/fence_lab.py``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import FenceFailed, InvalidRequest

ACTIONS = ("off", "on", "status", "reboot")
STATUS_ON, STATUS_OFF = 0, 2


@dataclass(frozen=True)
class AgentConfig:
    argv: tuple[str, ...]
    options: dict[str, str] = field(default_factory=dict)


def load_config(path: Path, host_id: str) -> AgentConfig:
    """The host's agent from the JSON file (``{"hosts": {id: {"agent": [...], "options": {...}}},
    "default": {...}}``), read on every call so a fixed agent applies at once. Raises
    InvalidRequest when the host has none."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidRequest(f"no fencing configuration at {path}") from None
    entry = data.get("hosts", {}).get(host_id) or data.get("default")
    if not entry or not entry.get("agent"):
        raise InvalidRequest(f"no fence agent configured for host {host_id}")
    options = {k: str(v).replace("{host}", host_id) for k, v in entry.get("options", {}).items()}
    return AgentConfig(tuple(entry["agent"]), options)


async def run_agent(config: AgentConfig, action: str, timeout_s: float) -> tuple[int, str]:
    """(exit status, what the agent printed). Raises FenceFailed when it cannot run or hangs."""
    if action not in ACTIONS:
        raise InvalidRequest(f"fence action must be one of {', '.join(ACTIONS)}")
    stdin = "".join(f"{k}={v}\n" for k, v in {**config.options, "action": action}.items())
    try:
        proc = await asyncio.create_subprocess_exec(
            *config.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
    except OSError as exc:
        raise FenceFailed(f"cannot run fence agent {config.argv[0]}: {exc.strerror}") from exc
    try:
        out, _ = await asyncio.wait_for(proc.communicate(stdin.encode()), timeout_s)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise FenceFailed(f"fence agent {config.argv[0]} did not finish '{action}' within {timeout_s:g} s") from None
    return proc.returncode or 0, out.decode(errors="replace").strip()[-500:]


async def power(config: AgentConfig, action: str, timeout_s: float) -> str:
    """Run ``action`` and confirm it with ``status``; returns the power state ("off" or "on").
    Raises FenceFailed when the agent fails or the host is not in the state asked for."""
    if action != "status":
        code, out = await run_agent(config, action, timeout_s)
        if code != 0:
            raise FenceFailed(f"fence agent {Path(config.argv[-1]).name} '{action}' exited {code}: {out or 'no output'}")
    code, out = await run_agent(config, "status", timeout_s)
    if code not in (STATUS_ON, STATUS_OFF):
        raise FenceFailed(f"fence agent status exited {code}: {out or 'no output'}")
    state = "on" if code == STATUS_ON else "off"
    wanted = {"off": "off", "on": "on", "reboot": "on"}.get(action)
    if wanted is not None and state != wanted:
        raise FenceFailed(f"after '{action}' the host is still {state}")
    return state
