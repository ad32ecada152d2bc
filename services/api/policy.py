"""Who may call what: one table from route to the least role it needs, enforced by one
dependency on every route. A route missing from the table is refused (and a unit test fails).

Roles say what a token may do; tenants say what it may see. An object of another tenant is
not found (404), never forbidden, so ids leak nothing: handlers read through the principal's
``visible_tenant`` and a path's ``tenant_id`` is checked here.
"""

from __future__ import annotations

import asyncio

from fastapi import WebSocket, WebSocketException
from starlette.requests import HTTPConnection

from shared.auth import SESSION_COOKIE, Principal, Role, same_origin
from shared.console import (
    WS_CLOSE_FORBIDDEN,
    WS_CLOSE_NOT_FOUND,
    WS_CLOSE_UNAUTHENTICATED,
)
from shared.errors import Forbidden, NotFound, Unauthenticated, VmflowError

R, M, A = Role.READER, Role.MEMBER, Role.ADMIN
WEBSOCKET = "WEBSOCKET"

PUBLIC: frozenset[tuple[str, str]] = frozenset({("GET", "/healthz"), ("GET", "/readyz")})

POLICY: dict[tuple[str, str], Role] = {
    # VMs and what hangs off them: the tenant's own
    ("GET", "/v1/vms"): R,
    ("POST", "/v1/vms"): M,
    ("GET", "/v1/vms/{vm_id}"): R,
    ("DELETE", "/v1/vms/{vm_id}"): M,
    ("POST", "/v1/vms/{vm_id}/start"): M,
    ("POST", "/v1/vms/{vm_id}/stop"): M,
    ("POST", "/v1/vms/{vm_id}/reboot"): M,
    ("POST", "/v1/vms/{vm_id}/migrate"): A,  # moving VMs between hosts is the fleet's business
    ("GET", "/v1/vms/{vm_id}/nics"): R,
    ("POST", "/v1/vms/{vm_id}/nics"): M,
    ("DELETE", "/v1/vms/{vm_id}/nics/{port_id}"): M,
    ("GET", "/v1/vms/{vm_id}/volumes"): R,
    ("POST", "/v1/vms/{vm_id}/volumes/{name}"): M,
    ("DELETE", "/v1/vms/{vm_id}/volumes/{name}"): M,
    ("GET", "/v1/vms/{vm_id}/snapshots"): R,
    ("GET", "/v1/vms/{vm_id}/snapshots/{name}"): R,
    ("POST", "/v1/vms/{vm_id}/snapshots"): M,
    ("POST", "/v1/vms/{vm_id}/snapshots/{name}/revert"): M,
    ("DELETE", "/v1/vms/{vm_id}/snapshots/{name}"): M,
    ("POST", "/v1/vms/{vm_id}/template"): M,
    (WEBSOCKET, "/v1/vms/{vm_id}/console"): M,  # typing into a guest changes it
    # networks, placement groups, volumes
    ("GET", "/v1/networks"): R,
    ("POST", "/v1/networks"): M,
    ("GET", "/v1/networks/{network_id}"): R,
    ("GET", "/v1/networks/{network_id}/ports"): R,
    ("DELETE", "/v1/networks/{network_id}"): M,
    ("GET", "/v1/placement-groups"): R,
    ("POST", "/v1/placement-groups"): M,
    ("GET", "/v1/placement-groups/{group_id}"): R,
    ("DELETE", "/v1/placement-groups/{group_id}"): M,
    ("GET", "/v1/volumes"): R,
    ("POST", "/v1/volumes"): M,
    ("GET", "/v1/volumes/{name}"): R,
    ("POST", "/v1/volumes/{name}/resize"): M,
    ("DELETE", "/v1/volumes/{name}"): M,
    ("POST", "/v1/volumes/{name}/attach"): M,
    ("POST", "/v1/volumes/{name}/detach"): M,
    # images: everyone sees the shared ones and its own templates; importing is the fleet's
    ("GET", "/v1/images"): R,
    ("GET", "/v1/images/{name}"): R,
    ("POST", "/v1/images"): A,
    ("DELETE", "/v1/images/{name}"): M,
    # operations and events: a tenant's own
    ("GET", "/v1/operations"): R,  # a tenant's token lists its own tenant's only
    ("GET", "/v1/operations/{op_id}"): R,
    ("POST", "/v1/operations/{op_id}/cancel"): M,
    ("GET", "/v1/events"): R,
    ("GET", "/v1/audit"): R,
    # the fleet
    ("GET", "/v1/hosts"): A,
    ("GET", "/v1/hosts/{host_id}"): A,
    ("POST", "/v1/hosts/{host_id}/disable"): A,
    ("POST", "/v1/hosts/{host_id}/enable"): A,
    ("POST", "/v1/hosts/{host_id}/maintenance"): A,
    ("DELETE", "/v1/hosts/{host_id}/maintenance"): A,
    ("POST", "/v1/hosts/{host_id}/confirm-fenced"): A,
    ("GET", "/v1/pools"): A,
    ("GET", "/v1/pools/{name}"): A,
    ("GET", "/metrics"): R,  # a tenant's token reads its own series only
    ("GET", "/openapi.json"): R,  # the API's schema and its page
    ("GET", "/docs"): R,
    # identities
    ("GET", "/v1/tenants"): R,  # a tenant's token sees its own tenant only
    ("POST", "/v1/tenants"): A,
    ("GET", "/v1/tenants/{tenant_id}"): R,
    ("DELETE", "/v1/tenants/{tenant_id}"): A,
    ("GET", "/v1/tenants/{tenant_id}/quota"): R,
    ("PUT", "/v1/tenants/{tenant_id}/quota"): A,
    ("GET", "/v1/tenants/{tenant_id}/users"): R,
    ("POST", "/v1/tenants/{tenant_id}/users"): A,
    ("DELETE", "/v1/tenants/{tenant_id}/users/{user}"): A,
    ("GET", "/v1/tokens"): R,
    ("POST", "/v1/tokens"): R,  # a token no stronger than the caller's own
    ("GET", "/v1/tokens/{token_id}"): R,
    ("DELETE", "/v1/tokens/{token_id}"): R,  # one's own tokens
    ("GET", "/v1/whoami"): R,
}


