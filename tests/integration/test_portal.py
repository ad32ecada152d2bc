"""The portal in a real browser (headless Chromium) against the real stack: what a tenant's
member, a reader and an operator see and do, checked against the API, libvirt and the guest's
own console. A failing test leaves a screenshot of its page in VMFLOW_SCREENSHOT_DIR."""

from __future__ import annotations

import json
import re
import time
import uuid
from urllib.parse import quote

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from deploy.client import ApiError, VmflowClient
from shared.console import WS_CLOSE_FORBIDDEN
from tests.integration.browser import Browser
from tests.integration.libvirt_probe import wait_until
from tests.integration.test_networks import (
    create_network,
    create_vm,
    delete_network,
    wait_created,
)

pytestmark = pytest.mark.integration
BOOT_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def chromium(stack_cfg):
    browser = Browser(stack_cfg.api_url)
    yield browser
    browser.close()


@pytest.fixture
def browser(chromium, request):
    yield chromium
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        path = chromium.screenshot(f"failed-{request.node.name}")
        print(f"screenshot of the failing page: {path}")


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _running_vm(client: VmflowClient, name: str, cleanup: list[str]) -> dict:
    accepted = client.call("POST", "/v1/vms", json={"name": name, "vcpus": 1, "memory_mib": 128, "disk_gib": 1,
                                                      "image": "lab-guest"})
    cleanup.append(accepted["vm"]["id"])
    op = client.wait_operation(accepted["operation_id"], timeout_s=BOOT_TIMEOUT_S)
    assert op["state"] == "succeeded", op
    return client.call("GET", f"/v1/vms/{accepted['vm']['id']}")


@pytest.fixture(scope="module")
def portal_a_vm(tenant_client, api):
    """A running VM of portal-a's for the tests that only look at one, or give it back running:
    one boot for them all. Deleted when the module ends, whatever happened."""
    vm_ids: list[str] = []
    try:
        yield _running_vm(tenant_client("portal-a", "member"), _name("app"), vm_ids)
    finally:
        for vm_id in vm_ids:
            try:
                api.wait_operation(api.call("DELETE", f"/v1/vms/{vm_id}")["operation_id"], timeout_s=120)
            except ApiError:
                pass


def _back_to_running(client: VmflowClient, vm_id: str, op_ids: list[str]) -> None:
    """The shared VM goes to the next test running, whatever this one left it doing."""
    for op_id in op_ids:
        client.wait_operation(op_id, timeout_s=BOOT_TIMEOUT_S)
    if client.call("GET", f"/v1/vms/{vm_id}")["state"] != "running":
        started = client.call("POST", f"/v1/vms/{vm_id}/start")
        client.wait_operation(started["operation_id"], timeout_s=BOOT_TIMEOUT_S)


