"""The portal's pure parts: the create form's request and error placement, progress bars, and the
session's CSRF and origin checks; and its pages as a browser gets them, over an API that answers
from canned replies."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs

import httpx
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from services.portal.app import create_portal
from services.portal.forms import field_errors, vm_request
from services.portal.progress import bar_percent, progress_of
from services.portal.session import CSRF_FIELD, CookiePolicy, csrf_ok, csrf_token
from shared.auth import SESSION_COOKIE, same_origin

TOKEN = "vmf_member"
VM_ID = "0f0e0d0c-0b0a-4908-8706-050403020100"
MEMBER = {"user": "test-member", "tenant": "portal-a", "role": "member"}
PROVISION_ID = f"vm-{VM_ID}-provision"
# A provisioning as GET /v1/operations lists it: no error there, only in its own view.
FAILED_PROVISION = {"id": PROVISION_ID, "kind": "ProvisionVm", "state": "failed", "done": True, "vm_id": VM_ID,
                    "host_ids": [], "tenant": "portal-a", "summary": "provision web-1", "started_at": None,
                    "closed_at": None, "temporal_url": None, "cancellable": False}
NO_ROOM = "place: no valid host for 1 vCPU / 200000 MiB: ram removed h1 (needs 200000 MiB, has 3000 MiB free)"


def test_the_form_becomes_the_apis_request_and_keeps_what_is_not_a_number_for_the_api_to_refuse():
    body = vm_request({"name": " web-1 ", "image": "lab-guest", "vcpus": "2", "memory_mib": "12x",
                       "disk_gib": "1", "ha": "on", "user_data": "  "}, ["net-1"])
    assert body == {"name": "web-1", "image": "lab-guest", "vcpus": 2, "memory_mib": "12x", "disk_gib": 1,
                    "storage": "shared", "ha": True, "networks": [{"network_id": "net-1"}]}


def test_the_apis_reasons_go_beside_the_fields_they_name():
    by_field, general = field_errors([
        "name: must be 1-63 letters", "networks.0.network_id: unknown network",
        "memory_mib: at most 1024", "memory_mib: image 'x' needs at least 96", "quota exceeded: vms 10 of 10"])
    assert by_field == {"name": "must be 1-63 letters", "networks": "unknown network",
                        "memory_mib": "at most 1024; image 'x' needs at least 96"}
    assert general == ["quota exceeded: vms 10 of 10"]


def test_progress_follows_the_planned_steps_and_a_copy_in_progress():
    assert progress_of({"kind": "ProvisionVm", "state": "running", "step": "place"}).percent == 3
    assert progress_of({"kind": "ProvisionVm", "state": "running", "step": "start"}).percent == 50
    migrating = progress_of({"kind": "LiveMigrate", "state": "running", "step": "migrate",
                             "activity_progress": {"data_processed_bytes": 50, "data_total_bytes": 100}})
    assert (migrating.percent, migrating.label) == (75, "migrate")
    assert progress_of({"kind": "ProvisionVm", "state": "succeeded"}).percent == 100
    failed = progress_of({"kind": "ProvisionVm", "state": "failed", "error": {"message": "no host fits"}})
    assert (failed.percent, failed.label, failed.failed) == (100, "no host fits", True)
    unknown = progress_of({"kind": "SomethingNew", "state": "running", "step": "x", "steps_done": ["a", "b"]})
    assert 0 < unknown.percent < 100


def test_each_power_action_and_a_maintenances_move_follow_their_own_steps():
    def percent(kind: str, step: str, *steps_done: str) -> int:
        return progress_of({"kind": kind, "state": "running", "step": step, "steps_done": list(steps_done)}).percent

    assert (percent("VmPowerAction", "stop"), percent("VmPowerAction", "record", "stop")) == (3, 50)
    assert percent("VmPowerAction", "wait_booted", "reboot") == 33
    assert percent("VmPowerAction", "wait_booted", "prepare", "start") == 50
    assert (percent("LiveMigrate", "begin"), percent("LiveMigrate", "check", "begin")) == (3, 14)
    assert percent("LiveMigrate", "migrate", "check", "place") == 67  # the API's moves take no "begin"


def test_bars_are_clamped_and_unlimited_is_empty():
    assert (bar_percent(5, 10), bar_percent(20, 10), bar_percent(3, None), bar_percent(0, 0)) == (50, 100, 0, 0)


def test_the_csrf_token_belongs_to_its_session():
    assert csrf_ok("vmf_a", csrf_token("vmf_a"))
    assert not csrf_ok("vmf_b", csrf_token("vmf_a"))
    assert not csrf_ok("vmf_a", None) and not csrf_ok("vmf_a", "")


def test_only_the_portals_own_pages_may_post():
    assert same_origin("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert same_origin(None, "127.0.0.1:8000")  # no Origin: the CSRF token decides
    assert not same_origin("https://evil.example", "127.0.0.1:8000")
    assert not same_origin("null", "127.0.0.1:8000")


def test_the_session_cookie_is_httponly_strict_and_never_outlives_its_token():
    args = CookiePolicy(max_age_s=3600, secure=True).set_args("vmf_x", expires_in_s=120.5)
    assert (args["httponly"], args["samesite"], args["secure"], args["max_age"]) == (True, "strict", True, 120)
    assert CookiePolicy(3600, False).set_args("vmf_x", None)["max_age"] == 3600


def test_the_portal_bench_prints_each_page_next_to_the_raw_call():
    from deploy.bench_portal import format_portal_table

    lines = format_portal_table({"GET /v1/vms (raw API)": [2.0] * 10, "GET /vms (page)": [5.0] * 10})
    assert lines[1].split()[-1] == "1.00" and lines[2].split()[-1] == "2.50"
    assert "5.000" in lines[2]


# --- the pages, over canned API answers ----------------------------------------------------------

class CannedApi:
    """An ASGI app standing in for the API: each (method, path) answers with its canned status and
    JSON, whatever the query; anything else is a 404. Records what the portal asked."""

    def __init__(self, answers: dict[tuple[str, str], tuple[int, Any]]) -> None:
        self.answers = {("GET", "/v1/whoami"): (200, MEMBER), **answers}
        self.asked: list[tuple[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = (scope["method"], scope["path"])
        self.asked.append(key)
        status, body = self.answers.get(key, (404, {"error": {"code": "not_found", "message": "not here"}}))
        await JSONResponse(body, status_code=status)(scope, receive, send)


def member_browser(api: CannedApi) -> httpx.AsyncClient:
    """The portal as a signed-in member's browser reaches it."""
    portal = create_portal(api, CookiePolicy(max_age_s=3600, secure=False))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=portal), base_url="http://portal.test",
                             cookies={SESSION_COOKIE: TOKEN})


