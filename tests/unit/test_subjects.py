"""NATS subjects: wildcard matching as the server does it, and the roots a tenant's events live under."""

from __future__ import annotations

import pytest

from shared.subjects import op_event, subject_matches, tenant_event_roots, vm_event


@pytest.mark.parametrize(("pattern", "subject"), [
    ("vmflow.evt.vm.t1.v1.state", "vmflow.evt.vm.t1.v1.state"),
    ("vmflow.evt.vm.*.v1.state", "vmflow.evt.vm.t1.v1.state"),
    ("vmflow.evt.*.*.*.*", "vmflow.evt.vm.t1.v1.state"),
    ("vmflow.evt.vm.t1.>", "vmflow.evt.vm.t1.v1"),
    ("vmflow.evt.vm.t1.>", "vmflow.evt.vm.t1.v1.state"),
    ("vmflow.>", "vmflow.evt.vm.t1.v1.state"),
    (">", "vmflow"),
    ("*", "vmflow"),
])
def test_a_subject_matches(pattern, subject):
    assert subject_matches(pattern, subject)


@pytest.mark.parametrize(("pattern", "subject"), [
    ("vmflow.evt.vm.t1.v1.state", "vmflow.evt.vm.t1.v1.moved"),
    ("vmflow.evt.vm.t1.v1.state", "vmflow.evt.vm.t1.v1"),  # shorter
    ("vmflow.evt.vm.t1.v1", "vmflow.evt.vm.t1.v1.state"),  # longer
    ("vmflow.evt.vm.*", "vmflow.evt.vm.t1.v1.state"),  # '*' is one token, not the rest
    ("vmflow.evt.vm.*.v1", "vmflow.evt.vm.t1"),
    ("vmflow.evt.vm.t1.>", "vmflow.evt.vm.t1"),  # '>' needs at least one token
    ("vmflow.evt.vm.t1.>", "vmflow.evt.vm.t10.v1.state"),  # a tenant is a whole token, not a prefix
    ("vmflow.evt.vm.t1.>", "vmflow.evt.op.t1.o1.started"),
])
def test_a_subject_does_not_match(pattern, subject):
    assert not subject_matches(pattern, subject)


def test_a_tenants_roots_cover_its_vms_operations_and_audit():
    assert tenant_event_roots("t1") == ("vmflow.evt.vm.t1.>", "vmflow.evt.op.t1.>", "vmflow.evt.audit.t1.>")


def test_a_tenants_roots_match_its_own_events_and_no_one_elses():
    roots = tenant_event_roots("t1")
    mine = [vm_event("t1", "v1", "state"), op_event("t1", "o1", "succeeded"), "vmflow.evt.audit.t1.denied"]
    theirs = [vm_event("t2", "v1", "state"), op_event("t10", "o1", "succeeded"), "vmflow.evt.host.h1.failed",
              "vmflow.evt.volume.p1.d1.created"]
    assert all(any(subject_matches(root, s) for root in roots) for s in mine)
    assert not any(subject_matches(root, s) for root in roots for s in theirs)


@pytest.mark.parametrize("tenant", ["", "a.b", "*", ">", "a b"])
def test_a_tenant_that_is_not_one_subject_token_has_no_roots(tenant):
    with pytest.raises(ValueError, match="not a valid subject token"):
        tenant_event_roots(tenant)
