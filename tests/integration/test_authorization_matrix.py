"""Who may do what, proven route by route against the running API.

The routes are enumerated from the app itself, so a new route joins the matrix (and fails it
until ``path_values`` can fill its path). Each route is tried with five credentials -- no token,
an expired member token of tenant A, A's reader, A's member, the fleet admin -- on A's own
objects and on tenant B's. The matrix proves that:

- without a valid token only the health checks answer: 401 (a websocket closes with 4401);
- a role below the route's rule in services/api/policy.py is refused: 403 (4403);
- another tenant's objects are not found, never forbidden: 404 (4404), so ids leak nothing;
- every other call reaches its handler: a read answers 200; a change is answered without being
  done (a body of the wrong type: 422; its last path parameter naming nothing: the handler's
  own 404); the console of a stopped VM closes with 4409;
- nothing A's tokens read names one of B's objects;
- no call of the matrix changes anything an admin can see.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass, field
from enum import StrEnum
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from deploy.client import ApiError, VmflowClient, bearer_headers
from services.api.app import create_app
from services.api.policy import POLICY, PUBLIC, WEBSOCKET
from services.api.settings import ApiSettings
from shared.auth import Role
from shared.console import WS_CLOSE_CONFLICT, WS_CLOSE_NOT_FOUND

SHARED_IMAGE, SHARED_POOL, HOST = "lab-guest", "shared", "h1"
VOLUME_GIB = 2  # so that a resize to 1 GiB is refused: volumes only grow
WRONG_TYPE_BODY: list = []  # valid JSON but no request body of any route: 422 before any handler runs
WEBSOCKET_WAIT_S = 10.0
NO_UUID = str(uuid.UUID(int=0))


# -- the routes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    method: str  # an HTTP method, or WEBSOCKET
    path: str  # the template: /v1/vms/{vm_id}
    has_body: bool

    def __str__(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.path

    @property
    def reads(self) -> bool:
        """A GET, or the console (which refuses a stopped VM): safe to aim at real objects."""
        return self.method in ("GET", WEBSOCKET)

    @property
    def slots(self) -> list[str]:
        """Each placeholder with the segment before it, which says what it names: 'volumes/{name}'."""
        parts = self.path.split("/")
        return [f"{parts[i - 1]}/{part}" for i, part in enumerate(parts) if part.startswith("{")]


def served_routes() -> list[Route]:
    app = create_app(ApiSettings())  # its lifespan never runs: nothing connects anywhere
    routes = []
    for context in iter_route_contexts(app.routes):
        if isinstance(context.route, Mount):
            continue  # the portal (mounted at /): its pages act through these routes
        has_body = getattr(context.route, "body_field", None) is not None
        methods = sorted(context.methods) if context.methods is not None else [WEBSOCKET]
        routes.extend(Route(method, context.path, has_body) for method in methods)
    return sorted(routes, key=lambda route: (route.path, route.method))


ROUTES = served_routes()


# -- the world the matrix runs in --------------------------------------------------------------


class Credential(StrEnum):
    NONE = "no token"
    EXPIRED = "expired"
    READER = "reader"
    MEMBER = "member"
    ADMIN = "admin"


CREDENTIAL_ROLES = {Credential.READER: Role.READER, Credential.MEMBER: Role.MEMBER, Credential.ADMIN: Role.ADMIN}


class Side(StrEnum):
    OWN = "own"  # tenant A's objects, A being the caller's tenant
    OTHER = "other"  # tenant B's


@dataclass(frozen=True)
class TenantObjects:
    """One tenant's objects, made with its member token. Every field names something of its own."""

    tenant: str
    user: str
    network_id: str
    vm_id: str
    op_id: str  # the VM's provisioning
    port_id: str  # the VM's NIC
    group_id: str
    volume: str
    snapshot: str
    reader_token_id: str
    member_token_id: str

    def ids(self) -> tuple[str, ...]:
        return astuple(self)


@dataclass(frozen=True)
class PathValue:
    """What a path placeholder names on each side, and a well-formed value that names nothing
    (so that the handler answers, not a validator)."""

    own: str
    other: str
    absent: str
    tenant_scoped: bool


