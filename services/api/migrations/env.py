"""Alembic environment: migrations run on the connection the API hands over (see db.py)."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import services.api.audit  # noqa: F401  (each registers its tables on SQLModel.metadata)
import services.api.models  # noqa: F401
import services.api.network_models  # noqa: F401
import services.api.tenancy_models  # noqa: F401

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying
)
with context.begin_transaction():
    context.run_migrations()
