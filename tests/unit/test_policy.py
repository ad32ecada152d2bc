"""The access table against the routes the app really serves: every route has a rule, no rule
names a route that is gone, and the fleet, tenant reads and tenant changes need the right role."""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute, iter_route_contexts
from starlette.routing import Mount

from services.api.app import create_app
from services.api.policy import POLICY, PUBLIC, WEBSOCKET
from services.api.settings import ApiSettings
from shared.auth import Role

FLEET_PREFIXES = ("/v1/hosts", "/v1/pools")
TENANT_OBJECT_PREFIXES = ("/v1/vms", "/v1/networks", "/v1/volumes", "/v1/placement-groups")


def _served_routes() -> set[tuple[str, str]]:
    """(method, path) of every API route, WEBSOCKET for websockets."""
    app = create_app(ApiSettings())  # the lifespan never runs: nothing connects anywhere
    keys: set[tuple[str, str]] = set()
    for context in iter_route_contexts(app.routes):
        if isinstance(context.route, APIWebSocketRoute):
            keys.add((WEBSOCKET, context.path))
        elif isinstance(context.route, APIRoute):
            keys.update((method, context.path) for method in context.methods)
        elif isinstance(context.route, Mount) and context.path == "":
            continue  # the portal, mounted last: its pages call the API's routes, which the table covers
        else:
            raise AssertionError(f"unexpected plain route {context.path}: give it an API route and a rule")
    return keys


SERVED = _served_routes()


def _is_fleet(path: str) -> bool:
    return path.startswith(FLEET_PREFIXES)


def test_the_app_serves_routes_of_every_kind():
    assert ("GET", "/v1/vms") in SERVED
    assert (WEBSOCKET, "/v1/vms/{vm_id}/console") in SERVED
    assert ("GET", "/healthz") in SERVED


def test_every_route_has_an_access_rule():
    missing = sorted(key for key in SERVED if key not in POLICY and key not in PUBLIC)
    assert not missing, "routes without a rule in services/api/policy.py (they are refused): " + ", ".join(
        f"{method} {path}" for method, path in missing)


def test_no_rule_names_a_route_that_does_not_exist():
    stale = sorted(key for key in POLICY.keys() | PUBLIC if key not in SERVED)
    assert not stale, "rules for routes the app does not serve: " + ", ".join(
        f"{method} {path}" for method, path in stale)


def test_a_route_is_public_or_ruled_never_both():
    both = sorted(PUBLIC & POLICY.keys())
    assert not both, "routes both public and ruled: " + ", ".join(f"{m} {p}" for m, p in both)


def test_only_health_checks_are_public():
    assert PUBLIC == {("GET", "/healthz"), ("GET", "/readyz")}


@pytest.mark.parametrize("key", sorted(k for k in SERVED if _is_fleet(k[1])), ids=" ".join)
def test_hosts_and_pools_need_an_admin(key):
    assert POLICY.get(key) is Role.ADMIN, f"{key[0]} {key[1]} is the fleet's: it must need admin"


@pytest.mark.parametrize("key", [
    ("POST", "/v1/images"),
    ("POST", "/v1/tenants"),
    ("DELETE", "/v1/tenants/{tenant_id}"),
    ("PUT", "/v1/tenants/{tenant_id}/quota"),
    ("POST", "/v1/vms/{vm_id}/migrate"),
], ids=" ".join)
def test_fleet_decisions_need_an_admin(key):
    assert key in SERVED, f"{key[0]} {key[1]} is not served any more; update this test"
    assert POLICY.get(key) is Role.ADMIN, f"{key[0]} {key[1]} must need admin, not {POLICY.get(key)}"


def test_fleet_routes_are_there_to_check():
    assert sum(1 for _, path in SERVED if _is_fleet(path)) >= 9


@pytest.mark.parametrize("key", sorted(k for k in POLICY if k[0] == "GET" and not _is_fleet(k[1])),
                         ids=" ".join)
def test_reading_a_tenants_objects_needs_a_reader_at_most(key):
    assert Role.READER.allows(POLICY[key]), f"GET {key[1]} needs {POLICY[key]}: a reader must be able to read it"


@pytest.mark.parametrize("key", sorted(k for k in SERVED if k[0] != "GET" and k[1].startswith(TENANT_OBJECT_PREFIXES)),
                         ids=" ".join)
def test_changing_a_tenants_objects_needs_a_member_or_more(key):
    needed = POLICY.get(key)
    assert needed is not None, f"{key[0]} {key[1]} has no rule"
    assert needed.allows(Role.MEMBER), f"{key[0]} {key[1]} needs only {needed}: changing it must need member"