def path_values(a: TenantObjects, b: TenantObjects) -> dict[str, PathValue]:
    """Placeholder, keyed with the segment before it -> its values. A route with a placeholder
    missing here fails: add a row, and the matrix covers it."""
    return {
        "vms/{vm_id}": PathValue(a.vm_id, b.vm_id, NO_UUID, True),
        "nics/{port_id}": PathValue(a.port_id, b.port_id, "port-000000000000", True),
        "networks/{network_id}": PathValue(a.network_id, b.network_id, "net-000000000000", True),
        "placement-groups/{group_id}": PathValue(a.group_id, b.group_id, "pg-000000000000", True),
        "operations/{op_id}": PathValue(a.op_id, b.op_id, f"vm-{NO_UUID}-provision", True),
        "tenants/{tenant_id}": PathValue(a.tenant, b.tenant, "mx-no-such-tenant", True),
        "users/{user}": PathValue(a.user, b.user, "no-such-user", True),
        "tokens/{token_id}": PathValue(a.reader_token_id, b.reader_token_id, "0" * 16, True),
        "volumes/{name}": PathValue(a.volume, b.volume, "mx-no-such-volume", True),
        "snapshots/{name}": PathValue(a.snapshot, b.snapshot, "no_such_snapshot", True),
        "images/{name}": PathValue(SHARED_IMAGE, SHARED_IMAGE, "mx-no-such-image", False),
        "pools/{name}": PathValue(SHARED_POOL, SHARED_POOL, "mx-no-such-pool", False),
        "hosts/{host_id}": PathValue(HOST, HOST, "h-no-such-host", False),
    }


@dataclass(frozen=True)
class World:
    api_url: str
    a: TenantObjects
    b: TenantObjects
    tokens: dict[Credential, str | None]
    values: dict[str, PathValue]

    def value(self, slot: str) -> PathValue:
        if slot not in self.values:
            pytest.fail(f"path_values() does not say what '{slot}' names: add a row for it", pytrace=False)
        return self.values[slot]


# Bodies that pass validation, for changes aimed at another tenant's objects: the handler must
# answer 404 before it acts, and one that let the call through would still refuse it, so that a
# leak shows as a wrong status and changes nothing.
LEAK_SAFE_BODIES: dict[tuple[str, str], Callable[[World], dict]] = {
    ("POST", "/v1/vms/{vm_id}/stop"): lambda w: {"force": True},  # B's VM is stopped already: 409
    ("POST", "/v1/vms/{vm_id}/reboot"): lambda w: {},  # a stopped VM does not reboot: 409
    ("POST", "/v1/vms/{vm_id}/nics"): lambda w: {"network_id": w.a.network_id},  # not B's network: 422
    ("POST", "/v1/vms/{vm_id}/snapshots"): lambda w: {"name": w.b.snapshot},  # taken already: 409
    ("POST", "/v1/vms/{vm_id}/template"): lambda w: {"name": SHARED_IMAGE},  # the name is taken: 409
    ("POST", "/v1/volumes/{name}/resize"): lambda w: {"size_gib": 1},  # volumes only grow: 422
    ("POST", "/v1/volumes/{name}/attach"): lambda w: {"vm_id": w.a.vm_id},  # tenants differ: 409
}


# -- what the rules expect -----------------------------------------------------------------------


class Outcome(StrEnum):
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    HIDDEN = "hidden"  # another tenant's object: not found
    HANDLED = "handled"  # the handler answers


REFUSALS = {  # outcome -> (HTTP status, error code, websocket close code)
    Outcome.UNAUTHENTICATED: (401, "unauthenticated", 4401),
    Outcome.FORBIDDEN: (403, "forbidden", 4403),
    Outcome.HIDDEN: (404, "not_found", WS_CLOSE_NOT_FOUND),
}


@dataclass(frozen=True)
class Request:
    path: str
    json: Any = None  # None: no body
    absent: str | None = None  # the value in the path that names nothing


@dataclass(frozen=True)
class Answer:
    status: int  # an HTTP status, or a websocket close code (0: none came)
    code: str | None = None
    message: str = ""
    body: Any = None  # the JSON of a success

    def __str__(self) -> str:
        return " ".join(str(part) for part in (self.status, self.code, self.message[:160]) if part)


@dataclass(frozen=True)
class Expect:
    status: int
    code: str | None = None
    mentions: str | None = None  # in the error message: the handler's, not a policy refusal

    def matches(self, answer: Answer) -> bool:
        return (answer.status == self.status and self.code in (None, answer.code)
                and (self.mentions is None or self.mentions in answer.message))

    def __str__(self) -> str:
        return " ".join(str(part) for part in (self.status, self.code) if part) + (
            f" naming '{self.mentions}'" if self.mentions else "")