async def test_a_failed_operation_says_why_in_words_on_the_vm_and_operations_pages():
    detail = {**FAILED_PROVISION, "step": "failed", "steps_done": ["place", "compensating"],
              "error": {"code": "no_valid_host", "message": NO_ROOM}}
    vm = {"id": VM_ID, "name": "web-1", "state": "error", "nics": []}
    api = CannedApi({("GET", "/v1/operations"): (200, [FAILED_PROVISION]),
                     ("GET", f"/v1/operations/{PROVISION_ID}"): (200, detail),
                     ("GET", f"/v1/vms/{VM_ID}"): (200, vm)})
    async with member_browser(api) as browser:
        for page in ("/operations", f"/vms/{VM_ID}"):
            html = (await browser.get(page)).text
            assert f"failed: {NO_ROOM}" in html, page
            assert "failed: failed" not in html, page


async def test_only_running_and_unsuccessful_operations_cost_a_request_for_their_view():
    succeeded = {**FAILED_PROVISION, "id": f"vm-{VM_ID}-start-1", "kind": "VmPowerAction", "state": "succeeded"}
    api = CannedApi({("GET", "/v1/operations"): (200, [succeeded, FAILED_PROVISION])})
    async with member_browser(api) as browser:
        assert (await browser.get("/operations")).status_code == 200
    asked_views = [path for _method, path in api.asked if path.startswith("/v1/operations/")]
    assert asked_views == [f"/v1/operations/{PROVISION_ID}"]


async def test_the_vm_list_changes_only_when_the_event_stream_says_so():
    """No polling on the list (hx-trigger "every ..." or "load delay:..."): its rows change when
    an event arrives (static/live.js), however many VMs a tenant has."""
    api = CannedApi({("GET", "/v1/vms"): (200, [])})
    async with member_browser(api) as browser:
        html = (await browser.get("/vms")).text
    assert re.findall(r'hx-trigger="([^"]*)"', html) == ["vmflow-changed from:body"]


