from __future__ import annotations

from shared.settings import CommonSettings


class ApiSettings(CommonSettings):
    database_url: str = "sqlite:///./vmflow.db"
    listen_host: str = "127.0.0.1"
    listen_port: int = 8000
    # Where the API keeps a working admin token (made at start when missing; mode 0600).
    admin_token_file: str | None = None
    token_cache_s: float = 60.0  # how long a verified token secret skips Argon2
    max_vcpus: int = 32
    max_memory_mib: int = 262_144
    max_disk_gib: int = 2_048
    boot_timeout_s: float = 180.0
    request_timeout_s: float = 5.0
    # The Temporal Web UI's address (http://127.0.0.1:8233): operations link to their page there.
    temporal_ui_url: str | None = None
    portal_session_s: int = 43_200  # a portal sign-in lasts this long at most (and never past its token)
    portal_secure_cookie: bool = False  # True behind HTTPS: the session cookie is then never sent in clear