def test_member_creates_a_vm_watches_it_run_and_types_into_its_console(browser, tenant_client, api, probe, cleanup):
    alice = tenant_client("portal-a", "member")
    browser.sign_in(alice.token)
    assert browser.text("#whoami") == "test-member @ portal-a"
    browser.open("/vms")
    browser.find("#create-vm").click()
    name = _name("web")
    browser.find("#name").send_keys(name)
    browser.find("#memory_mib").clear()
    browser.find("#memory_mib").send_keys("128")
    browser.screenshot("vm-create-form")
    browser.find("#submit-vm").click()

    page = browser.wait_for(lambda: re.fullmatch(r"/vms/([0-9a-f-]{36})\?done=create", browser.path), 30,
                            "the new VM's page")
    vm_id = page.group(1)
    assert browser.text("#notice") == "Creation requested."
    cleanup.append(vm_id)
    browser.mark_page()
    percents_seen: set[int] = set()

    def running_yet() -> bool:
        """Notes the provisioning bar's value on each look: the page re-renders on each event, and
        every 2 s while an operation runs, so a provisioning of several seconds shows steps."""
        percents = {int(bar.get_attribute("aria-valuenow")) for bar in browser.find_all("#vm-operations .progress")}
        if not any(0 < p < 100 for p in percents_seen) and any(0 < p < 100 for p in percents):
            browser.screenshot("vm-provisioning")  # the README's picture of an operation under way
        percents_seen.update(percents)
        return browser.find("#vm-state").get_attribute("data-state") == "running"

    browser.wait_for(running_yet, BOOT_TIMEOUT_S, "the VM to show as running")
    assert browser.same_page(), "the page reloaded: the state should arrive over the event stream"
    browser.wait_for(lambda: browser.find("#vm-operations .progress").get_attribute("aria-valuenow") == "100", 30,
                     "the provisioning's bar to fill")
    assert any(0 < percent < 100 for percent in percents_seen), f"the bar went {sorted(percents_seen)}, no step between"

    # The world agrees: the API and the VM's host's libvirt.
    vm = api.call("GET", f"/v1/vms/{vm_id}")
    assert (vm["name"], vm["tenant"], vm["state"]) == (name, "portal-a", "running")
    assert probe.state(vm["host_id"], vm_id) == "running"

    browser.find("#console-open").click()
    browser.wait_for(lambda: browser.find("#console").get_attribute("data-connected") == "true", 30,
                     "the console to connect")
    browser.wait_for(lambda: browser.exists(".xterm-helper-textarea"), 10, "the terminal")
    browser.find(".xterm-helper-textarea").send_keys("\n")
    browser.find(".xterm-helper-textarea").send_keys("echo portal-$((6*7))\n")
    browser.wait_for(lambda: "portal-42" in browser.text("#console .xterm-rows"), 60,
                     "the guest's answer in the console")
    browser.driver.execute_script("document.getElementById('console').scrollIntoView({block: 'center'})")
    browser.screenshot("vm-page-console")


def test_invalid_form_input_shows_the_api_reason_beside_the_field_and_creates_nothing(browser, tenant_client):
    bob = tenant_client("portal-a", "member")
    before = bob.call("GET", "/v1/vms")
    browser.sign_in(bob.token)
    browser.open("/vms/new")
    browser.find("#name").send_keys("Not A Name!")
    browser.find("#vcpus").clear()
    browser.find("#vcpus").send_keys("0")
    browser.find("#submit-vm").click()
    browser.wait_for(lambda: browser.exists("#error-name"), 15, "the name's error")
    assert "letters, digits or '-'" in browser.text("#error-name")
    assert "greater than or equal to 1" in browser.text("#error-vcpus")
    assert browser.find("#name").get_attribute("value") == "Not A Name!"  # what was typed stays
    browser.screenshot("vm-create-invalid")

    # What only the API knows (the image's needs) shows beside its field too.
    browser.find("#name").clear()
    browser.find("#name").send_keys(_name("tiny"))
    browser.find("#vcpus").clear()
    browser.find("#vcpus").send_keys("1")
    browser.find("#memory_mib").clear()
    browser.find("#memory_mib").send_keys("16")
    browser.find("#submit-vm").click()
    browser.wait_for(lambda: browser.exists("#error-memory_mib"), 15, "the memory's error")
    assert "image 'lab-guest' needs at least 96" in browser.text("#error-memory_mib")
    assert not browser.exists("#error-name")
    assert bob.call("GET", "/v1/vms") == before


def test_a_reader_is_offered_no_changes_and_its_forged_requests_are_refused(browser, tenant_client, api, probe,
                                                                            portal_a_vm):
    vm = portal_a_vm
    reader = tenant_client("portal-a", "reader")
    browser.sign_in(reader.token)
    browser.open("/vms")
    browser.wait_for(lambda: browser.exists(f'tr[data-vm="{vm["id"]}"]'), 15, "the VM in the list")
    assert not browser.exists("#create-vm")
    browser.open(f"/vms/{vm['id']}")
    assert browser.text("#vm-state") == "running"
    assert not browser.exists("#vm-actions") and not browser.exists("#console-open")
    assert not browser.exists("form[action$='/stop']")

    # The page's own script, with the session's CSRF token: the portal sends it on, the API refuses.
    csrf = browser.find('meta[name="csrf-token"]').get_attribute("content")
    forged = browser.fetch("POST", f"/vms/{vm['id']}/stop", {"csrf_token": csrf})
    assert forged["status"] == 403 and "a reader token may not POST" in forged["body"], forged
    straight_to_api = browser.fetch("POST", f"/v1/vms/{vm['id']}/stop")  # the cookie never carries a change
    assert straight_to_api["status"] == 401, straight_to_api
    assert browser.fetch("GET", "/vms/new")["status"] == 403

    assert api.call("GET", f"/v1/vms/{vm['id']}")["state"] == "running"
    assert probe.state(vm["host_id"], vm["id"]) == "running"


