"""The convergence policy on plain values: when a stalled migration escalates, and when it ends."""

from __future__ import annotations

from shared.migration import (
    ActionKind,
    ConvergencePolicy,
    MigrationProgress,
    after_escalation,
    next_action,
    observe,
    whereabouts,
)

POLICY = ConvergencePolicy(downtime_steps_ms=(100, 300, 900), stall_iterations=2, completion_timeout_s=60)


def look(**fields) -> MigrationProgress:
    return MigrationProgress(**{"elapsed_ms": 1000, "downtime_limit_ms": 100, **fields})


def test_a_converging_migration_is_left_alone():
    assert next_action(look(stalled_iterations=1), POLICY).kind is ActionKind.WAIT


def test_a_stall_raises_the_downtime_one_step_at_a_time():
    action = next_action(look(stalled_iterations=2, data_remaining_mib=40), POLICY)
    assert (action.kind, action.downtime_ms) == (ActionKind.SET_DOWNTIME, 300)
    assert "40 MiB left" in action.reason
    action = next_action(look(stalled_iterations=2, downtime_limit_ms=300), POLICY)
    assert action.downtime_ms == 900


def test_past_the_last_step_post_copy_if_allowed_else_wait_for_the_timeout():
    stuck = look(stalled_iterations=5, downtime_limit_ms=900)
    assert next_action(stuck, POLICY).kind is ActionKind.WAIT
    with_post_copy = ConvergencePolicy(downtime_steps_ms=(100, 300, 900), post_copy=True)
    assert next_action(stuck, with_post_copy).kind is ActionKind.POST_COPY
    assert next_action(look(stalled_iterations=5, downtime_limit_ms=900, post_copy=True),
                       with_post_copy).kind is ActionKind.WAIT


def test_the_completion_timeout_always_aborts():
    action = next_action(look(elapsed_ms=60_000), POLICY)
    assert action.kind is ActionKind.ABORT and "60 s" in action.reason
    assert next_action(look(elapsed_ms=60_000, post_copy=True), POLICY).kind is ActionKind.ABORT


def test_observe_counts_passes_that_make_no_new_low():
    p0 = look(iteration=1, data_remaining_mib=100)
    p1, best = observe(p0, look(iteration=2, data_remaining_mib=80), best_remaining_mib=100)
    assert (p1.stalled_iterations, best) == (0, 80)
    p2, best = observe(p1, look(iteration=3, data_remaining_mib=90), best)
    p3, best = observe(p2, look(iteration=3, data_remaining_mib=95), best)  # same pass: no count
    p4, best = observe(p3, look(iteration=4, data_remaining_mib=85), best)
    assert (p2.stalled_iterations, p3.stalled_iterations, p4.stalled_iterations, best) == (1, 1, 2, 80)
    assert after_escalation(p4).stalled_iterations == 0


def test_percent_of_data_sent():
    assert look(data_processed_mib=30, data_remaining_mib=70, data_total_mib=128).percent == 30
    assert look().percent == 0


def test_after_a_failed_move_only_a_host_holding_the_domain_vouches_for_it():
    assert whereabouts("h1", "h2", "running", "absent") == ("h1", True)
    assert whereabouts("h1", "h2", "absent", "running") == ("h2", True)  # done before the failure
    assert whereabouts("h1", "h2", None, "running") == ("h2", True)  # the source is away; the target runs it
    assert whereabouts("h1", "h2", None, "paused") == ("h1", False)  # maybe an incoming copy, not the VM
    assert whereabouts("h1", "h2", None, "absent") == ("h1", False)  # nobody vouches: the source, unconfirmed
    assert whereabouts("h1", "h2", "absent", "absent") == ("h1", False)
    assert whereabouts("h1", None, "shutoff", None) == ("h1", True)
    assert whereabouts("h1", None, None, None) == ("h1", False)
