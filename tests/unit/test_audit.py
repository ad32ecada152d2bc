"""The audit log on a real SQLite inventory: records kept newest first, paged, per tenant, and
each one published as a typed event under its tenant's subject."""

from __future__ import annotations

import time

from services.api.audit import AuditLog, AuditRecord, outcome_of
from shared import subjects


def _record(tenant: str | None, status: int, action: str = "POST /v1/vms") -> AuditRecord:
    return AuditRecord(request_id="r" * 32, method="POST", path="/v1/vms", action=action, status=status,
                       outcome=outcome_of(status), tenant=tenant, token_id="t" * 16 if tenant else None)


def test_pages_are_newest_first_and_a_tenant_sees_its_own(engine):
    log = AuditLog(engine)
    for i in range(5):
        log.add(_record("acme" if i % 2 == 0 else "other", 202, action=f"POST /v1/vms #{i}"))
    log.add(_record(None, 401))
    total, page = log.page(None, 0, 2)
    assert total == 6 and [r.status for r in page] == [401, 202]
    total, page = log.page("acme", 1, 10)
    assert total == 3 and [r.action for r in page] == ["POST /v1/vms #2", "POST /v1/vms #0"]


def test_a_record_becomes_an_event_under_its_tenant_or_the_fleet(engine):
    log = AuditLog(engine)
    before_s = time.time()
    accepted = log.add(_record("acme", 202)).event()
    anonymous = log.add(_record(None, 401)).event()
    assert accepted.subject == "vmflow.evt.audit.acme.accepted"
    assert anonymous.subject == f"vmflow.evt.audit.{subjects.NO_TENANT}.refused"
    assert before_s - 1 <= accepted.at_s <= time.time() + 1


def test_outcomes_follow_the_status():
    assert [outcome_of(s) for s in (200, 201, 202, 204, 401, 404, 409, 500, 503)] == [
        "done", "done", "accepted", "done", "refused", "refused", "refused", "failed", "failed"]