def outcome_of(route: Route, credential: Credential, side: Side, tenant_scoped: bool) -> Outcome:
    """The rules, in one place: what the policy and tenancy make of this caller on this route."""
    if route.key in PUBLIC:
        return Outcome.HANDLED
    needed = POLICY.get(route.key)
    if needed is None:
        pytest.fail(f"{route} has no rule in services/api/policy.py", pytrace=False)
    role = CREDENTIAL_ROLES.get(credential)
    if role is None:
        return Outcome.UNAUTHENTICATED
    if not role.allows(needed):
        return Outcome.FORBIDDEN
    if side is Side.OTHER and role is not Role.ADMIN and tenant_scoped:
        return Outcome.HIDDEN
    return Outcome.HANDLED


def expected_answer(route: Route, outcome: Outcome, request: Request) -> Expect:
    if outcome in REFUSALS:
        status, code, close = REFUSALS[outcome]
        return Expect(close) if route.method == WEBSOCKET else Expect(status, code)
    if route.method == WEBSOCKET:
        return Expect(WS_CLOSE_CONFLICT)  # the console's answer for a stopped VM: the handler took it
    if route.method == "GET":
        return Expect(200)
    if request.json is not None:
        return Expect(422, "invalid_request")
    return Expect(404, "not_found", mentions=request.absent)


def request_for(route: Route, outcome: Outcome, side: Side, world: World) -> Request:
    """What to send. Reads go to the real objects. A change goes to real objects only where its
    handler must not find them (another tenant's), with a body a leaking handler would refuse;
    anywhere else it is defused so that it is never done: a body of the wrong type, or its last
    path parameter naming nothing."""
    values = [world.value(slot) for slot in route.slots]
    filled = [value.own if side is Side.OWN else value.other for value in values]
    if route.reads:
        return Request(_fill(route.path, filled))
    if outcome is Outcome.HIDDEN:
        return Request(_fill(route.path, filled), json=_leak_safe_body(route, world) if route.has_body else None)
    if route.has_body:
        return Request(_fill(route.path, filled), json=WRONG_TYPE_BODY)
    if not values:
        pytest.fail(f"{route} changes something with neither a body nor a path parameter: nothing here "
                    "can call it without doing it", pytrace=False)
    filled[-1] = values[-1].absent
    return Request(_fill(route.path, filled), absent=values[-1].absent)


def _fill(template: str, values: list[str]) -> str:
    remaining = iter(values)
    return re.sub(r"\{\w+\}", lambda _placeholder: next(remaining), template)


def _leak_safe_body(route: Route, world: World) -> dict:
    if route.key not in LEAK_SAFE_BODIES:
        pytest.fail(f"{route} needs a body in LEAK_SAFE_BODIES: one that passes validation and that its "
                    "handler would refuse even for the right tenant", pytrace=False)
    return LEAK_SAFE_BODIES[route.key](world)


# -- asking the API ------------------------------------------------------------------------------


def send_http(http: httpx.Client, method: str, request: Request, token: str | None) -> Answer:
    body = {} if request.json is None else {"json": request.json}
    with http.stream(method, request.path, headers=bearer_headers(token), **body) as response:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return Answer(response.status_code)  # an endless stream: its status is the answer
        response.read()
    try:
        payload = response.json()
    except ValueError:
        return Answer(response.status_code, message=response.text)
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return Answer(response.status_code, error.get("code"), error.get("message", ""))
    return Answer(response.status_code, body=payload)


def send_websocket(api_url: str, path: str, token: str | None) -> Answer:
    """Connect, then wait for the server to close: its close code and reason."""
    url = api_url.replace("http", "ws", 1) + path
    deadline = time.monotonic() + WEBSOCKET_WAIT_S
    try:
        with connect(url, additional_headers=bearer_headers(token), open_timeout=WEBSOCKET_WAIT_S) as ws:
            while (left_s := deadline - time.monotonic()) > 0:
                ws.recv(timeout=left_s)
    except ConnectionClosed as closed:
        if closed.rcvd is None:
            return Answer(0, message=f"closed without a close frame ({closed})")
        return Answer(closed.rcvd.code, message=closed.rcvd.reason)
    except InvalidStatus as refused:
        return Answer(refused.response.status_code, message="refused at the handshake")
    except TimeoutError:  # no handshake, or no close, in time
        pass
    return Answer(0, message=f"no close within {WEBSOCKET_WAIT_S:g} s")


def leaks(route: Route, answer: Answer, world: World) -> list[str]:
    """B's ids in what A read. A's audit records name the B objects A tried (they are A's own
    requests), so there the question is whose records they are."""
    if answer.body is None:
        return []
    if route.path == "/v1/audit":
        return [f"an audit record of {r['tenant']}" for r in answer.body if r["tenant"] != world.a.tenant]
    text = json.dumps(answer.body)
    return [value for value in world.b.ids() if value in text]


