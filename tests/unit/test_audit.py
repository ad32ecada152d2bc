"""The audit log on a real inventory (SQLite, PostgreSQL): records kept newest first, paged, per tenant, and
each one published as a typed event under its tenant's subject."""

from __future__ import annotations

import time
from types import SimpleNamespace

from fastapi import FastAPI, Request, Response, WebSocket
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from services.api.audit import AuditLog, AuditMiddleware, AuditRecord, note, outcome_of
from shared import subjects
from shared.auth import Principal, Role


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


class _Events:
    def __init__(self) -> None:
        self.subjects: list[str] = []

    async def publish(self, subject: str, data: dict, event_id: str | None = None) -> None:
        self.subjects.append(subject)


def test_a_console_session_is_recorded_when_it_ends_with_its_close_code(engine):
    app = FastAPI()
    app.add_middleware(AuditMiddleware)
    published = _Events()
    app.state.platform = SimpleNamespace(audit=AuditLog(engine), events=published)

    @app.websocket("/v1/vms/{vm_id}/console")
    async def console(websocket: WebSocket, vm_id: str):
        websocket.state.principal = Principal("t" * 16, "alice", "acme", Role.MEMBER)
        await websocket.accept()
        await websocket.close(4404 if vm_id == "gone" else 1000)

    client = TestClient(app)
    for vm_id in ("gone", "here"):
        try:
            with client.websocket_connect(f"/v1/vms/{vm_id}/console") as ws:
                ws.receive_text()
        except WebSocketDisconnect:
            pass
    # The record is written after the session ends, on the test client's own event loop thread
    # (which the test client may stop before the event is published: the stream is tested end to
    # end in tests/integration/test_tenancy.py).
    deadline = time.monotonic() + 5
    while AuditLog(engine).page("acme", 0, 10)[0] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    total, records = AuditLog(engine).page("acme", 0, 10)
    assert total == 2
    here, gone = records
    assert (gone.action, gone.status, gone.outcome, gone.code) == (
        "WEBSOCKET /v1/vms/{vm_id}/console", 4404, "refused", "not_found")
    assert (here.status, here.outcome, here.user, here.path) == (1000, "done", "alice", "/v1/vms/here/console")


def test_a_change_records_what_it_made_the_admins_own_tenant_and_the_routes_detail(engine):
    app = FastAPI()
    app.add_middleware(AuditMiddleware)
    app.state.platform = SimpleNamespace(audit=AuditLog(engine), events=_Events())
    admin = Principal("a" * 16, "root", "ops", Role.ADMIN)

    @app.post("/v1/tenants/{tenant_id}/users", status_code=201)
    async def add_user(tenant_id: str, request: Request, response: Response):
        request.state.principal = admin
        note(request, "name=bob")
        response.headers["Location"] = f"/v1/tenants/{tenant_id}/users/bob"
        return {}

    assert TestClient(app).post("/v1/tenants/acme/users").status_code == 201
    [record] = AuditLog(engine).page(None, 0, 10)[1]
    # The admin's record is the fleet's, and still names the tenant of the token that made it.
    assert (record.tenant, record.token_tenant, record.role) == (None, "ops", "admin")
    assert (record.location, record.detail, record.operation_id) == ("/v1/tenants/acme/users/bob", "name=bob", None)


def test_an_accepted_change_takes_its_operations_outcome_once(engine):
    log = AuditLog(engine)
    record = log.add(AuditRecord(request_id="r" * 32, method="POST", path="/v1/vms", action="POST /v1/vms",
                                 status=202, outcome="accepted", tenant="acme", operation_id="provision-x"))
    log.settle(record.id, "failed", "no_valid_host")
    log.settle(record.id, "done", None)  # a second look changes nothing: the first outcome stays
    [settled] = log.page("acme", 0, 10)[1]
    assert (settled.outcome, settled.code, settled.status) == ("failed", "no_valid_host", 202)