async def test_after_a_refusal_the_form_keeps_the_networks_and_everything_else_chosen():
    networks = [{"id": f"net-{n}", "name": f"front-{n}", "cidr": f"10.6{n}.0.0/24"} for n in (1, 2, 3)]
    refusal = {"error": {"code": "invalid_request", "message": "name: must be 1-63 letters",
                         "details": ["name: must be 1-63 letters"]}}
    api = CannedApi({("GET", "/v1/images"): (200, [{"name": "lab-guest", "min_memory_mib": 96}]),
                     ("GET", "/v1/networks"): (200, networks),
                     ("GET", "/v1/placement-groups"): (200, [{"id": "pg-1", "name": "spread", "policy": "anti"}]),
                     ("POST", "/v1/vms"): (422, refusal)})
    sent = {CSRF_FIELD: csrf_token(TOKEN), "name": "Not A Name!", "image": "lab-guest", "vcpus": "2",
            "memory_mib": "256", "disk_gib": "3", "storage": "local", "networks": ["net-1", "net-3"],
            "placement_group_id": "pg-1", "ha": "on", "user_data": "#cloud-config"}
    async with member_browser(api) as browser:
        reply = await browser.post("/vms/new", data=sent)
    assert reply.status_code == 422 and "must be 1-63 letters" in reply.text
    assert re.findall(r'<option value="(net-\d)" selected>', reply.text) == ["net-1", "net-3"]
    for kept in ('value="Not A Name!"', 'value="2"', 'value="256"', 'value="3"', '<option value="local" selected>',
                 '<option value="pg-1" selected>', 'id="ha" checked', ">#cloud-config</textarea>"):
        assert kept in reply.text, kept


class PagedOperations(CannedApi):
    """Two pages of operations: the first names the second with X-Next-Page-Token."""

    def __init__(self, first: list[dict], second: list[dict]) -> None:
        super().__init__({})
        self.pages = {"": (first, {"X-Next-Page-Token": "page-2"}), "page-2": (second, {})}
        self.tokens: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] != "/v1/operations":
            return await super().__call__(scope, receive, send)
        token = parse_qs(scope["query_string"].decode()).get("page_token", [""])[0]
        self.tokens.append(token)
        body, headers = self.pages[token]
        await JSONResponse(body, headers=headers)(scope, receive, send)


async def test_the_operations_page_links_the_older_ones_page_by_page():
    newer = {**FAILED_PROVISION, "id": f"vm-{VM_ID}-start-2", "kind": "VmPowerAction", "state": "succeeded"}
    older = {**FAILED_PROVISION, "id": f"vm-{VM_ID}-start-1", "kind": "VmPowerAction", "state": "succeeded"}
    api = PagedOperations([newer], [older])
    async with member_browser(api) as browser:
        first = (await browser.get("/operations", params={"kind": "VmPowerAction"})).text
        assert newer["id"] in first and older["id"] not in first
        link = re.search(r'id="older" href="([^"]+)"', first).group(1).replace("&amp;", "&")
        assert parse_qs(link.split("?", 1)[1]) == {"kind": ["VmPowerAction"], "page": ["page-2"]}
        second = (await browser.get(link)).text
    assert older["id"] in second and newer["id"] not in second
    assert 'id="older"' not in second and "← newest" in second
    assert api.tokens == ["", "page-2"]


def _host(host_id: str, state: str) -> dict:
    use = {"vcpus": 1, "memory_mib": 512, "disk_gib": 10}
    return {"id": host_id, "state": state, "cluster": "lab", "labels": [], "used": use, "capacity": use,
            "last_heartbeat_age_s": 1.0, "operation_id": None, "state_reason": None, "disabled_reason": None}


async def test_each_host_is_offered_the_actions_its_state_allows():
    admin = {"user": "root", "tenant": "ops", "role": "admin"}
    states = ("up", "disabled", "maintenance", "maintenance_failed", "fence_failed", "fenced")
    api = CannedApi({("GET", "/v1/whoami"): (200, admin), ("GET", "/v1/vms"): (200, []),
                     ("GET", "/v1/hosts"): (200, [_host(f"h-{state}", state) for state in states])})
    async with member_browser(api) as browser:
        html = (await browser.get("/hosts")).text
    rows = dict(re.findall(r'<tr data-host="h-([a-z_]+)".*?<td class="actions">(.*?)</td></tr>', html, re.S))
    offered = {state: sorted(re.findall(r'data-action="([a-z ]+)"', rows[state])) for state in states}
    assert offered == {
        "up": ["disable", "maintenance"],
        "disabled": ["enable", "maintenance"],
        "maintenance": ["activate"],
        "maintenance_failed": ["activate", "maintenance"],
        "fence_failed": ["confirm fenced"],
        "fenced": ["enable"],  # once it is back (the API says so if not yet)
    }
    assert 'name="reason"' in rows["up"]  # a host is disabled with the operator's reason
