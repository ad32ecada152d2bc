"""The operation list's filters become a visibility query: every filter ANDed, a tenant's
caller always scoped to its own tenant, and no value that is not strictly well formed ever
reaches the query. The tags and summaries operations start with."""

from __future__ import annotations

import pytest

from services.api.operation_listing import (
    OperationFilter,
    temporal_url,
    visibility_query,
)
from shared.errors import InvalidRequest
from shared.operation_tags import (
    HOST_IDS,
    KIND,
    SUMMARY_MEMO,
    TENANT,
    VM_ID,
    hosts_with,
    kind_action,
    move_route,
    operation_search_attributes,
    operation_summary,
    tagged,
)

VM = "1a2b3c4d-0000-4000-8000-00000000abcd"


def test_no_filter_lists_everything_for_an_admin():
    assert visibility_query(OperationFilter(), None) == ""


def test_every_filter_is_anded():
    query = visibility_query(OperationFilter(VM, "h2", "acme", "LiveMigrate", "running"), None)
    assert query == (f"VmflowVmId = '{VM}' AND VmflowHostIds = 'h2' AND VmflowTenant = 'acme' "
                     "AND VmflowKind = 'LiveMigrate' AND ExecutionStatus = 'Running'")


@pytest.mark.parametrize(("state", "status"), [
    ("succeeded", "Completed"), ("failed", "Failed"), ("cancelled", "Canceled"), ("terminated", "Terminated"),
    ("timed_out", "TimedOut"),
])
def test_states_are_the_apis_names_for_workflow_statuses(state, status):
    assert visibility_query(OperationFilter(state=state), None) == f"ExecutionStatus = '{status}'"


def test_a_tenants_caller_sees_its_own_tenant_only():
    assert visibility_query(OperationFilter(), "acme") == "VmflowTenant = 'acme'"
    assert visibility_query(OperationFilter(tenant="acme", host_id="h1"), "acme") == (
        "VmflowHostIds = 'h1' AND VmflowTenant = 'acme'")
    assert visibility_query(OperationFilter(tenant="globex"), "acme") is None  # nothing it may see


@pytest.mark.parametrize("wanted", [
    OperationFilter(vm_id="x' OR VmflowTenant != 'x"),
    OperationFilter(vm_id=VM.upper()),
    OperationFilter(host_id="h1' OR 1=1"),
    OperationFilter(host_id=""),
    OperationFilter(tenant="Acme"),
    OperationFilter(tenant="acme'"),
    OperationFilter(kind="provision"),
    OperationFilter(kind="LiveMigrate OR x"),
    OperationFilter(state="done"),
    OperationFilter(state="Running"),
])
def test_malformed_values_are_refused_before_any_query(wanted):
    with pytest.raises(InvalidRequest):
        visibility_query(wanted, None)


def test_a_malformed_tenant_is_refused_even_when_it_is_not_the_callers():
    with pytest.raises(InvalidRequest, match="tenant"):
        visibility_query(OperationFilter(tenant="x'y"), "acme")


def test_the_refusal_names_every_bad_filter():
    with pytest.raises(InvalidRequest) as refused:
        visibility_query(OperationFilter(vm_id="nope", kind="nope", state="nope"), None)
    assert all(name in refused.value.message for name in ("vm_id:", "kind:", "state:"))


def test_the_temporal_ui_link():
    assert temporal_url("http://127.0.0.1:8233/", "default", "vm-1-provision") == (
        "http://127.0.0.1:8233/namespaces/default/workflows/vm-1-provision")
    assert temporal_url(None, "default", "vm-1-provision") is None


def test_search_attributes_leave_out_what_is_unknown():
    attributes = operation_search_attributes("ProvisionVm", VM, (None, ""), "acme")
    assert {pair.key.name: pair.value for pair in attributes} == {
        KIND.name: "ProvisionVm", VM_ID.name: VM, TENANT.name: "acme"}
    fleet = operation_search_attributes("HostMaintenance", host_ids=("h2",))
    assert fleet.get(HOST_IDS) == ["h2"] and fleet.get(TENANT) is None


def test_a_move_is_tagged_with_both_hosts_once():
    assert operation_search_attributes("LiveMigrate", VM, ("h1", "h3", "h1")).get(HOST_IDS) == ["h1", "h3"]
    assert hosts_with(["h1"], None, "h3", "h1") == ["h1", "h3"]


def test_summaries_read_as_one_line():
    assert operation_summary("provision", "web-1", "on h2", "acme") == "provision web-1 on h2 for acme"
    assert operation_summary("live-migrate", "vm 1a2b3c4d", move_route("h1", "h3")) == (
        "live-migrate vm 1a2b3c4d h1 -> h3")
    assert operation_summary("maintenance of", "h2") == "maintenance of h2"
    assert move_route("h1", None) == "off h1"
    assert kind_action("AttachVolume") == "attach volume"
    assert len(operation_summary("x", "y" * 500)) == 200


def test_tagged_start_options_carry_the_summary_in_the_memo_too():
    options = tagged("DeleteVm", "delete web-1 for acme", vm_id=VM, tenant="acme", memo={"tenant": "acme"})
    assert options["static_summary"] == "delete web-1 for acme"
    assert options["memo"] == {"tenant": "acme", SUMMARY_MEMO: "delete web-1 for acme"}
    assert options["search_attributes"].get(VM_ID) == VM
