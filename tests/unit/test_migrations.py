"""The Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from services.api.db import MIGRATIONS_DIR, Inventory, make_engine, migrate
from services.api.models import Vm
from services.api.quota_store import QuotaLedger
from shared.models import VmState


def test_migrations_match_the_models_and_rerun_harmlessly(empty_database_url):
    engine = make_engine(empty_database_url)
    migrate(engine)
    migrate(engine)  # idempotent
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []
    inventory = Inventory(engine)
    vm = inventory.add(Vm(name="a", vcpus=1, memory_mib=128, disk_gib=1, image="lab-guest", tenant="t"))
    assert inventory.get(vm.id).name == "a"


def test_an_inventory_from_before_tenants_gets_its_tenants_and_holds(empty_database_url):
    engine = make_engine(empty_database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0006")
    Inventory(engine).add(Vm(name="old", vcpus=2, memory_mib=512, disk_gib=3, image="lab-guest", tenant="blue",
                             state=VmState.RUNNING))
    migrate(engine)
    limits, used, reserved = QuotaLedger(engine).usage("blue")
    assert (used.vms, used.vcpus, used.memory_mib, used.disk_gib) == (1, 2, 512, 3)
    assert reserved.vms == 0 and limits.vms is None
