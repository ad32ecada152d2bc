"""The ``vmflow`` command: bring the platform up and down, manage VMs, run benchmarks."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from deploy import cli_identity, cli_networks, cli_operations, cli_tenants, stack
from deploy import cli_session as session
from deploy.cli_networks import parse_nic
from deploy.cli_session import DEFAULT_RUN_DIR
from deploy.client import VmflowClient
from deploy.credentials import CredentialOptions
from shared.logging import configure_logging

app = typer.Typer(no_args_is_help=True, help="vmflow: virtual machines across a fleet of KVM hosts.")
vm_app = typer.Typer(no_args_is_help=True, help="Create and manage VMs.")
app.add_typer(vm_app, name="vm")
console = Console()

# Steps a VM operation goes through, to draw a progress bar.
_STEPS = {"ProvisionVm": 7, "DeleteVm": 6, "VmPowerAction": 4, "LiveMigrate": 5, "HostMaintenance": 4,
          "HostFailover": 3, "RestartVm": 7}


@app.callback()
def _global_options(
    profile: str = typer.Option(None, "--profile", metavar="NAME",
                                help="a profile of the config file (default: $VMFLOW_PROFILE, else 'default')"),
    token: str = typer.Option(None, "--token", metavar="TOKEN",
                              help="an API token, over $VMFLOW_TOKEN and the profile's (it shows in ps: "
                                   "prefer `vmflow login`)"),
    api_url: str = typer.Option(None, "--api-url", metavar="URL",
                                help="the API, over $VMFLOW_API_URL and the profile's"),
) -> None:
    session.set_options(CredentialOptions(api_url=api_url, token=token, profile=profile))


def _owner_of(path: Path) -> str:
    try:
        return pwd.getpwuid(path.stat().st_uid).pw_name
    except (OSError, KeyError):
        return "its owner"


@app.command()
def up(hosts: int = typer.Option(3, min=1, max=16, help="number of lab KVM hosts"),
       run_dir: Path = typer.Option(DEFAULT_RUN_DIR, help="state, logs and pids go here"),
       schedulers: int = typer.Option(3, min=1, max=9, help="scheduler replicas (they share their claims)"),
       nats_cluster: int = typer.Option(1, min=1, max=5, help="nats-servers; more than one are clustered, "
                                        "JetStream keeping 3 copies of every stream and bucket"),
       database: str = typer.Option("sqlite", help="the inventory's engine: sqlite (a file in the run dir) or "
                                    "postgres (a PostgreSQL server of its own, data in the run dir)")) -> None:
    """Start NATS, Temporal, the lab hosts and every service on this machine."""
    if database not in stack.DATABASES:
        raise typer.BadParameter(f"one of {', '.join(stack.DATABASES)}", param_hint="--database")
    cfg = stack.StackConfig(run_dir=str(run_dir.resolve()), host_count=hosts, scheduler_replicas=schedulers,
                            nats_cluster=nats_cluster, database=database)
    cfg = stack.up(cfg, say=console.print)
    console.print(f"API        {cfg.api_url}  (docs: {cfg.api_url}/docs)")
    console.print(f"Portal     {cfg.api_url}/  (sign in with an API token, e.g. the admin token below)")
    console.print(f"Temporal   {cfg.temporal_address}  (UI: http://127.0.0.1:{cfg.temporal_ui_port})")
    console.print(f"NATS       {cfg.nats_url}")
    console.print(f"Inventory  {stack.database_url(cfg)}")
    console.print(f"Admin token {cfg.admin_token_file}  (readable by {_owner_of(cfg.admin_token_file)} only; "
                  "the CLI uses it)")
    console.print(f"logs       {cfg.root / 'logs'}")
    console.print("metrics    (Prometheus text format)")
    for name, where in stack.metrics_endpoints(cfg).items():
        console.print(f"  {name:<16} {escape(where)}")


@app.command()
def down(run_dir: Path = typer.Option(DEFAULT_RUN_DIR)) -> None:
    """Stop everything ``up`` started: guests, lab hosts, services, PostgreSQL, Temporal, NATS."""
    stack.down(run_dir.resolve(), say=console.print)


@app.command()
def status(run_dir: Path = typer.Option(DEFAULT_RUN_DIR)) -> None:
    """Show each component healthy or not. Exits 1 if any is not."""
    report = stack.status(run_dir.resolve())
    if not report:
        console.print(f"nothing runs from {run_dir}")
        raise typer.Exit(1)
    table = Table("component", "health", "detail")
    for name, (healthy, detail) in report.items():
        table.add_row(name, "[green]healthy[/]" if healthy else "[red]down[/]", detail)
    console.print(table)
    raise typer.Exit(0 if all(h for h, _ in report.values()) else 1)


def _client() -> VmflowClient:
    """A client with this invocation's credentials. Raises CredentialsError."""
    return session.client()