def try_case(route: Route, credential: Credential, side: Side, world: World, http: httpx.Client) -> list[str]:
    """What is wrong with one cell of the matrix; nothing when the API answers as the rules say."""
    tenant_scoped = any(world.value(slot).tenant_scoped for slot in route.slots)
    outcome = outcome_of(route, credential, side, tenant_scoped)
    request = request_for(route, outcome, side, world)
    expect = expected_answer(route, outcome, request)
    token = world.tokens[credential]
    if route.method == WEBSOCKET:
        answer = send_websocket(world.api_url, request.path, token)
    else:
        answer = send_http(http, route.method, request, token)
    where = f"{credential:>8} {side:<5} {route.method} {request.path}"
    if not expect.matches(answer):
        return [f"{where}: expected {expect}, got {answer}"]
    if credential is Credential.ADMIN:
        return []
    return [f"{where}: shows B's {leaked}" for leaked in leaks(route, answer, world)]


def world_state(api: VmflowClient, world: World) -> dict[str, Any]:
    """Everything a call of the matrix could change by mistake, as an admin sees it."""
    tenants = (world.a.tenant, world.b.tenant)
    return {
        "vms": sorted((vm["id"], vm["state"]) for vm in api.call("GET", "/v1/vms")),
        "networks": sorted((n["id"], n["state"]) for n in api.call("GET", "/v1/networks")),
        "volumes": sorted((v["name"], v["size_gib"], v["vm_id"], v["snapshot_count"])
                          for v in api.call("GET", "/v1/volumes")),
        "placement groups": sorted((g["id"], sorted(m["vm_id"] for m in g["members"]))
                                   for g in api.call("GET", "/v1/placement-groups")),
        "snapshots": {vm_id: sorted(s["name"] for s in api.call("GET", f"/v1/vms/{vm_id}/snapshots"))
                      for vm_id in (world.a.vm_id, world.b.vm_id)},
        "images": sorted(image["name"] for image in api.call("GET", "/v1/images")),
        "tokens": sorted((t["id"], t["revoked_at"]) for t in api.call("GET", "/v1/tokens")),
        "tenants": sorted(t["id"] for t in api.call("GET", "/v1/tenants")),
        "users": {t: sorted(u["name"] for u in api.call("GET", f"/v1/tenants/{t}/users")) for t in tenants},
        "quotas": {t: api.call("GET", f"/v1/tenants/{t}/quota")["resources"] for t in tenants},
        "hosts": sorted((h["id"], h["state"], h["disabled_reason"]) for h in api.call("GET", "/v1/hosts")),
    }


# -- building and removing the world -----------------------------------------------------------


@dataclass
class Leftovers:
    """What the fixture made, recorded as soon as it was asked for."""

    vm_ids: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    tenants: list[str] = field(default_factory=list)

    def remove(self, api: VmflowClient) -> None:
        """Delete it all, VMs first (their NICs keep the networks, their holds the tenants).
        Raises at the end, naming what could not be deleted."""
        paths = [*(f"/v1/vms/{vm_id}" for vm_id in self.vm_ids), *(f"/v1/volumes/{n}" for n in self.volumes),
                 *(f"/v1/networks/{n}" for n in self.networks), *(f"/v1/placement-groups/{g}" for g in self.groups),
                 *(f"/v1/tenants/{t}" for t in self.tenants)]
        failures = []
        for path in paths:
            try:
                accepted = api.call("DELETE", path)
                if isinstance(accepted, dict) and "operation_id" in accepted:
                    op = api.wait_operation(accepted["operation_id"], timeout_s=300, interval_s=0.5)
                    if op["state"] != "succeeded":
                        failures.append(f"DELETE {path}: {op['state']} {op['error']}")
            except ApiError as exc:
                if exc.status != 404:  # 404: gone already
                    failures.append(f"DELETE {path}: {exc}")
            except TimeoutError as exc:
                failures.append(f"DELETE {path}: {exc}")
        assert not failures, "left behind: " + "; ".join(failures)


def _token(api: VmflowClient, tenant: str, user: str, role: str, **extra: Any) -> dict:
    return api.call("POST", "/v1/tokens", json={"tenant": tenant, "user": user, "role": role, **extra})


def _succeeded(client: VmflowClient, accepted: dict) -> None:
    op = client.wait_operation(accepted["operation_id"], timeout_s=300, interval_s=0.5)
    assert op["state"] == "succeeded", op