def test_a_members_session_refuses_forms_without_its_csrf_token_or_from_another_site(browser, tenant_client, api,
                                                                                    stack_cfg, portal_a_vm):
    member = tenant_client("portal-a", "member")
    vm = portal_a_vm
    browser.sign_in(member.token)
    browser.open(f"/vms/{vm['id']}")
    assert browser.exists("#vm-actions")
    no_token = browser.fetch("POST", f"/vms/{vm['id']}/stop")
    assert no_token["status"] == 403 and "security token" in no_token["body"], no_token
    stale = browser.fetch("POST", f"/vms/{vm['id']}/stop", {"csrf_token": "0" * 64})
    assert stale["status"] == 403

    # Another site's page: its browser names it in Origin. The cookie alone gets nothing done.
    cookie = {"vmflow_session": browser.driver.get_cookie("vmflow_session")["value"]}
    csrf = browser.find('meta[name="csrf-token"]').get_attribute("content")
    cross_site = httpx.post(f"{stack_cfg.api_url}/vms/{vm['id']}/stop", cookies=cookie,
                            data={"csrf_token": csrf}, headers={"Origin": "http://elsewhere.invalid"})
    assert cross_site.status_code == 403 and "another site" in cross_site.text
    console = stack_cfg.api_url.replace("http", "ws") + f"/v1/vms/{vm['id']}/console"
    with connect(console, additional_headers={"Cookie": f"vmflow_session={cookie['vmflow_session']}",
                                              "Origin": "http://elsewhere.invalid"}, open_timeout=10) as ws:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    assert ws.close_code == WS_CLOSE_FORBIDDEN
    assert api.call("GET", f"/v1/vms/{vm['id']}")["state"] == "running"


def test_the_vm_list_follows_a_power_change_made_elsewhere_without_a_reload(browser, tenant_client, portal_a_vm):
    """The list has no polling: the row's state can only change through the page's event stream."""
    member = tenant_client("portal-a", "member")
    vm_id = portal_a_vm["id"]
    state = f'tr[data-vm="{vm_id}"] .vm-state .state'
    browser.sign_in(member.token)
    browser.open("/vms")
    assert browser.text(state) == "running"
    assert not browser.exists("[hx-trigger*='every'], [hx-trigger*='delay']"), "the VM list polls"
    browser.wait_for(lambda: browser.driver.execute_script("return document.body.dataset.stream") == "open", 15,
                     "the page's event stream to open")
    browser.mark_page()
    op_ids: list[str] = []
    try:
        op_ids.append(member.call("POST", f"/v1/vms/{vm_id}/stop", json={"force": True})["operation_id"])
        browser.wait_for(lambda: browser.text(state) == "stopped", 60, "the row to say stopped")
        member.wait_operation(op_ids[-1], timeout_s=60)
        op_ids.append(member.call("POST", f"/v1/vms/{vm_id}/start")["operation_id"])
        browser.wait_for(lambda: browser.text(state) == "running", BOOT_TIMEOUT_S, "the row to say running again")
        assert browser.same_page(), "the page reloaded: the state should arrive over the event stream"
    finally:
        _back_to_running(member, vm_id, op_ids)


NO_HOST_HOLDS_MIB = 200_000  # under the API's max_memory_mib (262144), over any lab host's memory


