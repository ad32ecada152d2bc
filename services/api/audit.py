"""The audit trail: every change (any request but GET, HEAD and OPTIONS) and every refused
attempt, with who (token, user, the token's tenant, role), what (method, route, path, the
operation it started or the Location of what it made, and a detail a route adds with
``note``), when and the outcome (status and error code). Written by an ASGI middleware after the
response, so a handler can never forget it; published as ``vmflow.evt.audit.<tenant>.<outcome>``
too. A tenant's trail holds what its own tokens did; what admins did, and attempts without a
valid token, are the fleet's (tenant None, subject ``_fleet``), which only admins read.

A change that started an operation is ``accepted`` until the operation ends; its record then
takes the operation's outcome (``settle``): done, failed or cancelled, with the error's code.

A console session (a websocket) is recorded when it ends, its close code as its status.

The middleware also gives every request an id (``X-Request-Id``), which the catch-all error
handler puts in its answer and the logs, so a 500 can be found.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime

import structlog
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Field as SqlField
from sqlmodel import Session, SQLModel, select
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.models import utcnow
from shared import events
from shared.auth import Principal
from shared.console import (
    WS_CLOSE_CONFLICT,
    WS_CLOSE_FORBIDDEN,
    WS_CLOSE_NOT_FOUND,
    WS_CLOSE_UNAUTHENTICATED,
)
from shared.errors import Conflict, Forbidden, NotFound, Unauthenticated, VmflowError

log = structlog.get_logger(__name__)
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


class AuditRecord(SQLModel, table=True):
    __tablename__ = "audit"

    id: int | None = SqlField(default=None, primary_key=True)
    at: datetime = SqlField(default_factory=utcnow)
    request_id: str = SqlField(max_length=32)
    token_id: str | None = SqlField(default=None, max_length=16)
    user: str | None = SqlField(default=None, max_length=63)
    tenant: str | None = SqlField(default=None, index=True, max_length=63)
    role: str | None = SqlField(default=None, max_length=16)
    method: str = SqlField(max_length=8)
    path: str = SqlField(max_length=300)
    action: str = SqlField(max_length=120)  # the route, e.g. "POST /v1/vms/{vm_id}/stop"
    status: int
    outcome: str = SqlField(max_length=16)  # accepted, done, refused, failed
    code: str | None = SqlField(default=None, max_length=40)
    operation_id: str | None = SqlField(default=None, max_length=200)
    token_tenant: str | None = SqlField(default=None, max_length=63)  # the token's own, an admin's too
    location: str | None = SqlField(default=None, max_length=300)  # what the change made
    detail: str | None = SqlField(default=None, max_length=300)  # what a route adds, e.g. new limits

    def event(self) -> events.AuditRecorded:
        assert self.id is not None  # written first
        at = self.at if self.at.tzinfo is not None else self.at.replace(tzinfo=UTC)  # SQLite drops the zone
        return events.AuditRecorded(at_s=at.timestamp(), **self.model_dump(exclude={"at"}))


# Websocket close codes the API refuses with (services/api/policy.py, shared/console.py).
_WS_REFUSALS = {WS_CLOSE_UNAUTHENTICATED: Unauthenticated.code, WS_CLOSE_FORBIDDEN: Forbidden.code,
                WS_CLOSE_NOT_FOUND: NotFound.code, WS_CLOSE_CONFLICT: Conflict.code}
_WS_OUTCOME = {code: "refused" for code in _WS_REFUSALS}


def _verb(scope: Scope) -> str:
    return "WEBSOCKET" if scope["type"] == "websocket" else scope["method"]


def note(request: Request, detail: str) -> None:
    """What a route adds to its change's audit record, e.g. the new limits of a quota."""
    request.state.audit_detail = detail[:300]


def outcome_of(status: int) -> str:
    if status == 202:
        return "accepted"  # an operation started; its own outcome is the operation's
    if status < 400:
        return "done"
    return "refused" if status < 500 else "failed"