def _follow(client: VmflowClient, accepted: dict, wait: bool) -> None:
    op_id = accepted["operation_id"]
    console.print(f"operation {op_id}")
    if not wait:
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("queued", total=None)

        def show(op: dict) -> None:
            moving = op.get("activity_progress") or {}
            if "data_remaining_mib" in moving:  # a live migration: show libvirt's own progress
                sent, left = moving["data_processed_mib"], moving["data_remaining_mib"]
                bar.update(task, total=max(1, sent + left), completed=sent, description=(
                    f"migrate: pass {moving['iteration']}, {left} MiB left, "
                    f"downtime limit {moving['downtime_limit_ms']} ms"))
                return
            if "copied_mib" in moving:  # a disk copied along with its VM
                bar.update(task, total=max(1, moving["total_mib"]), completed=moving["copied_mib"],
                           description=f"{op['step']}: {moving['copied_mib']} of {moving['total_mib']} MiB")
                return
            total = _STEPS.get(op["kind"], 5)
            bar.update(task, description=op["step"] or op["state"], total=total,
                       completed=min(len(op["steps_done"]), total))

        op = client.wait_operation(op_id, on_progress=show)
        bar.update(task, completed=bar.tasks[0].total or 1)
    for line in op.get("details", []):
        console.print(f"  {line}")
    if op["state"] != "succeeded":
        console.print(f"[red]{op['state']}[/]: {op['error']['message'] if op['error'] else ''}")
        raise typer.Exit(1)
    console.print(f"[green]succeeded[/] {op.get('result') or ''}")


def _api(fn):
    """``fn()``; a refusal, an unreachable API or bad credentials end the command (exit 2),
    saying why and what to do."""
    try:
        return fn()
    except session.FAILURES as exc:
        console.print(session.explain(exc))
        raise typer.Exit(2) from None


@vm_app.command("create")
def vm_create(name: str, vcpus: int = 1, memory_mib: int = 128, disk_gib: int = 1,
              image: str = stack.GUEST_IMAGE, storage: str = "shared",
              network: list[str] = typer.Option([], help="a NIC on NETWORK_ID or NETWORK_ID=IP (repeat for more)"),
              hostname: str = typer.Option(None, help="the guest's hostname (cloud-init seed)"),
              user_data: Path = typer.Option(None, help="a cloud-init user-data file"),
              ssh_key: list[Path] = typer.Option([], help="an SSH public key file (repeat for more)"),
              wait: bool = True) -> None:
    """storage: 'shared' (the pool every host sees) or 'local' (the host's own pool). A VM gets a
    cloud-init seed when given a hostname, user-data or SSH keys."""
    client = _client()
    extra: dict = {"networks": [parse_nic(n) for n in network]}
    if hostname:
        extra["hostname"] = hostname
    if user_data:
        extra["user_data"] = user_data.read_text()
    if ssh_key:
        extra["ssh_authorized_keys"] = [k.read_text().strip() for k in ssh_key]
    accepted = _api(lambda: client.create_vm(name, vcpus, memory_mib, disk_gib, image, storage, **extra))
    console.print(f"vm {accepted['vm']['id']}")
    _follow(client, accepted, wait)


@vm_app.command("list")
def vm_list() -> None:
    table = Table("id", "name", "state", "host", "vcpus", "memory_mib", "disk_gib", "image", "storage")
    for vm in _api(lambda: _client().call("GET", "/v1/vms")):
        table.add_row(vm["id"], vm["name"], vm["state"], vm["host_id"] or "-", str(vm["vcpus"]),
                      str(vm["memory_mib"]), str(vm["disk_gib"]), vm["image"], vm["storage"])
    console.print(table)


