from __future__ import annotations

from services.scheduler.liveness import LivenessPolicy
from services.scheduler.placement import PlacementPolicy, WeighPolicy
from shared.settings import CommonSettings


class SchedulerSettings(CommonSettings):
    heartbeat_timeout_s: float = 5.0  # placement skips a host silent for longer
    # Failure detection: a host is failed when its heartbeat and its peers are silent this long.
    failure_timeout_s: float = 5.0
    fleet_silence_fraction: float = 0.5
    grace_after_outage_s: float = 10.0
    liveness_interval_s: float = 0.5
    failover_boot_timeout_s: float = 120.0
    claim_ttl_s: float = 600.0
    # A claim of a VM its host reports leaves the store only once this replica has seen it
    # reported this long: by then every replica has that beat, so none counts the VM by neither
    # its claim nor its domain (a replica still on an older beat would overbook the host).
    claim_settle_after_s: float = 3.0
    cpu_allocation_ratio: float = 4.0
    ram_allocation_ratio: float = 1.0
    disk_allocation_ratio: float = 1.0
    weigh_policy: WeighPolicy = WeighPolicy.SPREAD
    cluster_policies: dict[str, WeighPolicy] = {}  # e.g. {"batch": "pack"}
    soft_affinity_weight: float = 2.0
    placement_sample_size: int = 128  # feasible hosts weighed per decision; 0: every one
    host_admin_bucket: str = "vmflow_host_admin"
    claims_bucket: str = "vmflow_claims"  # every replica's capacity claims, one entry per host

    def placement_policy(self) -> PlacementPolicy:
        return PlacementPolicy(
            cpu_allocation_ratio=self.cpu_allocation_ratio,
            ram_allocation_ratio=self.ram_allocation_ratio,
            disk_allocation_ratio=self.disk_allocation_ratio,
            weigh=self.weigh_policy,
            cluster_weigh=dict(self.cluster_policies),
            soft_affinity_weight=self.soft_affinity_weight,
            sample_size=self.placement_sample_size or None,
        )

    def liveness_policy(self) -> LivenessPolicy:
        return LivenessPolicy(self.failure_timeout_s, self.fleet_silence_fraction, self.grace_after_outage_s)
