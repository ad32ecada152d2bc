"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from services.api.db import Inventory, make_engine, migrate
from services.api.models import Vm


def test_migrations_match_the_models_and_rerun_harmlessly(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'inventory.db'}")
    migrate(engine)
    migrate(engine)  # idempotent
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []
    inventory = Inventory(engine)
    vm = inventory.add(Vm(name="a", vcpus=1, memory_mib=128, disk_gib=1, image="lab-guest", tenant="t"))
    assert inventory.get(vm.id).name == "a"
