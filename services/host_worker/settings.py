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
    # A look at libvirt (capacity, domains) not answered by then makes a heartbeat say libvirt
    # is not ok. Longer than the scheduler's failure timeout: never stricter than silence was.
    libvirt_answer_timeout_s: float = 8.0
    peer_probe_timeout_s: float = 1.0
    # How many peers each host probes in a fleet larger than that (its successors in the ring of
    # host ids): every host has that many witnesses, and a heartbeat's peer report stays small.
    peer_watch_count: int = 8
    libvirt_threads: int = 32
    console_poll_interval_s: float = 0.05
    # Networks: this host's end of the VXLAN tunnels (default: the host of migration_uri), the
    # prefix of the DHCP namespaces it makes (distinct per host when several share a kernel, as
    # in the lab), where it keeps dnsmasq's files, and where VMs' cloud-init seeds go (shared
    # storage, so a VM that moves finds its seed where it arrives).
    overlay_address: str = ""
    netns_prefix: str = "vmflow-"
    network_state_dir: str = "/var/lib/vmflow/networks"
    seed_dir: str = "/var/lib/vmflow/seeds"
    peer_sync_interval_s: float = 5.0
