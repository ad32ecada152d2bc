"""Fixtures the unit tests share.

The inventory's tests run on both engines it supports: SQLite, and PostgreSQL when a server can
run here (deploy/postgres.py: its binaries, its user, psycopg). One PostgreSQL serves the whole
session; each test gets a database of its own, dropped afterwards. Set VMFLOW_TEST_POSTGRES=0 to
skip the PostgreSQL half.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from deploy import postgres
from deploy.processes import free_port
from services.api.db import make_engine, migrate

ENGINES = ("sqlite", "postgresql")
_MIGRATED_TEMPLATE = "vmflow_migrated"  # migrated once; a test's database is a copy of it
# A test server needs no durability. Its zone is far from UTC on purpose: a timestamp written or
# read in the server's zone instead of UTC shows as a wrong time.
_TEST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
                  "timezone": "Pacific/Chatham", "max_connections": 200, "deadlock_timeout": "200ms"}


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL for the session, with a migrated template database; None when no server
    can run here (its tests are then skipped, saying why)."""
    if os.environ.get("VMFLOW_TEST_POSTGRES", "1") == "0" or not postgres.available():
        yield None
        return
    run_dir = Path(tempfile.mkdtemp(prefix="vmflow-unit-pg-"))
    server = postgres.Server(run_dir, free_port())
    try:
        postgres.start(server, _TEST_SETTINGS)
        postgres.ensure_role(server, create_db=True)
        postgres.create_database(server, _MIGRATED_TEMPLATE)
        engine = make_engine(server.url(_MIGRATED_TEMPLATE))
        migrate(engine)
        engine.dispose()  # a template may have no sessions when it is copied
        yield server
    finally:
        postgres.stop(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)


def _fresh_url(kind: str, request, tmp_path: Path, template: str | None):
    """(a URL of a new database of ``kind``, what drops it afterwards). The session's PostgreSQL
    starts with the first test that needs it."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'inventory.db'}", lambda: None
    server = request.getfixturevalue("postgres_server")
    if server is None:
        pytest.skip("no PostgreSQL here: its binaries, its system user or psycopg are missing "
                    "(deploy/install.sh installs them), or VMFLOW_TEST_POSTGRES=0")
    name = f"t_{uuid.uuid4().hex[:16]}"
    postgres.create_database(server, name, template=template)
    return server.url(name), lambda: postgres.drop_database(server, name)


@pytest.fixture(params=ENGINES)
def empty_database_url(request, tmp_path):
    """A URL of a new, empty database (no schema), on each engine."""
    url, drop = _fresh_url(request.param, request, tmp_path, template="template0")
    yield url
    drop()


@pytest.fixture
def postgres_url(request, tmp_path):
    """A URL of a new, empty PostgreSQL database, for what only PostgreSQL does."""
    url, drop = _fresh_url("postgresql", request, tmp_path, template="template0")
    yield url
    drop()


@pytest.fixture(params=ENGINES)
def engine(request, tmp_path):
    """A real inventory on each engine, migrated to the newest schema (it has the tenant
    'default'), in a database of its own."""
    url, drop = _fresh_url(request.param, request, tmp_path, template=_MIGRATED_TEMPLATE)
    engine = make_engine(url)
    if request.param == "sqlite":
        migrate(engine)
    yield engine
    engine.dispose()
    drop()
