from __future__ import annotations

from typing import Literal

from shared.settings import CommonSettings


class HostWorkerSettings(CommonSettings):
    host_id: str = "h1"
    libvirt_uri: str = "qemu:///system"
    # "qemu" (TCG) where KVM cannot boot guests, "kvm" on real hosts; "auto" picks kvm when
    # /dev/kvm exists. Nested setups without hardware support must say "qemu" explicitly.
    domain_type: Literal["auto", "kvm", "qemu"] = "auto"
    console_dir: str = "/var/lib/vmflow/consoles"
    labels: list[str] = []  # what VMs may require of the host, e.g. ["ssd", "zone=a"]
    cluster: str = "default"
    migration_uri: str = ""  # how other hosts reach this one's libvirtd, e.g. qemu+tcp://10.0.0.5/system
    reserved_memory_mib: int = 512  # kept for the host itself, never offered to guests
    local_disk_dir: str = "/var/lib/libvirt/images"  # its free space is the host's disk capacity
    heartbeat_interval_s: float = 1.0
    peer_probe_timeout_s: float = 1.0
    libvirt_threads: int = 32
    console_poll_interval_s: float = 0.05
