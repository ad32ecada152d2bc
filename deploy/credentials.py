"""Where the CLI gets its API URL and token, as ``openstack`` does with clouds.yaml and OS_*.

Each value is taken from the first place that has it:

1. the command line: ``--api-url``, ``--token``;
2. the environment: ``VMFLOW_API_URL``, ``VMFLOW_TOKEN``;
3. a profile of the config file: ``--profile``, else ``VMFLOW_PROFILE``, else ``default``;
4. the local stack (the checkout's run dir): its API URL, and (the token only) its admin token
   file when this user may read it.

A token stays with the server it belongs to: a profile's token is used only when the URL in use
is the profile's own (or the profile names none), the local admin token only for the local
stack's URL. So ``VMFLOW_API_URL=https://elsewhere`` never sends them to ``elsewhere``.

The config file is ``$VMFLOW_CONFIG``, else ``$XDG_CONFIG_HOME/vmflow/config.toml``, else
``~/.config/vmflow/config.toml``; it holds ``[profiles.<name>]`` tables with ``api_url`` and
``token``, and is written readable by its owner only (mode 0600).
"""

from __future__ import annotations

import os
import re
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_API_URL = "VMFLOW_API_URL"
ENV_TOKEN = "VMFLOW_TOKEN"
ENV_PROFILE = "VMFLOW_PROFILE"
ENV_CONFIG = "VMFLOW_CONFIG"
DEFAULT_PROFILE = "default"
DEFAULT_API_URL = "http://127.0.0.1:8000"
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class CredentialsError(RuntimeError):
    """The config file cannot be read, or a profile that was asked for is not in it."""


@dataclass(frozen=True)
class Profile:
    api_url: str | None = None
    token: str | None = None


@dataclass(frozen=True)
class CredentialOptions:
    """What the command line said; None where it said nothing."""

    api_url: str | None = None
    token: str | None = None
    profile: str | None = None


@dataclass(frozen=True)
class LocalStack:
    """The stack this checkout runs: its API URL and its admin token (None when the file is
    missing or this user may not read it)."""

    api_url: str
    admin_token: str | None
    admin_token_file: Path


@dataclass(frozen=True)
class Credentials:
    api_url: str
    token: str | None
    profile: str  # the profile that was consulted (whether or not it gave anything)
    api_url_source: str  # where each value came from, for messages: "--api-url", "VMFLOW_TOKEN", ...
    token_source: str | None  # None: no token anywhere


# --- where the config file lives, and what it says -------------------------------------------


def config_path(env: Mapping[str, str], home: Path) -> Path:
    """``$VMFLOW_CONFIG``, else ``$XDG_CONFIG_HOME/vmflow/config.toml`` (an absolute
    XDG_CONFIG_HOME only, as the XDG spec says), else ``<home>/.config/vmflow/config.toml``."""
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG]).expanduser()
    xdg = env.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".config"
    return base / "vmflow" / "config.toml"


def parse_profiles(text: str, origin: str = "the config file") -> dict[str, Profile]:
    """The profiles a config file's text holds. Keys other than ``api_url`` and ``token`` are
    ignored. Raises CredentialsError for text that is not TOML or not of that shape."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CredentialsError(f"{origin} is not valid TOML: {exc}") from None
    tables = data.get("profiles", {})
    if not isinstance(tables, dict):
        raise CredentialsError(f"{origin}: 'profiles' must be a table of [profiles.<name>] tables")
    profiles = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise CredentialsError(f"{origin}: profiles.{name} must be a table")
        values = {key: table.get(key) for key in ("api_url", "token")}
        for key, value in values.items():
            if value is not None and not isinstance(value, str):
                raise CredentialsError(f"{origin}: profiles.{name}.{key} must be a string")
        profiles[name] = Profile(**values)
    return profiles


def load_profiles(path: Path) -> dict[str, Profile]:
    """The profiles in ``path``; none when it does not exist. Raises CredentialsError when it
    cannot be read or parsed."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror}") from None
    return parse_profiles(text, str(path))


def _toml_key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else _toml_string(name)


