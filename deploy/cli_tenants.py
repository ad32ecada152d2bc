"""``vmflow tenant ...`` and ``vmflow audit``: tenants, their quotas and users, and the audit
trail of who changed what."""

from __future__ import annotations

from collections.abc import Callable

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deploy.cli_identity import when
from deploy.client import VmflowClient
from shared.quota import Resource

tenant_app = typer.Typer(no_args_is_help=True, help="Tenants: who owns what, and how much of it they may hold.")
user_app = typer.Typer(no_args_is_help=True, help="The users of a tenant.")

NO_LIMIT_WORDS = ("none", "null", "unlimited")


def parse_limits(values: list[str], allow_no_limit: bool, option: str = "--quota") -> dict[str, int | None]:
    """``["vms=10", "memory_mib=4096"]`` as the API's quota body. With ``allow_no_limit``,
    ``vms=none`` (or null, unlimited) removes a limit. Raises typer.BadParameter for an unknown
    resource, a value that is not a whole number >= 0, or a resource given twice."""
    known = [r.value for r in Resource]
    limits: dict[str, int | None] = {}
    for value in values:
        name, sep, amount = value.partition("=")
        name, amount = name.strip(), amount.strip().lower()
        if not sep or name not in known:
            raise typer.BadParameter(f"{value!r}: expected RESOURCE=N, RESOURCE one of {', '.join(known)}",
                                     param_hint=option)
        if name in limits:
            raise typer.BadParameter(f"{name} is given twice", param_hint=option)
        if allow_no_limit and amount in NO_LIMIT_WORDS:
            limits[name] = None
        elif amount.isascii() and amount.isdigit():
            limits[name] = int(amount)
        else:
            words = f" or {'/'.join(NO_LIMIT_WORDS)} for no limit" if allow_no_limit else ""
            raise typer.BadParameter(f"{value!r}: the limit must be a whole number >= 0{words}", param_hint=option)
    return limits


def quota_table(quota: dict) -> Table:
    """resource, limit, used, reserved, available: one row per resource, in the API's order."""
    table = Table("resource", "limit", "used", "reserved", "available", title=f"quota of {escape(quota['tenant'])}")
    for name, usage in quota["resources"].items():
        limit, available = usage["limit"], usage["available"]
        table.add_row(name, "no limit" if limit is None else str(limit), str(usage["used"]),
                      str(usage["reserved"]), "-" if available is None else str(available))
    return table


def register(app: typer.Typer, *, client: Callable[[], VmflowClient], api: Callable, console: Console) -> None:
    """Add the commands; ``client`` and ``api`` are the CLI's own helpers."""
    app.add_typer(tenant_app, name="tenant")
    tenant_app.add_typer(user_app, name="user")

    def show_quota(quota: dict) -> None:
        console.print(quota_table(quota))
        for warning in quota.get("warnings") or []:
            console.print(f"[yellow]warning[/]: {escape(warning)}")

    @tenant_app.command("create")
    def tenant_create(name: str, description: str = typer.Option("", help="what the tenant is"),
                      quota: list[str] = typer.Option([], metavar="RESOURCE=N",
                                                      help="a limit, e.g. vms=10 (repeat; none given: no limit)")
                      ) -> None:
        """Make a tenant (admins)."""
        body = {"name": name, "description": description, "quota": parse_limits(quota, allow_no_limit=False)}
        made = api(lambda: client().call("POST", "/v1/tenants", json=body))
        console.print(f"tenant {escape(made['id'])} made")
        if quota:
            show_quota(api(lambda: client().call("GET", f"/v1/tenants/{made['id']}/quota")))

    @tenant_app.command("list")
    def tenant_list() -> None:
        """Every tenant (an admin), else your own."""
        table = Table("tenant", "description", "created")
        for t in api(lambda: client().call("GET", "/v1/tenants")):
            table.add_row(escape(t["id"]), escape(t["description"]), when(t["created_at"]))
        console.print(table)

    @tenant_app.command("show")
    def tenant_show(name: str) -> None:
        """A tenant, its quota and its users."""
        c = client()
        t = api(lambda: c.call("GET", f"/v1/tenants/{name}"))
        console.print(f"tenant {escape(t['id'])}: {escape(t['description']) or '(no description)'}, "
                      f"made {when(t['created_at'])}")
        show_quota(api(lambda: c.call("GET", f"/v1/tenants/{name}/quota")))
        users = api(lambda: c.call("GET", f"/v1/tenants/{name}/users"))
        console.print(f"users: {escape(', '.join(u['name'] for u in users)) or 'none'}")

    @tenant_app.command("delete")
    def tenant_delete(name: str) -> None:
        """Delete a tenant with its users and tokens (admins). Refused while it holds anything."""
        api(lambda: client().call("DELETE", f"/v1/tenants/{name}"))
        console.print(f"tenant {escape(name)} deleted")

    @tenant_app.command("quota")
    def tenant_quota(name: str,
                     set_: list[str] = typer.Option([], "--set", metavar="RESOURCE=N",
                                                    help="change a limit, e.g. vms=10 or vms=none (repeat; admins)")
                     ) -> None:
        """A tenant's quota: each resource's limit, what is used, reserved (being made) and
        still available; with --set, change limits first (the others stay)."""
        c = client()
        if set_:
            limits = parse_limits(set_, allow_no_limit=True, option="--set")
            quota = api(lambda: c.call("PUT", f"/v1/tenants/{name}/quota", json=limits))
        else:
            quota = api(lambda: c.call("GET", f"/v1/tenants/{name}/quota"))
        show_quota(quota)

    @user_app.command("add")
    def user_add(tenant: str, name: str) -> None:
        """Add a user to a tenant (admins); `vmflow token create --tenant T --user U` gives it a token."""
        user = api(lambda: client().call("POST", f"/v1/tenants/{tenant}/users", json={"name": name}))
        console.print(f"user {escape(user['name'])} added to tenant {escape(user['tenant'])}")

    @user_app.command("list")
    def user_list(tenant: str) -> None:
        table = Table("user", "id", "created")
        for u in api(lambda: client().call("GET", f"/v1/tenants/{tenant}/users")):
            table.add_row(escape(u["name"]), u["id"], when(u["created_at"]))
        console.print(table)

    @user_app.command("remove")
    def user_remove(tenant: str, name: str) -> None:
        """Remove a user from a tenant (admins), with every token it had."""
        api(lambda: client().call("DELETE", f"/v1/tenants/{tenant}/users/{name}"))
        console.print(f"user {escape(name)} removed from tenant {escape(tenant)}, with its tokens")

    @app.command("audit")
    def audit(limit: int = typer.Option(50, min=1, max=1000, help="how many records"),
              offset: int = typer.Option(0, min=0, help="skip this many of the newest first")) -> None:
        """The audit trail, newest first: every change and every refusal, who made it and how it
        ended. An admin sees every tenant's; anyone else its own tenant's."""
        response = api(lambda: client().request("GET", "/v1/audit", params={"offset": offset, "limit": limit}))
        table = Table("at", "user", "tenant", "role", "action", "status", "outcome", "detail")
        records = response.json()
        for r in records:
            table.add_row(when(r["at"]), escape(r["user"] or "-"), escape(r["tenant"] or "-"),
                          r["role"] or "-", escape(r["action"] or r["path"]), str(r["status"]), r["outcome"],
                          escape(r["code"] or r["operation_id"] or ""))
        console.print(table)
        total = response.headers.get("X-Total-Count", "?")
        console.print(f"records {offset + 1 if records else offset}-{offset + len(records)} of {total}")
