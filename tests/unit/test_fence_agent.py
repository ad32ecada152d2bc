"""The fence-agent interface, against small real programs that follow the convention."""

from __future__ import annotations

import json
import sys

import pytest

from deploy.fence_lab import parse_options
from services.fencing.agent import AgentConfig, load_config, power
from shared.errors import FenceFailed, InvalidRequest

# A fake power switch: remembers its state in a file; "off" fails when told to.
SWITCH = """
import sys
opts = dict(l.split("=", 1) for l in sys.stdin.read().split())
state_file, action = opts["state"], opts["action"]
if action == "status":
    sys.exit(0 if open(state_file).read() == "on" else 2)
if opts.get("broken") == "1":
    print("no answer from the BMC"); sys.exit(1)
open(state_file, "w").write("off" if action == "off" else "on")
"""


@pytest.fixture
def switch(tmp_path):
    state = tmp_path / "state"
    state.write_text("on")
    program = tmp_path / "fence_switch.py"
    program.write_text(SWITCH)
    return state, (sys.executable, str(program))


async def test_off_is_confirmed_by_status(switch):
    state, argv = switch
    assert await power(AgentConfig(argv, {"state": str(state)}), "off", 10) == "off"
    assert state.read_text() == "off"
    assert await power(AgentConfig(argv, {"state": str(state)}), "status", 10) == "off"


async def test_a_failing_agent_raises_with_its_words(switch):
    state, argv = switch
    with pytest.raises(FenceFailed, match="no answer from the BMC"):
        await power(AgentConfig(argv, {"state": str(state), "broken": "1"}), "off", 10)
    with pytest.raises(FenceFailed, match="cannot run"):
        await power(AgentConfig(("/nonexistent/fence_x",), {}), "off", 10)


def test_configuration_per_host_with_a_default(tmp_path):
    path = tmp_path / "fencing.json"
    path.write_text(json.dumps({"hosts": {"h1": {"agent": ["fence_ipmilan"], "options": {"ip": "10.0.0.1"}}},
                                "default": {"agent": ["fence_lab"], "options": {"plug": "{host}"}}}))
    assert load_config(path, "h1") == AgentConfig(("fence_ipmilan",), {"ip": "10.0.0.1"})
    assert load_config(path, "h7").options == {"plug": "h7"}
    path.write_text("{}")
    with pytest.raises(InvalidRequest):
        load_config(path, "h1")


def test_lab_agent_reads_fence_agents_options():
    assert parse_options("action=off\n# comment\nplug = h2\n\nlab=x\n") == {"action": "off", "plug": "h2", "lab": "x"}