def build_tenant(api_url: str, made: Leftovers, tenant: str, user: str, member: dict, reader: dict,
                 cidr: str) -> TenantObjects:
    """The tenant's objects, made with its member token so that they are the tenant's."""
    with VmflowClient(api_url, token=member["token"]) as client:
        network = client.call("POST", "/v1/networks", json={"name": "mx-net", "cidr": cidr})
        made.networks.append(network_id := network["target"])
        _succeeded(client, network)
        created = client.create_vm("mx-vm", vcpus=1, memory_mib=96, disk_gib=1, image=SHARED_IMAGE,
                                   networks=[{"network_id": network_id}])
        made.vm_ids.append(vm_id := created["vm"]["id"])
        _succeeded(client, created)
        _succeeded(client, client.call("POST", f"/v1/vms/{vm_id}/stop", json={"force": True}))
        group = client.call("POST", "/v1/placement-groups", json={"name": "mx-group", "policy": "anti-affinity"})
        made.groups.append(group["id"])
        volume = f"mx-vol-{tenant}"  # volume names are global: the tenant's name makes it unique
        made.volumes.append(volume)
        _succeeded(client, client.call("POST", "/v1/volumes", json={
            "name": volume, "pool": SHARED_POOL, "size_gib": VOLUME_GIB}))
        snapshot = f"mxsnap-{tenant}"
        _succeeded(client, client.call("POST", f"/v1/vms/{vm_id}/snapshots", json={"name": snapshot}))
    return TenantObjects(tenant=tenant, user=user, network_id=network_id, vm_id=vm_id, op_id=created["operation_id"],
                         port_id=created["vm"]["nics"][0]["id"], group_id=group["id"], volume=volume,
                         snapshot=snapshot, reader_token_id=reader["id"], member_token_id=member["id"])


def _wait_until_expired(api_url: str, token: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (response := httpx.get(f"{api_url}/v1/whoami", headers=bearer_headers(token))).status_code != 401:
        assert time.monotonic() < deadline, f"a token of 1 s still works after {timeout_s:g} s"
        time.sleep(0.2)
    assert "expired" in response.json()["error"]["message"], response.text


def build_world(stack_cfg, api: VmflowClient, made: Leftovers) -> World:
    suffix = uuid.uuid4().hex[:6]
    tenant_a, tenant_b = f"mx-a-{suffix}", f"mx-b-{suffix}"
    for tenant in (tenant_a, tenant_b):
        api.call("POST", "/v1/tenants", json={"name": tenant, "quota": {}})
        made.tenants.append(tenant)
    # One user per tenant: a token sees the tokens of its own user only.
    alice, bob = f"alice-{suffix}", f"bob-{suffix}"
    expired = _token(api, tenant_a, alice, "member", expires_in_s=1)
    a_member, a_reader = _token(api, tenant_a, alice, "member"), _token(api, tenant_a, alice, "reader")
    b_member, b_reader = _token(api, tenant_b, bob, "member"), _token(api, tenant_b, bob, "reader")
    with ThreadPoolExecutor(max_workers=2) as pool:
        building = [pool.submit(build_tenant, stack_cfg.api_url, made, tenant_a, alice, a_member, a_reader,
                                "10.61.0.0/24"),
                    pool.submit(build_tenant, stack_cfg.api_url, made, tenant_b, bob, b_member, b_reader,
                                "10.62.0.0/24")]
        a, b = (future.result() for future in building)
    _wait_until_expired(stack_cfg.api_url, expired["token"])
    tokens = {Credential.NONE: None, Credential.EXPIRED: expired["token"], Credential.READER: a_reader["token"],
              Credential.MEMBER: a_member["token"],
              Credential.ADMIN: stack_cfg.admin_token_file.read_text().strip()}
    return World(stack_cfg.api_url, a, b, tokens, path_values(a, b))


@pytest.fixture(scope="module")
def world(stack_cfg, api: VmflowClient) -> Iterator[World]:
    """Tenants A and B, each with a network, a stopped VM with a NIC on it, a placement group, a
    data volume and a snapshot of the VM. Everything made is deleted afterwards, also when
    building it failed midway."""
    made = Leftovers()
    try:
        yield build_world(stack_cfg, api, made)
    finally:
        made.remove(api)


@pytest.fixture(scope="module")
def http(stack_cfg) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack_cfg.api_url, timeout=30.0) as client:
        yield client


# -- the matrix ----------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_every_caller_gets_what_the_policy_says_and_nothing_changes(route: Route, world: World, api: VmflowClient,
                                                                      http: httpx.Client):
    before = world_state(api, world)
    problems = [problem for credential in Credential for side in Side
                for problem in try_case(route, credential, side, world, http)]
    after = world_state(api, world)
    changed = [f"changed {key}: {before[key]} -> {after[key]}" for key in before if before[key] != after[key]]
    assert not problems and not changed, "\n".join([f"{route}:", *problems, *changed])
