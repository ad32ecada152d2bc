from __future__ import annotations

from shared.settings import CommonSettings


class OrchestratorSettings(CommonSettings):
    # Workflows run outside Temporal's sandbox: each new run of a sandboxed workflow imported and
    # compiled its modules anew (about 70 ms per run, ~125 ms of a live migration's 9 workflow
    # tasks on the lab). The workflow tests run every workflow in the default sandbox, which
    # catches non-deterministic calls there; set VMFLOW_WORKFLOW_SANDBOX=true to keep that guard
    # in a deployment too.
    workflow_sandbox: bool = False