@vm_app.command("show")
def vm_show(vm_id: str) -> None:
    console.print_json(data=_api(lambda: _client().call("GET", f"/v1/vms/{vm_id}")))


@vm_app.command("delete")
def vm_delete(vm_id: str, wait: bool = True) -> None:
    client = _client()
    _follow(client, _api(lambda: client.call("DELETE", f"/v1/vms/{vm_id}")), wait)


def _post_action(vm_id: str, action: str, wait: bool, body: dict | None = None) -> None:
    client = _client()
    _follow(client, _api(lambda: client.call("POST", f"/v1/vms/{vm_id}/{action}", json=body)), wait)


@vm_app.command("start")
def vm_start(vm_id: str, wait: bool = True) -> None:
    _post_action(vm_id, "start", wait)


@vm_app.command("stop")
def vm_stop(vm_id: str, timeout_s: float = 30.0, force: bool = False, wait: bool = True) -> None:
    _post_action(vm_id, "stop", wait, {"timeout_s": timeout_s, "force": force})


@vm_app.command("reboot")
def vm_reboot(vm_id: str, timeout_s: float = 30.0, force: bool = False, wait: bool = True) -> None:
    _post_action(vm_id, "reboot", wait, {"timeout_s": timeout_s, "force": force})


@vm_app.command("migrate")
def vm_migrate(vm_id: str, to: str = typer.Option(None, help="target host; default: the scheduler picks"),
               completion_timeout_s: float = 120.0, post_copy: bool = False, wait: bool = True) -> None:
    """Live-migrate a running VM (or move a stopped one) to another host."""
    body = {"target_host_id": to, "completion_timeout_s": completion_timeout_s, "post_copy": post_copy}
    _post_action(vm_id, "migrate", wait, body)


@vm_app.command("console")
def vm_console(vm_id: str,
               retries: int = typer.Option(5, min=0, help="reconnects when the VM moves to another host"),
               idle_exit_s: float = typer.Option(2.0, help="piped stdin: leave once the guest is quiet this long")) -> None:
    """Attach to the VM's serial console (like virsh console); Ctrl-] leaves. With stdin not a
    terminal, sends it and prints what the guest answers."""
    from deploy import console_client

    creds = _api(session.credentials)
    vm = _api(lambda: _client().call("GET", f"/v1/vms/{vm_id}"))
    raise typer.Exit(console_client.attach(creds.api_url, vm_id, vm["name"], token=creds.token, retries=retries,
                                           idle_exit_s=idle_exit_s))


host_app = typer.Typer(no_args_is_help=True, help="Operate the fleet's hosts.")
app.add_typer(host_app, name="host")


@host_app.command("maintenance")
def host_maintenance(host_id: str, wait: bool = True) -> None:
    """Stop placing VMs on the host and move every VM off it."""
    client = _client()
    _follow(client, _api(lambda: client.call("POST", f"/v1/hosts/{host_id}/maintenance")), wait)


@host_app.command("activate")
def host_activate(host_id: str) -> None:
    """Return a host from maintenance (or disabled) to service."""
    host = _api(lambda: _client().call("DELETE", f"/v1/hosts/{host_id}/maintenance"))
    console.print(f"{host['id']}: {host['state']}")


@host_app.command("confirm-fenced")
def host_confirm_fenced(host_id: str, wait: bool = True) -> None:
    """Say a failed host is off after its fencing failed: its HA VMs restart elsewhere. Only
    when you checked it really is off: its guests would otherwise run twice."""
    accepted = _api(lambda: _client().call("POST", f"/v1/hosts/{host_id}/confirm-fenced"))
    _follow(_client(), accepted, wait)


@host_app.command("list")
def host_list() -> None:
    """Hosts with their state, liveness and use."""
    table = Table("host", "state", "liveness", "memory MiB used/total", "why")
    for h in _api(lambda: _client().call("GET", "/v1/hosts")):
        table.add_row(h["id"], h["state"], h["liveness"], f"{h['used']['memory_mib']}/{h['capacity']['memory_mib']}",
                      h["state_reason"] or h["disabled_reason"])
    console.print(table)


cli_networks.register(app, vm_app, _client, _api, _follow, console)
cli_identity.register(app, client=_client, api=_api, console=console, options=session.options,
                      local_stack=session.local_stack)
