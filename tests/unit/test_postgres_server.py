"""The PostgreSQL a run folder gets (deploy/postgres.py) and how a stack uses it: who may
connect and how, where its files are, made once and kept across restarts."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import tempfile
from dataclasses import asdict
from pathlib import Path

import pytest
from sqlalchemy import text

from deploy import postgres, stack
from deploy.processes import free_port, is_alive, read_pid
from services.api.db import make_engine


@pytest.fixture
def server(postgres_server) -> postgres.Server:
    if postgres_server is None:
        pytest.skip("no PostgreSQL here (deploy/install.sh installs it)")
    return postgres_server


def _refusal(**conninfo) -> str:
    import psycopg

    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(connect_timeout=5, **conninfo).close()
    return str(refused.value)


def test_the_vmflow_role_gets_in_over_127_0_0_1_with_the_pgpass_password_only(server):
    engine = make_engine(server.url())
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_user, current_setting('listen_addresses')")).one() == (
                "vmflow", "127.0.0.1")
    finally:
        engine.dispose()
    assert ":" not in server.url().split("//", 1)[1].split("@", 1)[0]  # a user, no password
    tcp = {"host": "127.0.0.1", "port": server.port, "dbname": "vmflow"}
    assert "password authentication failed" in _refusal(user="vmflow", password="guess", **tcp)
    assert "no pg_hba.conf entry" in _refusal(user="postgres", password="guess", **tcp)  # superuser: socket only


def test_its_files_are_the_server_users_and_the_password_its_callers_only(server):
    uid = pwd.getpwnam(postgres.SERVER_USER).pw_uid if os.geteuid() == 0 else os.geteuid()
    for folder in (server.data_dir, server.socket_dir):
        st = folder.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (uid, 0o700), folder
    st = server.passfile.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o600)


def test_a_server_is_made_once_and_keeps_its_data_across_a_restart(postgres_server):
    if postgres_server is None:
        pytest.skip("no PostgreSQL here (deploy/install.sh installs it)")
    run_dir = Path(tempfile.mkdtemp(prefix="vmflow-unit-pg-restart-"))
    server = postgres.Server(run_dir, free_port())
    try:
        postgres.start(server)
        engine = make_engine(server.url())
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE kept (x int)"))
        engine.dispose()
        made_at = (server.data_dir / "PG_VERSION").stat().st_mtime_ns
        assert postgres.stop(run_dir) is True
        assert postgres.stop(run_dir) is False  # stopping again is harmless
        assert read_pid(run_dir, postgres.PROCESS) is None
        again = postgres.Server(run_dir, free_port())  # a new port, as a new `vmflow up` picks
        pid = postgres.start(again)
        assert is_alive(pid) and (again.data_dir / "PG_VERSION").stat().st_mtime_ns == made_at
        engine = make_engine(again.url())
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM kept")).scalar() == 0
        engine.dispose()
    finally:
        postgres.stop(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)


def test_a_stack_on_postgres_gets_a_port_and_gives_the_api_its_url(tmp_path):
    sqlite = stack.StackConfig(str(tmp_path)).with_postgres_port()
    assert sqlite.postgres_port == 0
    assert stack.api_env(sqlite, 8000)["VMFLOW_DATABASE_URL"] == f"sqlite:///{tmp_path / 'vmflow.db'}"
    cfg = stack.StackConfig(str(tmp_path), database="postgres").with_postgres_port()
    assert cfg.postgres_port > 0 and cfg.with_postgres_port() == cfg
    env = stack.api_env(cfg, 8123)
    assert env["VMFLOW_LISTEN_PORT"] == "8123"
    assert env["VMFLOW_DATABASE_URL"] == (f"postgresql+psycopg://vmflow@127.0.0.1:{cfg.postgres_port}/vmflow"
                                          f"?passfile={tmp_path / 'postgres' / 'pgpass'}")
    (tmp_path / stack.STACK_FILE).write_text(json.dumps(asdict(cfg)))
    assert stack.load_config(tmp_path) == cfg
