"""``vmflow op ...``: the fleet's operations (a tenant's token: its own), newest first."""

from __future__ import annotations

from collections.abc import Callable

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deploy.cli_identity import when
from deploy.client import VmflowClient

op_app = typer.Typer(no_args_is_help=True, help="Operations: what the platform does and did, as workflows.")


def list_params(vm: str | None, host: str | None, kind: str | None, state: str | None, limit: int) -> dict:
    """The query of GET /v1/operations: only the filters given."""
    given = {"vm_id": vm, "host_id": host, "kind": kind, "state": state}
    return {"limit": limit, **{name: value for name, value in given.items() if value is not None}}


def register(app: typer.Typer, *, client: Callable[[], VmflowClient], api: Callable, console: Console) -> None:
    """Add the commands; ``client`` and ``api`` are the CLI's own helpers."""
    app.add_typer(op_app, name="op")

    @op_app.command("list")
    def op_list(vm: str = typer.Option(None, "--vm", help="a VM's id"),
                host: str = typer.Option(None, "--host", help="a host it touched (either end of a move)"),
                kind: str = typer.Option(None, "--kind", help="ProvisionVm, LiveMigrate, HostMaintenance, ..."),
                state: str = typer.Option(None, "--state", help="running, succeeded, failed, cancelled, ..."),
                limit: int = typer.Option(50, min=1, max=200)) -> None:
        """Operations, newest first (the running ones and the latest finished). ``vmflow op list
        --host h2`` shows everything that touched h2, as ``VmflowHostIds = 'h2'`` does in the
        Temporal UI."""
        ops = api(lambda: client().call("GET", "/v1/operations", params=list_params(vm, host, kind, state, limit)))
        table = Table("id", "state", "started", "hosts", "summary")
        for op in ops:
            table.add_row(op["id"], op["state"], when(op["started_at"]), ",".join(op["host_ids"]) or "-",
                          escape(op["summary"] or op["kind"]))
        console.print(table)
