"""Bad network and NIC input: a 4xx with the reason, and nothing made anywhere (no VM, network,
port, domain, volume, or plumbing on any host)."""

from __future__ import annotations

import pytest

from tests.integration.test_bad_input import GOOD, expect_error
from tests.integration.test_networks import (
    OTHER_TENANT,
    create_network,
    delete_network,
    host_leftovers,
)


@pytest.fixture(scope="module")
def other(tenant_client):
    """A member of the second tenant."""
    return tenant_client(OTHER_TENANT, "member")


@pytest.fixture(scope="module")
def nets(api, other):
    own = create_network(api, "10.47.0.0/24", gateway="10.47.0.254")
    foreign = create_network(other, "10.47.0.0/24")
    yield own, foreign
    delete_network(api, own["id"])
    delete_network(other, foreign["id"])


@pytest.fixture
def everything(stack_cfg, api, probe, nets):
    def snapshot():
        networks = sorted(n["id"] for n in api.call("GET", "/v1/networks"))
        ports = {n: [p["id"] for p in api.call("GET", f"/v1/networks/{n}/ports")] for n in networks}
        volumes = stack_cfg.pool_dir / "volumes"
        return (sorted(vm["id"] for vm in api.call("GET", "/v1/vms")), networks, ports,
                {host_id: sorted(probe.domain_uuids(host_id)) for host_id in probe.uris},
                sorted(p.name for p in volumes.iterdir()) if volumes.exists() else [],
                host_leftovers(stack_cfg))

    return snapshot


@pytest.mark.parametrize(("body", "status", "reason"), [
    ({"name": "n1", "cidr": "10.0.0.0/33"}, 422, "is not an IPv4 network"),
    ({"name": "n1", "cidr": "10.0.0.1/24"}, 422, "host bits set"),
    ({"name": "n1", "cidr": "not-a-cidr"}, 422, "is not an IPv4 network"),
    ({"name": "n1", "cidr": "10.0.0.0/8"}, 422, "a /8 is not allowed"),
    ({"name": "n1", "cidr": "10.0.0.0/31"}, 422, "a /31 is not allowed"),
    ({"name": "n1", "cidr": "10.0.0.0/24", "gateway": "10.0.1.1"}, 422, "gateway: 10.0.1.1 is outside 10.0.0.0/24"),
    ({"name": "n1", "cidr": "10.0.0.0/24", "gateway": "10.0.0.0"}, 422, "network or broadcast address"),
    ({"name": "<net>", "cidr": "10.0.0.0/24"}, 422, "name must be 1-63 letters"),
    ({"name": "n1", "cidr": "10.0.0.0/24", "vni": 5}, 422, "vni: Extra inputs are not permitted"),
])
def test_bad_networks_are_refused(api, everything, body, status, reason):
    before = everything()
    expect_error(api, "POST", "/v1/networks", status, reason, json=body)
    assert everything() == before


def test_bad_nics_and_seeds_are_refused(api, other, everything, nets):
    own, foreign = nets
    before = everything()
    cases = [
        ([{"network_id": own["id"], "ip": "10.48.0.5"}], {}, 422, "ip: 10.48.0.5 is outside 10.47.0.0/24"),
        ([{"network_id": own["id"], "ip": "10.47.0.255"}], {}, 422, "broadcast"),
        ([{"network_id": own["id"], "ip": own["dhcp_address"]}], {}, 409, f"ip: {own['dhcp_address']} is taken"),
        ([{"network_id": own["id"], "ip": "10.47.0.254"}], {}, 409, "ip: 10.47.0.254 is taken"),  # the gateway
        ([{"network_id": own["id"], "ip": "ten"}], {}, 422, "is not an IPv4 address"),
        ([{"network_id": foreign["id"]}], {}, 422, f"unknown network '{foreign['id']}'"),
        ([{"network_id": "net-nope"}], {}, 422, "unknown network 'net-nope'"),
        ([{"network_id": own["id"]}] * 9, {}, 422, "at most 8 NICs"),
        ([], {"user_data": "x" * 20000}, 422, "user_data is 20000 bytes; at most 16384"),
        ([], {"hostname": "Not_A_Host"}, 422, "hostname must be"),
        ([], {"ssh_authorized_keys": ["rm -rf /"]}, 422, "is not an OpenSSH public key line"),
    ]
    for networks, extra, status, reason in cases:
        body = {**GOOD, "name": "bad-nic", "networks": networks, **extra}
        expect_error(api, "POST", "/v1/vms", status, reason, json=body)
    # Another tenant sees none of this tenant's networks.
    expect_error(other, "GET", f"/v1/networks/{own['id']}", 404, "no network")
    expect_error(other, "DELETE", f"/v1/networks/{own['id']}", 404, "no network")
    assert everything() == before


def test_a_provision_failing_midway_frees_its_address_and_leaves_no_plumbing_or_seed(api, everything, nets,
                                                                                    broken_image):
    """The host refuses to start the domain after the NIC's network and the seed were made there:
    the compensation removes both, and the address is free again."""
    own, _foreign = nets
    before = everything()
    accepted = api.call("POST", "/v1/vms", json={**GOOD, "name": "midway", "image": broken_image,
                                                  "networks": [{"network_id": own["id"]}], "hostname": "midway"})
    assert accepted["vm"]["nics"][0]["ip"] == "10.47.0.2"
    op = api.wait_operation(accepted["operation_id"], timeout_s=120)
    assert op["state"] == "failed" and op["error"]["message"].startswith("start: "), op
    assert everything() == before  # no row, port, domain, volume, bridge, DHCP server or seed
