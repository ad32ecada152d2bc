"""The portal's pure parts: the create form's request and error placement, progress bars, and the
session's CSRF and origin checks."""

from __future__ import annotations

from services.portal.forms import field_errors, vm_request
from services.portal.progress import bar_percent, progress_of
from services.portal.session import CookiePolicy, csrf_ok, csrf_token
from shared.auth import same_origin


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