def test_a_failed_operation_says_why_in_words(browser, tenant_client, cleanup):
    """A VM no host can hold passes validation and quota (portal-d has no limits) and its
    provisioning fails in placement; the operations page gives the scheduler's reason."""
    member = tenant_client("portal-d", "member")
    accepted = member.call("POST", "/v1/vms", json={"name": _name("huge"), "vcpus": 1, "disk_gib": 1,
                                                     "memory_mib": NO_HOST_HOLDS_MIB, "image": "lab-guest"})
    cleanup.append(accepted["vm"]["id"])  # the failure removes it; deleted here if it did not
    op = member.wait_operation(accepted["operation_id"], timeout_s=60)
    assert (op["state"], op["error"]["code"]) == ("failed", "no_valid_host"), op
    browser.sign_in(member.token)
    browser.open(f"/operations?vm_id={accepted['vm']['id']}")
    progress = f'#op-table tr[data-op="{accepted["operation_id"]}"] .progress-cell'
    # The list may still see it running for a moment: the page then looks again by itself.
    browser.wait_for(lambda: "no valid host" in browser.text(progress), 30, "the reason in the failed row")
    assert f"{NO_HOST_HOLDS_MIB} MiB" in browser.text(progress), browser.text(progress)
    browser.screenshot("operation-failed")


def test_signing_out_revokes_the_sessions_token(browser, tenant_client, stack_cfg):
    member = tenant_client("portal-a", "member")
    browser.sign_in(member.token)
    session_token = browser.driver.get_cookie("vmflow_session")["value"]
    assert session_token != member.token  # the pasted token is not what the cookie carries
    assert VmflowClient(stack_cfg.api_url, session_token).call("GET", "/v1/whoami")["user"] == "test-member"
    browser.find("form[action='/logout'] button").click()
    browser.wait_for(lambda: browser.path == "/login", 15, "the sign-in page")
    with pytest.raises(ApiError) as refused:
        VmflowClient(stack_cfg.api_url, session_token).call("GET", "/v1/whoami")
    assert refused.value.status == 401
    assert member.call("GET", "/v1/whoami")["user"] == "test-member"  # the pasted one still works


def test_an_admin_puts_a_host_into_maintenance_and_watches_its_vms_leave(browser, admin_token, api, tenant_client,
                                                                         cleanup):
    member = tenant_client("portal-a", "member")
    vm = _running_vm(member, _name("drain"), cleanup)
    host = vm["host_id"]
    browser.sign_in(admin_token)
    browser.open("/hosts")
    browser.wait_for(lambda: browser.exists(f'tr[data-host="{host}"] a[data-vm="{vm["id"]}"]'), 15,
                     f"the VM listed on {host}")
    browser.mark_page()
    browser.screenshot("hosts")
    browser.find(f'tr[data-host="{host}"] button[data-action="maintenance"]').click()
    browser.driver.switch_to.alert.accept()
    try:
        browser.wait_for(lambda: browser.find(f'tr[data-host="{host}"]').get_attribute("data-state") == "maintenance",
                         BOOT_TIMEOUT_S, f"{host} in maintenance")
        browser.screenshot("hosts-maintenance")
        browser.mark_page()
        browser.wait_for(lambda: not browser.exists(f'tr[data-host="{host}"] a[data-vm="{vm["id"]}"]'), 60,
                         f"the VM to leave {host} on the page")
        moved = api.call("GET", f"/v1/vms/{vm['id']}")
        assert moved["host_id"] != host and moved["state"] == "running", moved
        browser.wait_for(lambda: browser.exists(f'tr[data-host="{moved["host_id"]}"] a[data-vm="{vm["id"]}"]'),
                         30, "the VM listed on its new host")
        assert browser.same_page()
    finally:
        api.call("DELETE", f"/v1/hosts/{host}/maintenance")  # back in service, whatever happened above
        wait_until(lambda: api.call("GET", f"/v1/hosts/{host}")["state"] == "up", 60, what=f"{host} up again")


