from __future__ import annotations

from shared.settings import CommonSettings


class StorageSettings(CommonSettings):
    pool_name: str = "shared"
    pool_dir: str = "/var/lib/vmflow/pools/shared"
