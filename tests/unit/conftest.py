"""Fixtures the unit tests share."""

from __future__ import annotations

import pytest

from services.api.db import make_engine, migrate


@pytest.fixture
def engine(tmp_path):
    """A real SQLite inventory, migrated to the newest schema (it has the tenant 'default')."""
    engine = make_engine(f"sqlite:///{tmp_path / 'inv.db'}")
    migrate(engine)
    yield engine
    engine.dispose()