def test_a_tenant_never_sees_another_tenants_vm_operation_or_event(browser, tenant_client, cleanup):
    theirs = tenant_client("portal-b", "member")
    their_vm = _running_vm(theirs, _name("secret"), cleanup)
    mine = tenant_client("portal-c", "member")
    browser.sign_in(mine.token)
    browser.open("/vms")
    # Listen on this page's own event stream while the other tenant does things.
    browser.driver.execute_script("""
        window.__seen = [];
        const s = new EventSource('/v1/events?named=false');
        s.onmessage = (e) => window.__seen.push(e.data);
        window.__stream = s;""")
    browser.wait_for(lambda: browser.driver.execute_script("return window.__stream.readyState") == 1, 15,
                     "the page's event stream to open")
    reboot = theirs.call("POST", f"/v1/vms/{their_vm['id']}/reboot")
    theirs.wait_operation(reboot["operation_id"], timeout_s=BOOT_TIMEOUT_S)
    # Something of its own arrives (the audit record of a token it makes), so the stream works.
    mine.call("POST", "/v1/tokens", json={"role": "reader", "expires_in_s": 60})
    browser.wait_for(lambda: any("portal-c" in e for e in browser.driver.execute_script("return window.__seen")),
                     15, "the tenant's own event")
    seen = browser.driver.execute_script("window.__stream.close(); return window.__seen;")
    assert not [e for e in seen if their_vm["id"] in e or "portal-b" in e], seen

    for page in ["/vms", "/operations", "/audit", "/volumes", "/networks", "/quota"]:
        browser.open(page)
        source = browser.driver.page_source
        assert their_vm["id"] not in source and their_vm["name"] not in source and "portal-b" not in source, page
    browser.open(f"/operations?vm_id={their_vm['id']}")  # asking by its id (the filter box shows it)
    assert not browser.exists("#op-table tr[data-op]")
    assert their_vm["name"] not in browser.driver.page_source and "portal-b" not in browser.driver.page_source
    browser.open(f"/vms/{their_vm['id']}")
    assert "not found" in browser.text("#error-message").lower() or "no vm" in browser.text("#error-message").lower()
    assert browser.fetch("GET", f"/v1/operations/{reboot['operation_id']}")["status"] == 404
    assert browser.fetch("GET", "/hosts")["status"] == 403


@pytest.fixture
def portal_a_network(tenant_client):
    """A network of portal-a's, deleted after the VMs on it (``cleanup`` comes after it)."""
    member = tenant_client("portal-a", "member")
    network = create_network(member, "10.61.0.0/24", name="front")
    yield network
    delete_network(member, network["id"])


def test_main_pages_load_without_script_errors(browser, admin_token, tenant_client, portal_a_network, stack_cfg,
                                               cleanup):
    """Every main page, as a member and as an admin, loads with no error in the browser's console
    (a missing asset, a script error). The pictures in the README are these pages."""
    member = tenant_client("portal-a", "member", quota={"vms": 8, "vcpus": 8, "memory_mib": 2048, "disk_gib": 40})
    nic = [{"network_id": portal_a_network["id"]}]
    accepted = [create_vm(member, name, nic if on_net else []) for name, on_net in
                (("web-1", True), ("web-2", True), ("batch-1", False))]
    cleanup.extend(a["vm"]["id"] for a in accepted)
    web, _, batch = [wait_created(member, a) for a in accepted]
    member.wait_operation(member.call("POST", f"/v1/vms/{batch['id']}/stop")["operation_id"], timeout_s=120)
    browser.driver.get_log("browser")  # what earlier tests left
    browser.sign_in(member.token)
    for page, name in (("/vms", "vms"), (f"/vms/{web['id']}", "vm"), ("/quota", "quota"),
                       ("/operations", "operations-tenant"), ("/networks", "networks")):
        browser.open(page)
        time.sleep(0.5)
        browser.screenshot(name)
    browser.open("/vms")
    assert web["nics"][0]["ip"] in browser.text(f'tr[data-vm="{web["id"]}"]')  # addresses, as the API has them
    assert browser.text(f'tr[data-vm="{batch["id"]}"] .vm-state') == "stopped"
    browser.sign_in(admin_token)
    for page, name in (("/hosts", "hosts"), ("/operations", "operations"), ("/audit", "audit")):
        browser.open(page)
        time.sleep(0.5)
        browser.screenshot(name)
    errors = [entry for entry in browser.driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, json.dumps(errors, indent=2)

    # The Temporal UI, filtered by a search attribute: everything that touched web-1's host.
    query = quote(f"VmflowHostIds = '{web['host_id']}'")
    browser.driver.get(f"http://127.0.0.1:{stack_cfg.temporal_ui_port}/namespaces/default/workflows?query={query}")
    browser.wait_for(lambda: f"vm-{web['id']}-provision" in browser.driver.page_source, 60,
                     f"web-1's provisioning among the workflows that touched {web['host_id']}")
    if batch["host_id"] != web["host_id"]:
        assert f"vm-{batch['id']}-provision" not in browser.driver.page_source
    browser.screenshot("temporal-ui")