def _toml_string(value: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    named = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    out = []
    for char in value:
        if char in named:
            out.append(named[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def dump_profiles(profiles: Mapping[str, Profile]) -> str:
    """The config file's text for ``profiles``; ``parse_profiles`` reads back the same."""
    lines = ["# vmflow CLI profiles, written by `vmflow login`: keep this file private (mode 0600).", ""]
    for name in sorted(profiles):
        profile = profiles[name]
        lines.append(f"[profiles.{_toml_key(name)}]")
        for key in ("api_url", "token"):
            value = getattr(profile, key)
            if value is not None:
                lines.append(f"{key} = {_toml_string(value)}")
        lines.append("")
    return "\n".join(lines)


def write_profiles(path: Path, profiles: Mapping[str, Profile]) -> None:
    """Replace ``path`` with ``profiles``, atomically, readable and writable by its owner only
    (mode 0600; a new folder 0700). A reader sees the old file or the new one, never half."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp: a fresh name, created 0600 and never through a link someone planted there.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(dump_profiles(profiles))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_profile(path: Path, name: str, profile: Profile) -> None:
    """Add or replace one profile, keeping the others. Raises CredentialsError when the file
    exists but cannot be read."""
    write_profiles(path, {**load_profiles(path), name: profile})


def remove_profile(path: Path, name: str) -> bool:
    """Drop one profile, keeping the others; False when it was not there."""
    profiles = load_profiles(path)
    if name not in profiles:
        return False
    del profiles[name]
    write_profiles(path, profiles)
    return True


def read_token_file(path: Path) -> str | None:
    """The token a file holds (a token and a newline); None when the file is missing, empty or
    this user may not read it."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None


# --- the resolution: pure ----------------------------------------------------------------------


def _same_api(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def resolve(options: CredentialOptions, env: Mapping[str, str], profiles: Mapping[str, Profile],
            local: LocalStack | None, config_file: Path | None = None) -> Credentials:
    """The API URL and token to use, each from the first place that has it, a token only for
    its own server (see the module's docstring). A profile named on the command line or by
    VMFLOW_PROFILE must exist; the implicit ``default`` may be absent. Raises CredentialsError
    otherwise."""
    named = options.profile or env.get(ENV_PROFILE) or None
    profile_name = named or DEFAULT_PROFILE
    if named and named not in profiles:
        where = f" in {config_file}" if config_file else ""
        raise CredentialsError(f"no profile '{named}'{where}; `vmflow login --profile {named}` makes it")
    profile = profiles.get(profile_name, Profile())
    from_profile = f"profile '{profile_name}'" + (f" of {config_file}" if config_file else "")

    api_url, api_url_source = next(
        (value, source) for value, source in (
            (options.api_url, "--api-url"),
            (env.get(ENV_API_URL), ENV_API_URL),
            (profile.api_url, from_profile),
            (local.api_url if local else None, "the local stack"),
            (DEFAULT_API_URL, "the default"),
        ) if value)
    profile_token = profile.token if profile.api_url is None or _same_api(profile.api_url, api_url) else None
    local_token = local.admin_token if local and _same_api(local.api_url, api_url) else None
    token, token_source = next(
        ((value, source) for value, source in (
            (options.token, "--token"),
            (env.get(ENV_TOKEN), ENV_TOKEN),
            (profile_token, from_profile),
            (local_token, f"the local stack's admin token ({local.admin_token_file})" if local else ""),
        ) if value),
        (None, None))
    return Credentials(api_url, token, profile_name, api_url_source, token_source)


def login_target(options: CredentialOptions, env: Mapping[str, str], profiles: Mapping[str, Profile],
                 local: LocalStack | None) -> tuple[str, str]:
    """(profile name, API URL) that ``vmflow login`` verifies a token against and saves it
    under: the URL as ``resolve`` finds it, except that the profile need not exist yet."""
    name = options.profile or env.get(ENV_PROFILE) or DEFAULT_PROFILE
    found = resolve(CredentialOptions(api_url=options.api_url, profile=name), env,
                    {**profiles, name: profiles.get(name, Profile())}, local)
    return name, found.api_url


def login_hint(creds: Credentials, local: LocalStack | None = None) -> str:
    """What to do after a 401, given where the refused token (or none) came from."""
    login = "vmflow login" + (f" --profile {creds.profile}" if creds.profile != DEFAULT_PROFILE else "")
    if creds.token is None:
        hint = f"no API token for {creds.api_url}: log in with `{login}`, or set {ENV_TOKEN}"
        if local is not None and _same_api(local.api_url, creds.api_url):
            hint += (f"; the stack keeps an admin token in {local.admin_token_file}, readable by its owner "
                     "only (run as that user, or `vmflow login` with that token)")
        return hint
    return (f"the token from {creds.token_source} was refused: log in again with `{login}`, "
            f"or give another one (--token, {ENV_TOKEN})")


def load_credentials(options: CredentialOptions, local: LocalStack | None,
                     env: Mapping[str, str] | None = None, home: Path | None = None) -> Credentials:
    """``resolve`` over this process's environment and config file. Raises CredentialsError."""
    env = os.environ if env is None else env
    path = config_path(env, Path.home() if home is None else home)
    return resolve(options, env, load_profiles(path), local, path)
