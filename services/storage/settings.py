from __future__ import annotations

from shared.settings import CommonSettings


class StorageSettings(CommonSettings):
    pool_name: str = "shared"
    pool_dir: str = "/var/lib/vmflow/pools/shared"
    # Each host's local pool: host id -> directory (VMFLOW_LOCAL_POOLS, JSON). The pool of
    # host h1 is named "local-h1" and only VMs on h1 can use its volumes.
    local_pools: dict[str, str] = {}
    # Where image files may be imported from; empty means "<pool_dir>/incoming". Anything
    # else is refused, so an import can never read, say, /etc/shadow into an image.
    import_dirs: list[str] = []
    max_image_virtual_gib: int = 256
    max_image_file_gib: int = 64
    max_volume_gib: int = 2048
    qemu_img_timeout_s: float = 30.0  # for quick calls (info, snapshot); copies heartbeat instead

