"""``--quota`` and ``--set`` of ``vmflow tenant``, read into the API's quota body."""

from __future__ import annotations

import pytest
import typer

from deploy.cli_tenants import parse_limits, quota_table


def test_limits_become_the_quota_body():
    assert parse_limits(["vms=10", " memory_mib = 4096 "], allow_no_limit=False) == {"vms": 10, "memory_mib": 4096}
    assert parse_limits([], allow_no_limit=False) == {}


def test_none_removes_a_limit_only_where_that_makes_sense():
    assert parse_limits(["vms=none", "networks=Unlimited", "vcpus=0"], allow_no_limit=True) == {
        "vms": None, "networks": None, "vcpus": 0}
    with pytest.raises(typer.BadParameter, match="whole number >= 0$"):
        parse_limits(["vms=none"], allow_no_limit=False)


@pytest.mark.parametrize(("value", "reason"), [
    ("vm=1", "RESOURCE one of vms, vcpus, memory_mib, disk_gib, volumes, snapshots, networks"),
    ("vms", "expected RESOURCE=N"),
    ("vms=-1", "whole number >= 0"),
    ("vms=1.5", "whole number >= 0"),
])
def test_bad_limits_are_refused_saying_why(value, reason):
    with pytest.raises(typer.BadParameter, match=reason):
        parse_limits([value], allow_no_limit=True)


def test_a_resource_given_twice_is_refused():
    with pytest.raises(typer.BadParameter, match="vms is given twice"):
        parse_limits(["vms=1", "vms=2"], allow_no_limit=False)


def test_the_quota_table_says_no_limit_rather_than_null():
    quota = {"tenant": "t1", "warnings": [], "resources": {
        "vms": {"limit": 10, "used": 2, "reserved": 1, "available": 7},
        "vcpus": {"limit": None, "used": 4, "reserved": 0, "available": None}}}
    table = quota_table(quota)
    assert [c.header for c in table.columns] == ["resource", "limit", "used", "reserved", "available"]
    assert list(table.columns[1].cells) == ["10", "no limit"]
    assert list(table.columns[4].cells) == ["7", "-"]
