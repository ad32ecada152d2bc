"""A fence agent for lab hosts, following the fence-agents convention (what Pacemaker and oVirt
run as fence_ipmilan, fence_redfish, ...): options on stdin as ``name=value`` lines.

    lab=<lab name>  state_dir=<the lab's state dir>  plug=<host id>  action=off|on|status|reboot

Exit status 0 when done; for ``status`` 0 when the host is on and 2 when it is off; 1 on error.
Powering off kills every process of the host at once (libvirtd, each QEMU), like pulling the
plug: from outside the host, so it works while the host is cut off from the network.

Standard library only: run it as ``python3 -m deploy.fence_lab`` or ``python3 deploy/fence_lab.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy import lab  # noqa: E402

STATUS_ON, STATUS_OFF, FAILED = 0, 2, 1


def parse_options(text: str) -> dict[str, str]:
    options = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            options[key.strip()] = value.strip()
    return options


def main() -> int:
    options = parse_options(sys.stdin.read())
    action = options.get("action", "reboot")
    try:
        name, state_dir, host_id = options["lab"], Path(options["state_dir"]), options.get("plug") or options["port"]
    except KeyError as missing:
        print(f"missing option {missing}", file=sys.stderr)
        return FAILED
    try:
        if action in ("off", "reboot"):
            lab.power_off_host(name, state_dir, host_id)
        if action in ("on", "reboot"):
            lab.power_on_host(name, state_dir, host_id)
        if action not in ("off", "on", "reboot", "status"):
            print(f"unknown action {action}", file=sys.stderr)
            return FAILED
        on = lab.host_powered(name, state_dir, host_id)
        print(f"Status: {'ON' if on else 'OFF'}")
        if action == "status":
            return STATUS_ON if on else STATUS_OFF
        return 0 if on == (action != "off") else FAILED
    except lab.LabError as exc:
        print(str(exc), file=sys.stderr)
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
