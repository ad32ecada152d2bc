"""What one ``vmflow`` invocation acts with: the global --profile/--token/--api-url, the local
stack of the checkout's run dir, the credentials resolved from them (deploy/credentials.py),
and a failed API call put in words, with what to do about it."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import httpx
from rich.markup import escape

from deploy import stack
from deploy.client import ApiError, VmflowClient
from deploy.credentials import (
    CredentialOptions,
    Credentials,
    CredentialsError,
    LocalStack,
    load_credentials,
    login_hint,
)

DEFAULT_RUN_DIR = Path(os.environ.get("VMFLOW_RUN_DIR", stack.REPO_DIR / "run"))
FAILURES = (ApiError, CredentialsError, httpx.TransportError)  # what ``explain`` puts in words

_given = CredentialOptions()


def set_options(options: CredentialOptions) -> None:
    """Record what the global options said; the app's callback calls it once per invocation."""
    global _given
    _given = options


def options() -> CredentialOptions:
    """What the global --profile, --token and --api-url said for this invocation."""
    return _given


def local_stack(run_dir: Path = DEFAULT_RUN_DIR) -> LocalStack:
    """The stack of ``run_dir`` (its recorded ports, else the defaults) and its admin token
    (None when this user may not read it)."""
    try:
        cfg = stack.load_config(run_dir.resolve())
    except (OSError, ValueError, TypeError):  # unreadable, or from another version: the defaults
        cfg = None
    cfg = cfg or stack.StackConfig(run_dir=str(run_dir.resolve()))
    return LocalStack(cfg.api_url, stack.admin_token(cfg), cfg.admin_token_file)


def credentials(run_dir: Path = DEFAULT_RUN_DIR, api_url: str | None = None) -> Credentials:
    """The API URL and token this invocation uses; ``api_url`` stands in for --api-url when
    that was not given. Raises CredentialsError."""
    given = options()
    if api_url and not given.api_url:
        given = replace(given, api_url=api_url)
    return load_credentials(given, local_stack(run_dir))


def client() -> VmflowClient:
    """A client with this invocation's credentials. Raises CredentialsError."""
    creds = credentials()
    return VmflowClient(creds.api_url, creds.token)


def explain(exc: Exception) -> str:
    """One of ``FAILURES`` in words, with what to do about it (rich markup)."""
    if isinstance(exc, CredentialsError):
        return f"[red]credentials[/]: {escape(str(exc))}"
    creds = credentials()
    if isinstance(exc, httpx.TransportError):
        return (f"[red]cannot reach the API[/] at {escape(creds.api_url)} (from {escape(creds.api_url_source)}): "
                f"{escape(str(exc) or type(exc).__name__)}; is the stack up (`vmflow status`)?")
    assert isinstance(exc, ApiError)
    text = f"[red]{exc.status} {exc.code}[/]: {escape(exc.message)}"
    if exc.status == 401:
        text += f"\n{escape(login_hint(creds, local_stack()))}"
    elif exc.status == 403:
        text += f"\n(the token from {escape(creds.token_source or '?')}; `vmflow whoami` shows its role)"
    return text
