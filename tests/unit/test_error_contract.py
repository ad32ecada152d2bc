"""Every error leaves the API as ``{"error": {"code", "message"}}``: the platform's own, the
framework's (unknown route, wrong method, bad body) and anything unexpected, which becomes a
500 with code ``internal`` and the request's id, never a traceback or a repr."""

from __future__ import annotations

from types import SimpleNamespace

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel
from structlog.testing import capture_logs

from services.api.audit import AuditMiddleware
from services.api.errors import install_error_handlers
from services.api.platform import get_platform
from services.api.routes import health
from shared.errors import Conflict, Unauthenticated


class Body(BaseModel):
    size_gib: int


def _app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(AuditMiddleware)
    install_error_handlers(app)

    @app.get("/boom")
    async def boom():
        raise RuntimeError("secret internals <object at 0x7f>")

    @app.get("/taken")
    async def taken():
        raise Conflict("a VM named 'web' already exists")

    @app.get("/who")
    async def who():
        raise Unauthenticated("unknown token")

    @app.post("/sized")
    async def sized(body: Body):
        return body

    return app


def test_an_unexpected_error_is_a_500_with_code_internal_and_the_request_id():
    client = TestClient(_app(), raise_server_exceptions=False)
    with capture_logs() as logged:
        response = client.get("/boom")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "internal"
    assert error["request_id"] == response.headers["x-request-id"] and len(error["request_id"]) == 32
    assert error["request_id"] in error["message"]
    assert "secret internals" not in response.text and "RuntimeError" not in response.text
    # The logs keep what the answer does not, under the same id.
    [entry] = [e for e in logged if e.get("request_id") == error["request_id"]]
    assert entry["error_type"] == "RuntimeError" and entry["path"] == "/boom"


def test_platform_and_framework_errors_share_one_shape():
    client = TestClient(_app(), raise_server_exceptions=False)
    cases = [
        (client.get("/taken"), 409, "conflict"),
        (client.get("/nowhere"), 404, "not_found"),
        (client.delete("/taken"), 405, "method_not_allowed"),
        (client.post("/sized", json={"size_gib": "big"}), 422, "invalid_request"),
        (client.post("/sized", content=b"{not json", headers={"content-type": "application/json"}), 422,
         "invalid_request"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
        assert response.json()["error"]["message"]
        assert response.headers["x-request-id"]


def test_an_unauthenticated_answer_says_how_to_authenticate():
    response = TestClient(_app()).get("/who")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"error": {"code": "unauthenticated", "message": "unknown token"}}


def test_not_ready_is_a_503_in_the_same_shape_naming_what_fails():
    class _Down:
        def ping(self) -> None:
            raise ConnectionRefusedError()

    class _Nats:
        async def flush(self, timeout: float) -> None:
            return None

    class _Health:
        async def check_health(self, timeout) -> None:
            return None

    platform = SimpleNamespace(inventory=_Down(), nats=_Nats(),
                               temporal=SimpleNamespace(service_client=_Health()))
    app = _app()
    app.include_router(health.router)
    app.dependency_overrides[get_platform] = lambda: platform
    response = TestClient(app).get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["error"] == {"code": "service_unavailable",
                             "message": "not ready: database failing: ConnectionRefusedError"}
    assert body["checks"] == {"database": "failing: ConnectionRefusedError", "nats": "ok", "temporal": "ok"}