cli_tenants.register(app, client=_client, api=_api, console=console)
cli_operations.register(app, client=_client, api=_api, console=console)


BENCHES = ("provision", "placement", "migration", "failover", "network", "auth", "portal", "control-plane")


@app.command("bench")
def bench(what: str = typer.Argument("provision"), count: int = typer.Option(5, min=1, max=50),
          memory_mib: int = 128,
          storage: str = typer.Option("shared", help="migration: where the root disk lives, shared or local"),
          cut: str = typer.Option("power", help="failover: pull a host's 'power' or cut its 'network'"),
          requests: int = typer.Option(500, min=10, max=100_000, help="auth, portal: measured requests of each kind"),
          hosts: int = typer.Option(1000, min=1, help="control-plane: simulated hosts"),
          vms: int = typer.Option(10_000, min=0, help="control-plane: VMs in the inventory"),
          sse_clients: int = typer.Option(100, min=1, help="control-plane: clients on GET /v1/events"),
          run_dir: Path = typer.Option(DEFAULT_RUN_DIR, help="stack to measure (must be up)")) -> None:
    """provision: provisioning latency through the platform vs the bare libvirt baseline, same
    run. placement: the scheduler at 100 to 10,000 mock hosts vs a bare NATS echo (no stack).
    migration: live migration through the platform vs a bare libvirt migration, same run.
    failover: a host's power pulled (or link cut) to its HA guest's boot marker elsewhere, by
    phase, vs the same guest booted directly through libvirt, same run. network: round trip and
    TCP throughput between two guests on different hosts through the overlay vs the two hosts
    directly over their link, same run. auth: what authentication and policy add to a request:
    an authenticated GET /v1/vms next to GET /healthz, interleaved, and a fresh token's first
    request. portal: each portal page next to the raw API call it is built on, interleaved.
    control-plane: its own scheduler and API against --hosts simulated hosts and --vms VMs:
    listings next to /healthz, SSE to --sse-clients next to a bare NATS subscriber, heartbeat
    intake, memory and CPU (no stack; options: python -m deploy.bench_control_plane --help).
    Every bench but placement and control-plane uses the CLI's credentials, for the stack of
    --run-dir."""
    if what not in BENCHES:
        raise typer.BadParameter(f"one of {', '.join(BENCHES)}", param_hint="WHAT")
    if what == "migration" and storage not in ("shared", "local"):
        raise typer.BadParameter("'shared' or 'local'", param_hint="--storage")
    from deploy import bench as bench_module

    if what == "placement":
        from deploy import bench_placement

        bench_placement.run_placement_bench(say=console.print)
        return
    if what == "control-plane":
        from deploy import bench_control_plane

        try:
            bench_control_plane.run_control_plane_bench(
                bench_control_plane.BenchArgs(hosts=hosts, vms=vms, sse_clients=sse_clients), say=console.print)
        except bench_module.BenchError as exc:
            console.print(f"[red]bench {what}[/]: {escape(str(exc))}")
            raise typer.Exit(2) from None
        return
    run_dir = run_dir.resolve()
    token = _api(lambda: session.credentials(run_dir, api_url=session.local_stack(run_dir).api_url)).token
    try:
        if what == "auth":
            from deploy import bench_auth

            bench_auth.run_auth_bench(run_dir, requests, console.print, token)
        elif what == "portal":
            from deploy import bench_portal

            bench_portal.run_portal_bench(run_dir, requests, console.print, token)
        elif what == "migration":
            from deploy import bench_migration

            bench_migration.run_migration_bench(run_dir, count, console.print, storage, token)
        elif what == "failover":
            from deploy import bench_failover

            bench_failover.run_failover_bench(run_dir, count, cut, console.print, token)
        elif what == "network":
            from deploy import bench_network

            bench_network.run_network_bench(run_dir, count, console.print, token)
        else:
            bench_module.run_provision_bench(run_dir, count, memory_mib, console.print, token)
    except bench_module.BenchError as exc:
        console.print(f"[red]bench {what}[/]: {escape(str(exc))}")
        raise typer.Exit(2) from None


def main() -> None:
    configure_logging("cli", os.environ.get("VMFLOW_LOG_LEVEL", "warning"))
    try:
        app()
    except session.FAILURES as exc:  # raised outside _api: the same words
        console.print(session.explain(exc))
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
