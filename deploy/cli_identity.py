"""``vmflow login``, ``logout``, ``whoami`` and ``vmflow token ...``: who the CLI acts as, and
the API tokens of a user. Where the CLI finds its URL and token: deploy/credentials.py."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deploy import credentials
from deploy.client import ApiError, VmflowClient
from deploy.credentials import CredentialOptions, LocalStack, Profile

token_app = typer.Typer(no_args_is_help=True, help="API tokens: make, list and revoke them.")

ROLES = ("reader", "member", "admin")


def when(value: str | None) -> str:
    """An API timestamp, to the second; '-' for none."""
    return value[:19].replace("T", " ") if value else "-"


def register(app: typer.Typer, *, client: Callable[[], VmflowClient], api: Callable, console: Console,
             options: Callable[[], CredentialOptions], local_stack: Callable[[], LocalStack]) -> None:
    """Add the commands; ``client`` and ``api`` are the CLI's own helpers, ``options`` what the
    global --profile/--token/--api-url said, ``local_stack`` the checkout's stack."""
    app.add_typer(token_app, name="token")

    def config_file() -> Path:
        return credentials.config_path(os.environ, Path.home())

    @app.command("login")
    def login(profile: str = typer.Option(None, "--profile", metavar="NAME", help="save as this profile"),
              api_url: str = typer.Option(None, "--api-url", metavar="URL", help="the API to log in to"),
              token: str = typer.Option(None, "--token", metavar="TOKEN",
                                        help="the token (default: asked for, not echoed)")) -> None:
        """Check a token with the API (GET /v1/whoami) and save it with the API's URL as a
        profile of the config file (mode 0600). Nothing is saved when the API refuses it."""
        given = options()
        path = config_file()
        profiles = api(lambda: credentials.load_profiles(path))
        name, url = credentials.login_target(
            CredentialOptions(api_url=api_url or given.api_url, profile=profile or given.profile),
            os.environ, profiles, local_stack())
        secret = (token or given.token or typer.prompt(f"API token for {url}", hide_input=True)).strip()
        try:
            with VmflowClient(url, secret) as checker:
                me = checker.call("GET", "/v1/whoami")
        except ApiError as exc:
            console.print(f"[red]{exc.status} {exc.code}[/]: {escape(exc.message)}; nothing saved")
            raise typer.Exit(2) from None
        except httpx.TransportError as exc:
            console.print(f"[red]cannot reach the API[/] at {escape(url)}: {escape(str(exc))}; nothing saved")
            raise typer.Exit(2) from None
        api(lambda: credentials.save_profile(path, name, Profile(api_url=url, token=secret)))
        console.print(f"logged in to {escape(url)} as [bold]{escape(me['user'])}[/] of tenant "
                      f"[bold]{escape(me['tenant'])}[/] ({me['role']}, token {me['token_id']}); "
                      f"saved as profile '{escape(name)}' in {escape(str(path))}")

    @app.command("logout")
    def logout(profile: str = typer.Option(None, "--profile", metavar="NAME",
                                           help="default: $VMFLOW_PROFILE, else 'default'")) -> None:
        """Forget a profile (its URL and token) from the config file. The token itself still
        works until revoked: `vmflow token revoke ID`."""
        name = profile or options().profile or os.environ.get(credentials.ENV_PROFILE) or credentials.DEFAULT_PROFILE
        path = config_file()
        if api(lambda: credentials.remove_profile(path, name)):
            console.print(f"profile '{escape(name)}' removed from {escape(str(path))}")
        else:
            console.print(f"no profile '{escape(name)}' in {escape(str(path))}: nothing to do")

    @app.command("whoami")
    def whoami() -> None:
        """Who the CLI acts as: the token's user, tenant and role, and where the URL and token
        came from."""
        creds = api(lambda: credentials.load_credentials(options(), local_stack()))
        with VmflowClient(creds.api_url, creds.token) as c:
            me = api(lambda: c.call("GET", "/v1/whoami"))
        table = Table(show_header=False, box=None)
        for key, value in (("user", me["user"]), ("tenant", me["tenant"]), ("role", me["role"]),
                           ("token", me["token_id"]), ("api", f"{creds.api_url}  (from {creds.api_url_source})"),
                           ("token from", creds.token_source or "-")):
            table.add_row(key, escape(value))
        console.print(table)

    @token_app.command("create")
    def token_create(role: str = typer.Option(..., "--role", help="reader, member or admin (no more than yours)"),
                     tenant: str = typer.Option(None, help="admins: another tenant's (default: yours)"),
                     user: str = typer.Option(None, help="admins: another user's (made if new; default: you)"),
                     expires_in: int = typer.Option(None, "--expires-in", min=1, metavar="SECONDS",
                                                    help="its lifetime (default: no expiry)"),
                     description: str = typer.Option("", help="what it is for")) -> None:
        """Make a token. Its secret is shown this once and never again."""
        if role not in ROLES:
            raise typer.BadParameter(f"one of {', '.join(ROLES)}", param_hint="--role")
        body = {"role": role, "description": description,
                **({"tenant": tenant} if tenant else {}), **({"user": user} if user else {}),
                **({"expires_in_s": expires_in} if expires_in else {})}
        issued = api(lambda: client().call("POST", "/v1/tokens", json=body))
        console.print(f"token {issued['id']} for {escape(issued['user'])}, {issued['role']} of tenant "
                      f"{escape(issued['tenant'])}, expires {when(issued['expires_at'])}")
        console.print(issued["token"], markup=False, highlight=False, soft_wrap=True)
        console.print("[yellow]This is the only time the token is shown: store it now[/] "
                      "(`vmflow login --profile NAME` saves it).")

    @token_app.command("list")
    def token_list() -> None:
        """Your own tokens; an admin sees every token."""
        table = Table("id", "tenant", "user", "role", "created", "expires", "revoked", "description")
        for t in api(lambda: client().call("GET", "/v1/tokens")):
            table.add_row(t["id"], escape(t["tenant"]), escape(t["user"]), t["role"], when(t["created_at"]),
                          when(t["expires_at"]), when(t["revoked_at"]), escape(t["description"]))
        console.print(table)

    @token_app.command("revoke")
    def token_revoke(token_id: str) -> None:
        """Revoke a token: refused from its next request on. Revoking twice is harmless."""
        t = api(lambda: client().call("DELETE", f"/v1/tokens/{token_id}"))
        console.print(f"token {t['id']} of {escape(t['user'])} in tenant {escape(t['tenant'])} "
                      f"revoked at {when(t['revoked_at'])}")