def route_key(connection: HTTPConnection) -> tuple[str, str]:
    route = connection.scope["route"]
    method = WEBSOCKET if connection.scope["type"] == "websocket" else connection.scope["method"]
    return method, route.path


def _bearer(connection: HTTPConnection) -> str:
    """The request's API token: its Authorization header, else, for what only reads (GET and the
    console's websocket), the portal's session cookie. A change never rides on the cookie, so a
    forged cross-site request carries no credential; the portal's own forms check a CSRF token."""
    header = connection.headers.get("authorization")
    if not header and (cookie := _session_cookie(connection)):
        return cookie
    if not header:
        raise Unauthenticated("this needs an API token: send 'Authorization: Bearer <token>' (POST /v1/tokens "
                              "makes one; 'vmflow up' writes the first admin token to run/admin-token)")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthenticated("the Authorization header must read 'Bearer <token>'")
    return value.strip()


def _session_cookie(connection: HTTPConnection) -> str | None:
    token = connection.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    if connection.scope["type"] == "websocket":
        # Browsers send cookies on cross-site websocket handshakes: only the portal's own pages
        # may open a console with the cookie.
        origin = connection.headers.get("origin")
        if not same_origin(origin, connection.headers.get("host")):
            raise Forbidden(f"a console opened from {origin} may not use the portal's session")
        return token
    return token if connection.scope["method"] in ("GET", "HEAD") else None


async def _check(connection: HTTPConnection) -> Principal | None:
    key = route_key(connection)
    if key in PUBLIC:
        return None
    identities = connection.app.state.platform.identities
    principal = await asyncio.to_thread(identities.authenticate, _bearer(connection))
    connection.state.principal = principal
    needed = POLICY.get(key)
    if needed is None:  # deny what nobody decided on
        raise Forbidden(f"{key[0]} {key[1]} has no access rule")
    if not principal.role.allows(needed):
        raise Forbidden(f"a {principal.role} token may not {key[0]} {key[1]}: it needs {needed} or more")
    tenant_id = connection.path_params.get("tenant_id")
    if tenant_id is not None and not principal.sees(tenant_id):
        raise NotFound(f"no tenant '{tenant_id}'")
    return principal


_WS_CLOSE = {401: WS_CLOSE_UNAUTHENTICATED, 403: WS_CLOSE_FORBIDDEN, 404: WS_CLOSE_NOT_FOUND}


async def authorize(connection: HTTPConnection) -> None:
    """The one check every route runs before its handler. Raises Unauthenticated (401),
    Forbidden (403) or NotFound (404). A websocket is accepted, then closed with 4401, 4403 or
    4404 and the reason (a close before accepting reaches clients as a bare HTTP 403)."""
    try:
        await _check(connection)
    except VmflowError as exc:
        if isinstance(connection, WebSocket):
            await connection.accept()
            raise WebSocketException(_WS_CLOSE.get(exc.http_status, WS_CLOSE_FORBIDDEN), exc.message[:120]) from None
        raise


async def principal(connection: HTTPConnection) -> Principal:
    """The principal ``authorize`` found; for handlers."""
    return connection.state.principal