class AuditLog:
    """Blocking: call from threads."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, record: AuditRecord) -> AuditRecord:
        with Session(self._engine) as session:
            session.add(record)
            session.commit()
            session.refresh(record)
            return record

    def settle(self, record_id: int, outcome: str, code: str | None) -> None:
        """The outcome of the operation an ``accepted`` record started, once it ended."""
        with Session(self._engine) as session:
            record = session.get(AuditRecord, record_id)
            if record is not None and record.outcome == "accepted":
                record.outcome, record.code = outcome, code
                session.add(record)
                session.commit()

    def page(self, tenant: str | None, offset: int, limit: int) -> tuple[int, list[AuditRecord]]:
        """Newest first; ``tenant`` None: every record."""
        with Session(self._engine) as session:
            query = select(AuditRecord)
            count = select(func.count()).select_from(AuditRecord)
            if tenant is not None:
                query = query.where(AuditRecord.tenant == tenant)
                count = count.where(AuditRecord.tenant == tenant)
            total = session.exec(count).one()
            rows = session.exec(query.order_by(AuditRecord.id.desc()).offset(offset).limit(limit))
            return total, list(rows)


class AuditMiddleware:
    """Gives each HTTP request an id and records each change after it is answered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        seen: dict = {"status": 500, "location": None, "body": b""}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                headers = dict(message.get("headers", []))
                seen["location"] = headers.get(b"location")
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            elif message["type"] == "http.response.body" and seen["status"] >= 400 and len(seen["body"]) < 4096:
                seen["body"] += message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # The portal's own pages (outside /v1) change things only through the API's routes,
            # whose calls are recorded with the signed-in user.
            if scope["method"] not in _READS and scope["path"].startswith("/v1/"):
                await self._record(scope, request_id, seen)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A websocket (the console) is recorded when it ends: its close code is its status,
        4401/4403/4404/4409 a refusal."""
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        seen: dict = {"status": 1000, "location": None, "body": b"", "method": "GET"}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "websocket.close":
                seen["status"] = message.get("code", 1000)
                reason = _WS_REFUSALS.get(seen["status"])
                if reason is not None:
                    seen["body"] = json.dumps({"error": {"code": reason}}).encode()
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            await self._record(scope, request_id, seen)

    async def _record(self, scope: Scope, request_id: str, seen: dict) -> None:
        platform = getattr(scope["app"].state, "platform", None)
        if platform is None:
            return
        principal: Principal | None = scope.get("state", {}).get("principal")
        route = scope.get("route")
        status = seen["status"]
        method = seen.get("method", scope.get("method", "GET"))
        code = None
        if status in _WS_REFUSALS:
            code = _WS_REFUSALS[status]
        elif status >= 400 and scope["type"] == "http":
            try:
                code = json.loads(seen["body"])["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = VmflowError.code if status >= 500 else None
        location = seen["location"].decode() if seen["location"] else ""
        operation = location.startswith("/v1/operations/")
        outcome = _WS_OUTCOME.get(status, "done") if scope["type"] == "websocket" else outcome_of(status)
        record = AuditRecord(
            request_id=request_id, method=method, path=scope["path"][:300],
            action=f"{_verb(scope)} {route.path if route is not None else scope['path']}"[:120],
            status=status, outcome=outcome, code=code,
            operation_id=location.removeprefix("/v1/operations/") if operation else None,
            location=None if operation else (location[:300] or None),
            detail=scope.get("state", {}).get("audit_detail"),
            # An admin's records are the fleet's trail, not its token's tenant's: that tenant's
            # readers must not read what admins did to other tenants.
            **({"token_id": principal.token_id, "user": principal.user, "role": principal.role.value,
                "token_tenant": principal.tenant,
                "tenant": None if principal.is_admin else principal.tenant} if principal is not None else {}),
        )
        try:
            record = await asyncio.to_thread(platform.audit.add, record)
            await events.publish(platform.events, record.event(), event_id=f"audit-{request_id}")
        except Exception as exc:  # the change happened; a lost audit line is logged, never raised
            log.error("audit record not written", error=str(exc), request_id=request_id, action=record.action)
