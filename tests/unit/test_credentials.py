"""Where the CLI finds its API URL and token: the resolution order on plain values, and the
config file written and read back (under tmp_path, never the real home)."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest

from deploy.credentials import (
    DEFAULT_API_URL,
    CredentialOptions,
    CredentialsError,
    LocalStack,
    Profile,
    config_path,
    dump_profiles,
    load_credentials,
    load_profiles,
    login_hint,
    login_target,
    parse_profiles,
    read_token_file,
    remove_profile,
    resolve,
    save_profile,
)

LOCAL_URL = "http://127.0.0.1:8000"
LOCAL = LocalStack(LOCAL_URL, "vmf_local-admin", Path("/srv/vmflow/run/admin-token"))
PROFILES = {
    "default": Profile(api_url=LOCAL_URL, token="vmf_default"),
    "prod": Profile(api_url="https://prod.example:8443", token="vmf_prod"),
    "no-url": Profile(token="vmf_no_url"),
}


def test_the_command_line_comes_first():
    env = {"VMFLOW_TOKEN": "vmf_env", "VMFLOW_API_URL": "http://env:1", "VMFLOW_PROFILE": "prod"}
    creds = resolve(CredentialOptions(api_url="http://cli:2", token="vmf_cli", profile="prod"), env, PROFILES, LOCAL)
    assert (creds.api_url, creds.token) == ("http://cli:2", "vmf_cli")
    assert (creds.api_url_source, creds.token_source) == ("--api-url", "--token")


def test_the_environment_comes_before_the_profile():
    env = {"VMFLOW_TOKEN": "vmf_env", "VMFLOW_API_URL": "http://env:1"}
    creds = resolve(CredentialOptions(), env, PROFILES, LOCAL)
    assert (creds.api_url, creds.token) == ("http://env:1", "vmf_env")
    assert (creds.api_url_source, creds.token_source) == ("VMFLOW_API_URL", "VMFLOW_TOKEN")


def test_the_profile_is_the_option_else_the_environment_else_default():
    by_option = resolve(CredentialOptions(profile="prod"), {"VMFLOW_PROFILE": "no-url"}, PROFILES, LOCAL)
    assert (by_option.profile, by_option.api_url, by_option.token) == ("prod", "https://prod.example:8443", "vmf_prod")
    by_env = resolve(CredentialOptions(), {"VMFLOW_PROFILE": "prod"}, PROFILES, LOCAL)
    assert (by_env.profile, by_env.token) == ("prod", "vmf_prod")
    by_default = resolve(CredentialOptions(), {}, PROFILES, LOCAL)
    assert (by_default.profile, by_default.token) == ("default", "vmf_default")
    assert by_default.token_source == "profile 'default'"


def test_the_local_admin_token_is_the_last_resort_and_only_for_the_local_stack():
    creds = resolve(CredentialOptions(), {}, {}, LOCAL)
    assert (creds.api_url, creds.token) == (LOCAL_URL, "vmf_local-admin")
    assert creds.api_url_source == "the local stack" and "admin-token" in creds.token_source
    elsewhere = resolve(CredentialOptions(api_url="https://prod.example:8443"), {}, {}, LOCAL)
    assert elsewhere.token is None and elsewhere.token_source is None
    # The same stack written with a trailing slash is the same stack.
    assert resolve(CredentialOptions(api_url=LOCAL_URL + "/"), {}, {}, LOCAL).token == "vmf_local-admin"


def test_an_unreadable_admin_token_leaves_no_token():
    unreadable = LocalStack(LOCAL_URL, None, LOCAL.admin_token_file)
    creds = resolve(CredentialOptions(), {}, {}, unreadable)
    assert creds.token is None
    assert "vmflow login" in login_hint(creds, unreadable) and str(LOCAL.admin_token_file) in login_hint(creds, unreadable)


def test_without_a_local_stack_the_url_is_the_default():
    creds = resolve(CredentialOptions(), {}, {}, None)
    assert (creds.api_url, creds.token, creds.api_url_source) == (DEFAULT_API_URL, None, "the default")


def test_a_profiles_token_never_goes_to_another_server():
    creds = resolve(CredentialOptions(profile="prod"), {"VMFLOW_API_URL": "http://other:9"}, PROFILES, LOCAL)
    assert (creds.api_url, creds.token) == ("http://other:9", None)
    # A profile that names no URL lends its token to whatever URL is in use.
    loose = resolve(CredentialOptions(profile="no-url"), {"VMFLOW_API_URL": "http://other:9"}, PROFILES, LOCAL)
    assert loose.token == "vmf_no_url"


def test_a_named_profile_must_exist_the_implicit_default_need_not():
    with pytest.raises(CredentialsError, match="vmflow login --profile staging"):
        resolve(CredentialOptions(profile="staging"), {}, PROFILES, LOCAL)
    with pytest.raises(CredentialsError, match="no profile 'staging'"):
        resolve(CredentialOptions(), {"VMFLOW_PROFILE": "staging"}, PROFILES, LOCAL)
    assert resolve(CredentialOptions(), {}, {}, LOCAL).profile == "default"


def test_login_targets_a_new_profile_at_the_url_resolution_finds():
    assert login_target(CredentialOptions(profile="lab"), {}, PROFILES, LOCAL) == ("lab", LOCAL_URL)
    assert login_target(CredentialOptions(), {"VMFLOW_PROFILE": "prod"}, PROFILES, LOCAL) == (
        "prod", "https://prod.example:8443")
    assert login_target(CredentialOptions(api_url="http://new:1"), {}, PROFILES, None) == ("default", "http://new:1")


def test_config_path_follows_vmflow_config_then_xdg_then_home(tmp_path):
    home = tmp_path / "home"
    assert config_path({"VMFLOW_CONFIG": str(tmp_path / "c.toml")}, home) == tmp_path / "c.toml"
    assert config_path({"XDG_CONFIG_HOME": str(tmp_path / "xdg")}, home) == tmp_path / "xdg" / "vmflow" / "config.toml"
    assert config_path({"XDG_CONFIG_HOME": "relative/dir"}, home) == home / ".config" / "vmflow" / "config.toml"
    assert config_path({}, home) == home / ".config" / "vmflow" / "config.toml"


def test_the_written_file_reads_back_whatever_the_strings_hold():
    awkward = {
        "default": Profile(api_url="http://127.0.0.1:8000", token="vmf_0123456789abcdef_" + "x" * 43),
        "odd name.with dots": Profile(api_url='http://h/"quoted"\\path', token="tab\there\nnewline\x01ctl\x7fdel"),
        "only-url": Profile(api_url="https://u"),
    }
    text = dump_profiles(awkward)
    assert parse_profiles(text) == awkward
    assert tomllib.loads(text)["profiles"]["odd name.with dots"]["token"] == "tab\there\nnewline\x01ctl\x7fdel"


def test_save_keeps_other_profiles_writes_mode_0600_and_remove_drops_one(tmp_path):
    path = tmp_path / "cfg" / "vmflow" / "config.toml"
    save_profile(path, "default", Profile(LOCAL_URL, "vmf_a"))
    save_profile(path, "prod", Profile("https://prod", "vmf_b"))
    save_profile(path, "default", Profile(LOCAL_URL, "vmf_c"))
    assert load_profiles(path) == {"default": Profile(LOCAL_URL, "vmf_c"), "prod": Profile("https://prod", "vmf_b")}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"]  # no temporary file left
    assert remove_profile(path, "prod") is True
    assert remove_profile(path, "prod") is False
    assert set(load_profiles(path)) == {"default"}


def test_a_file_that_is_not_toml_or_not_profiles_is_refused_with_its_path(tmp_path):
    path = tmp_path / "config.toml"
    assert load_profiles(path) == {}  # no file: no profiles
    path.write_text("[profiles.default\n")
    with pytest.raises(CredentialsError, match="config.toml is not valid TOML"):
        load_profiles(path)
    path.write_text("[profiles.default]\ntoken = 5\n")
    with pytest.raises(CredentialsError, match="profiles.default.token must be a string"):
        load_profiles(path)


def test_load_credentials_reads_the_file_the_environment_names(tmp_path):
    path = tmp_path / "config.toml"
    save_profile(path, "lab", Profile("http://lab:8000", "vmf_lab"))
    env = {"VMFLOW_CONFIG": str(path), "VMFLOW_PROFILE": "lab"}
    creds = load_credentials(CredentialOptions(), None, env=env, home=tmp_path / "nohome")
    assert (creds.api_url, creds.token) == ("http://lab:8000", "vmf_lab")
    assert str(path) in creds.token_source


def test_a_token_file_gives_its_token_without_the_newline(tmp_path):
    path = tmp_path / "admin-token"
    assert read_token_file(path) is None
    path.write_text("vmf_abc\n")
    assert read_token_file(path) == "vmf_abc"
    path.write_text("\n")
    assert read_token_file(path) is None
