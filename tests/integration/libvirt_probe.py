"""What a person would check on a host, asked through virsh rather than through vmflow."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from deploy.lab_faults import wait_for_value


class LibvirtProbe:
    def __init__(self, uris: dict[str, str]) -> None:
        self.uris = uris

    def virsh(self, host_id: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["virsh", "-q", "-c", self.uris[host_id], *args],
                              capture_output=True, text=True, timeout=30, check=check)

    def domain_uuids(self, host_id: str) -> set[str]:
        """Domains defined on the host; none when its libvirtd is not there (a powered-off host)."""
        out = self.virsh(host_id, "list", "--all", "--uuid", check=False).stdout
        return {line.strip() for line in out.splitlines() if line.strip()}

    def state(self, host_id: str, vm_id: str) -> str:
        result = self.virsh(host_id, "domstate", vm_id, check=False)
        return result.stdout.strip() if result.returncode == 0 else "absent"

    def _serial(self, host_id: str, vm_id: str, port: str) -> ET.Element:
        root = ET.fromstring(self.virsh(host_id, "dumpxml", vm_id).stdout)
        return next(s for s in root.findall("devices/serial") if s.find("target").get("port") == port)

    def console_path(self, host_id: str, vm_id: str) -> Path:
        """The log of the VM's interactive console (ttyS0, a pty)."""
        return Path(self._serial(host_id, vm_id, "0").find("log").get("file"))

    def guest_log_path(self, host_id: str, vm_id: str) -> Path:
        """The file behind the VM's second serial port (ttyS1), where the lab guest counts."""
        return Path(self._serial(host_id, vm_id, "1").find("source").get("path"))

    def disk_path(self, host_id: str, vm_id: str) -> Path:
        root = ET.fromstring(self.virsh(host_id, "dumpxml", vm_id).stdout)
        return Path(root.find("devices/disk/source").get("file"))

    def where(self, vm_id: str) -> list[str]:
        return [h for h in self.uris if vm_id in self.domain_uuids(h)]


def wait_until(check, timeout_s: float = 30.0, interval_s: float = 0.2, what: str = "condition"):
    """The first truthy answer of ``check``; a test failure after ``timeout_s``."""
    try:
        return wait_for_value(check, timeout_s, what, interval_s)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None
