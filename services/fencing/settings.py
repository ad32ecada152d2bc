from __future__ import annotations

from shared.settings import CommonSettings


class FencerSettings(CommonSettings):
    fence_config: str = "/etc/vmflow/fencing.json"
    fence_timeout_s: float = 20.0
