from __future__ import annotations

from shared.settings import CommonSettings


class ApiSettings(CommonSettings):
    database_url: str = "sqlite:///./vmflow.db"
    listen_host: str = "127.0.0.1"
    listen_port: int = 8000
    default_tenant: str = "default"
    max_vcpus: int = 32
    max_memory_mib: int = 262_144
    max_disk_gib: int = 2_048
    boot_timeout_s: float = 180.0
    request_timeout_s: float = 5.0
