from __future__ import annotations

from services.scheduler.placement import WeighPolicy
from shared.settings import CommonSettings


class SchedulerSettings(CommonSettings):
    heartbeat_timeout_s: float = 10.0
    claim_ttl_s: float = 600.0
    cpu_allocation_ratio: float = 4.0
    ram_allocation_ratio: float = 1.0
    weigh_policy: WeighPolicy = WeighPolicy.SPREAD
