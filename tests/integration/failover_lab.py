"""The lab's faults for the failover tests (shared with ``vmflow bench failover``)."""

from __future__ import annotations

import json
from contextlib import contextmanager

from deploy import stack
from deploy.lab_faults import (  # noqa: F401  (re-exported for the tests)
    DoubleRunWatcher,
    console_boots,
    failover_of,
    host_state,
    power_off,
    provision_on,
    restore,
    set_link,
)


@contextmanager
def fence_agent(stack_cfg, host_id: str, argv: list[str]):
    """Give one host another fence agent for the duration (e.g. one that always fails)."""
    path = stack_cfg.root / stack.FENCING_FILE
    saved = path.read_text()
    config = json.loads(saved)
    config.setdefault("hosts", {})[host_id] = {"agent": argv, "options": {}}
    path.write_text(json.dumps(config))
    try:
        yield
    finally:
        path.write_text(saved)
