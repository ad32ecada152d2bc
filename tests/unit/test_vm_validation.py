"""Request validation that needs no running service."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.api.models import VmCreate

GOOD = {"name": "web-1", "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "image": "lab-guest"}


def test_a_good_request_passes():
    assert VmCreate(**GOOD).name == "web-1"


@pytest.mark.parametrize("name", ["", "-web", "web-", "a" * 64, "web 1", "web<1>", "w&b", "$(id)",
                                  "web;rm", "../etc", "wéb", "web.1"])
def test_bad_names_are_refused(name: str):
    with pytest.raises(ValidationError, match="name must be 1-63 letters"):
        VmCreate(**{**GOOD, "name": name})


@pytest.mark.parametrize("field", ["vcpus", "memory_mib", "disk_gib"])
@pytest.mark.parametrize("value", [0, -1])
def test_sizes_must_be_positive(field: str, value: int):
    with pytest.raises(ValidationError, match=field):
        VmCreate(**{**GOOD, field: value})


def test_unknown_fields_are_refused():
    with pytest.raises(ValidationError, match="extra"):
        VmCreate(**{**GOOD, "host": "h1"})
