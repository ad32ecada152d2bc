"""Bad input gets a 4xx with a reason and changes nothing anywhere; a failure inside a workflow
ends the operation as failed with a readable error and leaves nothing behind."""

from __future__ import annotations

import os
import uuid

import pytest

from deploy.client import ApiError
from tests.integration.libvirt_probe import wait_until

GOOD = {"name": "ok-name", "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "image": "lab-guest"}


@pytest.fixture
def world(stack_cfg, api, probe):
    """A snapshot of everything a request could have created: inventory, domains, volumes."""

    def snapshot():
        volumes = stack_cfg.pool_dir / "volumes"
        return (
            sorted(vm["id"] for vm in api.call("GET", "/v1/vms")),
            {host_id: sorted(probe.domain_uuids(host_id)) for host_id in probe.uris},
            sorted(os.listdir(volumes)) if volumes.exists() else [],
        )

    return snapshot


def expect_error(api, method: str, path: str, status: int, reason: str, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as caught:
        api.call(method, path, **kwargs)
    assert caught.value.status == status, caught.value
    assert reason in caught.value.message, caught.value
    return caught.value


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"image": "no-such-image"}, "unknown image 'no-such-image'"),
        ({"image": "../../etc/passwd"}, "image must be an image name"),
        ({"vcpus": 0}, "vcpus: Input should be greater than or equal to 1"),
        ({"vcpus": 999}, "vcpus: at most 32"),
        ({"memory_mib": 64}, "memory_mib: image 'lab-guest' needs at least 96"),
        ({"memory_mib": 10**7}, "memory_mib: at most"),
        ({"disk_gib": 0}, "disk_gib: Input should be greater than or equal to 1"),
        ({"disk_gib": 10**6}, "disk_gib: at most"),
        ({"name": "<domain>x</domain>"}, "name must be 1-63 letters"),
        ({"name": "a'; rm -rf / #"}, "name must be 1-63 letters"),
        ({"name": "$(reboot)"}, "name must be 1-63 letters"),
        ({"name": "x" * 64}, "name must be 1-63 letters"),
        ({"name": ""}, "name must be 1-63 letters"),
        ({"vcpus": "two"}, "vcpus: Input should be a valid integer"),
        ({"host": "h1"}, "host: Extra inputs are not permitted"),
        ({"placement_group_id": "pg-nope"}, "unknown placement group 'pg-nope'"),
        ({"ha": True, "storage": "local"}, "ha: a VM whose root disk is on its host's own pool cannot restart"),
        ({"restart_priority": -1}, "restart_priority: Input should be greater than or equal to 0"),
        ({"on_crash": "reboot-forever"}, "on_crash: Input should be 'restart' or 'none'"),
        ({"required_labels": ["<gpu>"]}, "required_labels: label '<gpu>' must be"),
        ({"storage": "nfs"}, "storage: Input should be 'shared' or 'local'"),
    ],
)
def test_bad_create_requests_are_refused_and_change_nothing(api, world, override, reason):
    before = world()
    error = expect_error(api, "POST", "/v1/vms", 422, reason, json={**GOOD, **override})
    assert error.code == "invalid_request"
    assert world() == before


def test_missing_fields_and_non_json_bodies(api, world):
    before = world()
    expect_error(api, "POST", "/v1/vms", 422, "image: Field required", json={"name": "x", "vcpus": 1,
                                                                          "memory_mib": 128, "disk_gib": 1})
    expect_error(api, "POST", "/v1/vms", 422, "JSON", content=b"{not json",
                 headers={"content-type": "application/json"})
    assert world() == before


def test_duplicate_name_is_a_conflict(api, world):
    name = f"dup-{uuid.uuid4().hex[:6]}"
    accepted = api.create_vm(name, 1, 128, 1, "lab-guest")
    try:
        api.wait_operation(accepted["operation_id"], timeout_s=240)
        before = world()
        expect_error(api, "POST", "/v1/vms", 409, f"a VM named '{name}' already exists",
                     json={**GOOD, "name": name})
        assert world() == before
    finally:
        api.wait_operation(api.call("DELETE", f"/v1/vms/{accepted['vm']['id']}")["operation_id"])


@pytest.mark.parametrize("vm_id", [str(uuid.uuid4()), "not-a-uuid", "..%2E%2E", "x%00y"])
def test_unknown_vm_ids_are_404(api, world, vm_id):
    before = world()
    for method, path in [("GET", ""), ("DELETE", ""), ("POST", "/start"), ("POST", "/stop"),
                         ("POST", "/reboot")]:
        error = expect_error(api, method, f"/v1/vms/{vm_id}{path}", 404, "no VM with id")
        assert error.code == "not_found"
    assert world() == before


def test_paths_that_match_nothing_are_404(api):
    error = expect_error(api, "GET", "/v1/vms/..%2F..%2Fetc", 404, "Not Found")
    assert error.code == "not_found"


def test_unknown_operation_is_404(api):
    expect_error(api, "GET", f"/v1/operations/vm-{uuid.uuid4()}-provision", 404, "no operation")
    expect_error(api, "GET", "/v1/operations/drop-table", 404, "no operation")


def test_stop_options_are_validated(api, world):
    before = world()
    expect_error(api, "POST", f"/v1/vms/{uuid.uuid4()}/stop", 422, "timeout_s", json={"timeout_s": -1})
    assert world() == before


def test_no_valid_host_fails_the_operation_with_the_reason_and_leaves_nothing(api, world):
    before = world()
    accepted = api.create_vm(f"huge-{uuid.uuid4().hex[:6]}", 1, 200_000, 1, "lab-guest")
    op = api.wait_operation(accepted["operation_id"], timeout_s=60)
    assert op["state"] == "failed"
    assert op["error"]["code"] == "no_valid_host"
    assert "ram removed h1 (needs 200000 MiB" in op["error"]["message"]
    assert "h2 (needs 200000 MiB" in op["error"]["message"]
    assert world() == before


def test_host_refusing_the_domain_fails_cleanly_and_compensates(api, world, broken_image):
    before = world()
    accepted = api.create_vm(f"broken-{uuid.uuid4().hex[:6]}", 1, 128, 1, broken_image)
    op = api.wait_operation(accepted["operation_id"], timeout_s=120)
    assert op["state"] == "failed"
    assert op["error"]["code"] == "hypervisor_error"
    assert op["error"]["message"].startswith("start: ")
    assert "gone" in op["error"]["message"]  # libvirt's own words about the missing kernel
    assert "compensating" in op["steps_done"]
    # Nothing left: no inventory row, no domain, no volume, no claimed capacity.
    assert world() == before
    expect_error(api, "GET", f"/v1/vms/{accepted['vm']['id']}", 404, "no VM with id")
    def allocated_anywhere() -> bool:  # as a claim, or as a domain in a host's last heartbeat
        return any(accepted["vm"]["id"] in [a["vm_id"] for a in api.call("GET", f"/v1/hosts/{h['id']}")["allocations"]]
                   for h in api.call("GET", "/v1/hosts"))

    wait_until(lambda: not allocated_anywhere(), 10, what="no capacity held for the failed VM")


def test_confirm_fenced_is_refused_for_a_host_that_is_up_or_unknown(api, world):
    before = world()
    error = expect_error(api, "POST", "/v1/hosts/h1/confirm-fenced", 409, "only a failed host whose fencing failed")
    assert error.code == "conflict"
    expect_error(api, "POST", "/v1/hosts/h99/confirm-fenced", 404, "no host 'h99'")
    assert [h["state"] for h in api.call("GET", "/v1/hosts")] == ["up", "up", "up"]
    assert world() == before
