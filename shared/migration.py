"""Live migration as data: the convergence policy, progress built from libvirt job stats, and
the pure decision of what to do next (after vdsm's migration schedule).

Pure: imported by workflows, the host-worker's migration loop and unit tests alike.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from shared.guest import VmSetup
from shared.models import Placement, PlacementRequest, RootDisk, VmSummary
from shared.storage_models import PoolKind


@dataclass(frozen=True)
class ConvergencePolicy:
    """How a live migration is driven to its end.

    The downtime limit starts at the first step and rises one step each time the migration
    stalls (the memory left to copy stops shrinking for ``stall_iterations`` passes). Past the
    last step it switches to post-copy if allowed; it always aborts at ``completion_timeout_s``,
    leaving the VM running on the source.
    """

    downtime_steps_ms: tuple[int, ...] = (100, 200, 400, 800, 1600)
    stall_iterations: int = 2
    auto_converge: bool = True  # let QEMU throttle the guest's vCPUs when it dirties too fast
    post_copy: bool = False  # switch to post-copy after the last downtime step
    completion_timeout_s: float = 120.0
    bandwidth_mib_s: int = 0  # 0: unlimited
    poll_interval_s: float = 0.5


@dataclass(frozen=True)
class MigrationProgress:
    """One look at a running migration: libvirt's job stats plus what the loop has done."""

    elapsed_ms: int = 0
    iteration: int = 0
    data_total_mib: int = 0
    data_processed_mib: int = 0
    data_remaining_mib: int = 0
    dirty_rate_mib_s: float = 0.0
    downtime_limit_ms: int = 0
    stalled_iterations: int = 0  # passes in which the remaining data did not reach a new low
    post_copy: bool = False  # already switched to post-copy

    @property
    def percent(self) -> int:
        """Share of the data sent so far; passes re-send dirtied memory, so it can go down."""
        moved = self.data_processed_mib + self.data_remaining_mib
        return min(100, round(100 * self.data_processed_mib / moved)) if moved else 0


class ActionKind(StrEnum):
    WAIT = "wait"
    SET_DOWNTIME = "set_downtime"
    POST_COPY = "post_copy"
    ABORT = "abort"


@dataclass(frozen=True)
class MigrationAction:
    kind: ActionKind
    downtime_ms: int | None = None
    reason: str = ""


def next_action(progress: MigrationProgress, policy: ConvergencePolicy) -> MigrationAction:
    """What the migration loop should do now. Deterministic, no I/O."""
    if progress.elapsed_ms >= policy.completion_timeout_s * 1000:
        return MigrationAction(ActionKind.ABORT, reason=f"did not complete within {policy.completion_timeout_s:g} s")
    if progress.post_copy or progress.stalled_iterations < policy.stall_iterations:
        return MigrationAction(ActionKind.WAIT)
    higher = [step for step in policy.downtime_steps_ms if step > progress.downtime_limit_ms]
    if higher:
        return MigrationAction(
            ActionKind.SET_DOWNTIME, downtime_ms=higher[0],
            reason=f"stalled for {progress.stalled_iterations} passes at {progress.data_remaining_mib} MiB left",
        )
    if policy.post_copy:
        return MigrationAction(ActionKind.POST_COPY, reason="stalled at the highest downtime step")
    return MigrationAction(ActionKind.WAIT)


def observe(previous: MigrationProgress, current: MigrationProgress, best_remaining_mib: int
            ) -> tuple[MigrationProgress, int]:
    """Fold a fresh look (``current``, from job stats) into the loop's running view: a new pass
    that does not reach a new low of remaining data counts as stalled; the post-copy switch is
    the loop's own fact and carries over. Returns the new progress and the new best."""
    stalled, best = previous.stalled_iterations, best_remaining_mib
    if current.iteration > previous.iteration:
        if current.data_remaining_mib < best_remaining_mib:
            stalled, best = 0, current.data_remaining_mib
        else:
            stalled += 1
    merged = replace(current, stalled_iterations=stalled, post_copy=previous.post_copy or current.post_copy)
    return merged, best


def after_escalation(progress: MigrationProgress) -> MigrationProgress:
    """A new downtime limit deserves a fresh chance to converge."""
    return replace(progress, stalled_iterations=0)


@dataclass(frozen=True)
class MigrateInput:
    """What the LiveMigrate workflow needs: the VM as the inventory knows it."""

    vm: VmSummary
    target_host_id: str | None = None  # None: the scheduler picks, never the source
    policy: ConvergencePolicy = ConvergencePolicy()
    claimed: bool = False  # the caller already marked the VM busy with this operation
    # The VM's NICs, networks and seed as the caller read them once it had claimed the VM (which
    # then changes none of them); None: the workflow reads them.
    setup: VmSetup | None = None
    # Where its root volume is, as the caller read it then; None: the workflow asks storage.
    root: RootDisk | None = None
    # The target the caller placed it on (its claim held there) once it had claimed the VM;
    # None: the workflow places it.
    placement: Placement | None = None


def migration_placement(vm: VmSummary, target_host_id: str | None) -> PlacementRequest:
    """Where a move may go: room for the VM (its disk too when it moves along, from the source's
    own pool), its labels and group, never its source; ``target_host_id``: only there."""
    return PlacementRequest(
        vm.vm_id, vm.vcpus, vm.memory_mib, vm.disk_gib if vm.storage is PoolKind.LOCAL else 0,
        required_labels=vm.required_labels, group=vm.group, exclude_hosts=(vm.host_id or "",),
        only_host=target_host_id,
    )


@dataclass(frozen=True)
class MaintenanceInput:
    host_id: str
    concurrency: int = 2
    policy: ConvergencePolicy = ConvergencePolicy()


@dataclass(frozen=True)
class DiskMove:
    """A disk on the source host's own storage and the path its copy has on the destination."""

    source_path: str
    dest_path: str


@dataclass(frozen=True)
class MigrateRequest:
    """Run on the source host's queue: move ``vm_id`` to the host behind ``dest_uri``."""

    vm_id: str
    dest_host_id: str
    dest_uri: str  # libvirt URI the source daemon reaches the destination by (peer to peer)
    live: bool = True
    # Disks on the source's own storage: a live migration copies them into these (pre-made)
    # files, a cold one finds them copied there already. Every other disk is on shared storage.
    disk_moves: tuple[DiskMove, ...] = ()
    policy: ConvergencePolicy = ConvergencePolicy()


@dataclass(frozen=True)
class MigrateResult:
    vm_id: str
    dest_host_id: str
    elapsed_ms: int
    downtime_ms: int | None  # as the destination's completed job stats report it
    data_transferred_mib: int
    final_downtime_limit_ms: int
    post_copy: bool = False
    # The source dropped what it carried for the VM (its networks) once the VM had left; when
    # False (it could not, or a worker that does not) the workflow asks it.
    source_released: bool = False


def whereabouts(source: str, target: str | None, source_state: str | None,
                target_state: str | None) -> tuple[str, bool]:
    """Where a VM is after a move failed, from what each host's libvirt said ("absent", a domain
    state, or None when the host could not be asked). Returns (host, confirmed). The source
    vouches by having the domain at all; the target only by running it (or holding the moved
    definition of a stopped VM): a paused domain there may be an incoming copy that never took
    over. Otherwise the source is assumed, unconfirmed."""
    if source_state not in (None, "absent"):
        return source, True
    if target and target_state in ("running", "shutoff"):
        return target, True  # the move completed before the failure (an answer lost on the way)
    return source, False
