"""docker-compose.yml stays honest: every service it names exists in the code, in the shape the
platform is meant to run (three scheduler replicas, the inventory on PostgreSQL, a three-node NATS
cluster with JetStream), and every image, command, variable, volume and dependency in it is one
the code and deploy/Dockerfile back. Where the compose tool is installed (deploy/install.sh
installs Debian's docker-compose), it validates the file too; it needs no Docker daemon for that."""

from __future__ import annotations

import ast
import asyncio
import importlib
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import nats.errors
import pytest
import yaml
from pydantic_settings import BaseSettings
from sqlalchemy.engine import make_url

from deploy.stack import SERVICES
from shared.messaging import connect
from shared.settings import CommonSettings
from tests.integration.nats_server import nats_server

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text())  # PyYAML resolves the `<<:` merge keys
SERVICES_IN_COMPOSE: dict[str, dict] = COMPOSE["services"]
VMFLOW = sorted(name for name, service in SERVICES_IN_COMPOSE.items() if "build" in service)  # our image
SCHEDULER_REPLICAS = 3  # as the tests' stacks run it (deploy/stack.py)
NATS_NODES = 3
JETSTREAM_COPIES_AT_MOST = 3  # as deploy/stack.py asks of a NATS cluster
NATS_CLIENT_PORT, NATS_CLUSTER_PORT = 4222, 6222
NATS_NAME_FLAGS = ("-n", "--name", "--server_name")
NATS_VALUE_FLAGS = {*NATS_NAME_FLAGS, "-sd", "--store_dir", "--cluster_name", "--cluster", "--routes",
                    "-a", "--addr", "-p", "--port", "-m", "--http_port"}

# The programs the services run, and the Debian package the image needs for each.
PROGRAM_PACKAGES = {"qemu-img": {"qemu-utils"}, "fence_ipmilan": {"fence-agents", "ipmitool"}}
PATH_SETTING_SUFFIXES = ("_dir", "_file", "_config")


# --- reading docker-compose.yml and the Dockerfile ---------------------------------------------

def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["NAME=value", ...]
        env = dict(item.split("=", 1) for item in env)
    return {name: str(value) for name, value in env.items()}


def depends_on(service: dict) -> set[str]:
    return set(service.get("depends_on") or ())  # a list, or a mapping of name -> condition


def volume_mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) per short-syntax volume."""
    mounts = []
    for entry in service.get("volumes") or ():
        source, target, *mode = entry.split(":")
        mounts.append((source, target, mode == ["ro"]))
    return mounts


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def command_module(name: str) -> str:
    command = SERVICES_IN_COMPOSE[name].get("command")
    assert isinstance(command, list) and command[:2] == ["python", "-m"] and len(command) == 3, (
        f"compose service {name}: command {command!r} should be ['python', '-m', <module>]")
    return command[2]


def module_dir(module: str) -> Path:
    return REPO.joinpath(*module.split("."))


def settings_class(name: str) -> type[BaseSettings]:
    """The settings class the service's ``__main__`` builds, found by reading that file."""
    main = module_dir(command_module(name)) / "__main__.py"
    tree = ast.parse(main.read_text())
    imported = {alias.asname or alias.name: node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) for alias in node.names}
    built = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Name) and node.func.id.endswith("Settings")}
    assert len(built) == 1, f"{main.relative_to(REPO)} should build one settings object, builds {sorted(built)}"
    class_name = built.pop()
    cls = getattr(importlib.import_module(imported[class_name]), class_name)
    assert issubclass(cls, BaseSettings), f"{class_name} in {main.relative_to(REPO)} is no pydantic settings class"
    return cls


def setting_field(cls: type[BaseSettings], variable: str) -> str | None:
    """The field ``variable`` sets (pydantic-settings: env_prefix + field name, any case), or None."""
    prefix = cls.model_config.get("env_prefix", "")
    if not variable.upper().startswith(prefix.upper()):
        return None
    field = variable[len(prefix):].lower()
    return field if field in cls.model_fields else None


def dockerfile_path() -> Path:
    builds = {(s["build"]["context"], s["build"]["dockerfile"]) for s in SERVICES_IN_COMPOSE.values() if "build" in s}
    assert len(builds) == 1, f"the vmflow services should share one image, compose builds {sorted(builds)}"
    context, dockerfile = builds.pop()
    return REPO / context / dockerfile


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, (INSTRUCTION, arguments), per stage; continuations joined."""
    text = dockerfile_path().read_text().replace("\\\n", " ")
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, args = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), " ".join(args.split())))
    return stages


def final_stage(instruction: str) -> list[str]:
    return [args for ins, args in dockerfile_stages()[-1] if ins == instruction]


def apt_packages() -> set[str]:
    """What the final stage's ``apt-get install`` commands install."""
    commands = [command for run in final_stage("RUN") for command in run.split("&&") if "apt-get install" in command]
    return {word for command in commands for word in command.partition(" install ")[2].split()
            if not word.startswith("-")}


def nats_flags(name: str) -> dict[str, str]:
    """A nats-server command line as flag -> value ('' for a switch such as -js)."""
    args, flags = list(SERVICES_IN_COMPOSE[name]["command"]), {}
    while args:
        flag = args.pop(0)
        flags[flag] = args.pop(0) if flag in NATS_VALUE_FLAGS else ""
    return flags


def nats_nodes() -> list[str]:
    return sorted(name for name, s in SERVICES_IN_COMPOSE.items() if str(s.get("image", "")).startswith("nats:"))


# --- the checks --------------------------------------------------------------------------------

def test_the_compose_tool_validates_the_file():
    if shutil.which("docker-compose"):
        tool = ["docker-compose"]
    elif shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                   capture_output=True).returncode == 0:
        tool = ["docker", "compose"]
    else:
        pytest.skip("no docker-compose here (deploy/install.sh installs Debian's)")
    result = subprocess.run([*tool, "-f", str(COMPOSE_FILE), "config", "-q"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(tool)} config rejects docker-compose.yml: {result.stderr.strip()}"


def test_every_service_the_code_runs_is_in_compose():
    missing = sorted(set(SERVICES) - set(VMFLOW))
    assert not missing, f"deploy/stack.py runs {missing}, docker-compose.yml has no such vmflow service"


@pytest.mark.parametrize("name", VMFLOW)
def test_each_command_runs_a_module_of_the_repo(name):
    module = command_module(name)
    main = module_dir(module) / "__main__.py"
    assert main.is_file(), f"compose service {name} runs `python -m {module}`, but there is no {main.relative_to(REPO)}"


@pytest.mark.parametrize("name", VMFLOW)
def test_every_variable_is_one_the_service_reads(name):
    cls, package = settings_class(name), module_dir(command_module(name))
    sources = [*package.rglob("*.py"), *(REPO / "shared").rglob("*.py")]
    unread = [variable for variable in environment(SERVICES_IN_COMPOSE[name])
              if variable.startswith("VMFLOW_") and setting_field(cls, variable) is None
              and not any(re.search(rf"\b{variable}\b", path.read_text()) for path in sources)]
    assert not unread, (f"compose sets {unread} on {name}, but {cls.__name__} has no such field "
                        f"and no code of {package.relative_to(REPO)} or shared/ reads it")


def settings_from_compose(name: str, monkeypatch: pytest.MonkeyPatch) -> BaseSettings:
    """The service's settings as its container would build them: from compose's environment alone."""
    for variable in [v for v in os.environ if v.startswith("VMFLOW_")]:
        monkeypatch.delenv(variable)
    for variable, value in environment(SERVICES_IN_COMPOSE[name]).items():
        monkeypatch.setenv(variable, value)
    return settings_class(name)()  # a ValidationError names the variable that does not parse


@pytest.mark.parametrize("name", VMFLOW)
def test_the_settings_accept_the_values_compose_gives(name, monkeypatch):
    settings_from_compose(name, monkeypatch)


def test_the_image_sets_only_variables_every_service_reads():
    variables = [args.replace("=", " ").split()[0] for args in final_stage("ENV")]
    unknown = [v for v in variables if v.startswith("VMFLOW_") and setting_field(CommonSettings, v) is None]
    assert not unknown, f"{dockerfile_path().relative_to(REPO)} sets {unknown}: no field of CommonSettings"


@pytest.mark.parametrize("name", VMFLOW)
def test_paths_given_to_a_service_are_on_its_volumes(name):
    service, cls = SERVICES_IN_COMPOSE[name], settings_class(name)
    targets = [Path(target) for _, target, _ in volume_mounts(service)]
    for variable, value in environment(service).items():
        field = setting_field(cls, variable)
        if field and field.endswith(PATH_SETTING_SUFFIXES):
            assert any(Path(value).is_relative_to(t) for t in targets), (
                f"compose gives {name} {variable}={value}, which is on none of its volumes {targets}")


def test_the_scheduler_runs_three_replicas():
    scheduler = SERVICES_IN_COMPOSE["scheduler"]
    replicas = (scheduler.get("deploy") or {}).get("replicas", scheduler.get("scale", 1))
    assert replicas == SCHEDULER_REPLICAS, (
        f"the scheduler runs {replicas} replica(s) in compose; it should run {SCHEDULER_REPLICAS} (deploy: replicas)")


@pytest.mark.parametrize("name", VMFLOW)
def test_the_inventory_is_on_the_compose_postgres(name):
    if "database_url" not in settings_class(name).model_fields:
        return
    value = environment(SERVICES_IN_COMPOSE[name]).get("VMFLOW_DATABASE_URL")
    assert value, f"{name} keeps an inventory, but compose sets no VMFLOW_DATABASE_URL (it would use SQLite)"
    url = make_url(value)
    assert url.drivername == "postgresql+psycopg", f"{name}'s inventory is {url.drivername}, not postgresql+psycopg"
    postgres = SERVICES_IN_COMPOSE.get(url.host or "")
    assert postgres and str(postgres.get("image")).startswith("postgres:"), (
        f"VMFLOW_DATABASE_URL of {name} points at {url.host}, which is no postgres service of compose")
    env = environment(postgres)
    assert (url.username, url.password, url.database, url.port or 5432) == (
        env.get("POSTGRES_USER"), env.get("POSTGRES_PASSWORD"), env.get("POSTGRES_DB"), 5432), (
        f"VMFLOW_DATABASE_URL of {name} does not match the user, password and database of {url.host}")


def test_the_image_has_the_postgres_driver():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("psycopg") for dep in extras.get("postgres", [])), "pyproject's postgres extra lacks psycopg"
    assert any("pip install" in run and "postgres]" in run for run in final_stage("RUN")), (
        f"{dockerfile_path().relative_to(REPO)} does not pip install the project with its postgres extra")


def test_nats_is_a_three_node_jetstream_cluster():
    nodes = nats_nodes()
    assert len(nodes) == NATS_NODES, f"compose runs {len(nodes)} NATS node(s) {nodes}, not {NATS_NODES}"
    flags = {node: nats_flags(node) for node in nodes}
    assert len({f.get("--cluster_name") for f in flags.values()}) == 1, "the NATS nodes name different clusters"
    names = {next((f[flag] for flag in NATS_NAME_FLAGS if flag in f), None) for f in flags.values()}
    assert None not in names and len(names) == NATS_NODES, f"the NATS nodes need distinct names, have {names}"
    for node, f in flags.items():
        assert "-js" in f or "--jetstream" in f, f"{node} runs without JetStream (-js)"
        store = f.get("-sd", f.get("--store_dir"))
        assert store in {t for _, t, _ in volume_mounts(SERVICES_IN_COMPOSE[node])}, (
            f"{node} keeps JetStream in {store}, which is no volume: it would not survive the container")
        assert urlsplit(f.get("--cluster", "")).port == NATS_CLUSTER_PORT, f"{node} listens for routes elsewhere"
        routes = {(u.hostname, u.port) for u in map(urlsplit, f.get("--routes", "").split(","))}
        others = {(other, NATS_CLUSTER_PORT) for other in nodes if other != node}
        assert others <= routes, f"{node} routes to {sorted(routes)}, not to every other node {sorted(others)}"


@pytest.mark.parametrize("name", VMFLOW)
def test_every_service_lists_every_nats_node(name):
    listed = [urlsplit(url) for url in environment(SERVICES_IN_COMPOSE[name])["VMFLOW_NATS_URL"].split(",")]
    assert {(u.scheme, u.hostname, u.port) for u in listed} == {
        ("nats", node, NATS_CLIENT_PORT) for node in nats_nodes()}, (
        f"VMFLOW_NATS_URL of {name} lists {[u.geturl() for u in listed]}, not every NATS node")


@pytest.mark.parametrize("name", VMFLOW)
def test_jetstream_keeps_a_copy_on_every_nats_node(name, monkeypatch):
    replicas = settings_from_compose(name, monkeypatch).jetstream_replicas
    wanted = min(len(nats_nodes()), JETSTREAM_COPIES_AT_MOST)
    assert replicas == wanted, (f"{name} asks JetStream for {replicas} copies of its streams and buckets; "
                                f"on {len(nats_nodes())} NATS nodes VMFLOW_JETSTREAM_REPLICAS should be {wanted}")


@pytest.mark.skipif(shutil.which("nats-server") is None, reason="no nats-server (deploy/install.sh installs it)")
async def test_the_services_connect_with_the_nats_url_compose_gives():
    with nats_server() as url:
        listed = ",".join([url] * NATS_NODES)  # compose's shape: one URL per node, comma-separated
        try:
            client = await asyncio.wait_for(connect(CommonSettings(nats_url=listed), "compose-check"), 10)
        except nats.errors.Error as exc:  # nats-py takes a list; one string is one URL to it
            pytest.fail(f"the services cannot connect with a VMFLOW_NATS_URL like compose's ({listed}): {exc}")
        await client.close()


@pytest.mark.parametrize("name", VMFLOW)
def test_temporal_is_the_compose_temporal(name):
    host, _, port = environment(SERVICES_IN_COMPOSE[name])["VMFLOW_TEMPORAL_ADDRESS"].partition(":")
    temporal = SERVICES_IN_COMPOSE.get(host)
    assert temporal and str(temporal.get("image")).startswith("temporalio/") and port == "7233", (
        f"VMFLOW_TEMPORAL_ADDRESS of {name} is {host}:{port}, not a Temporal service of compose on 7233")


def test_the_temporal_ui_link_is_a_port_compose_publishes():
    link = urlsplit(environment(SERVICES_IN_COMPOSE["api"])["VMFLOW_TEMPORAL_UI_URL"])
    published = {int(p.split(":")[-2]) for s in SERVICES_IN_COMPOSE.values()
                 if str(s.get("image", "")).startswith("temporalio/ui:") for p in s.get("ports") or ()}
    assert link.port in published, f"the API links to the Temporal UI at {link.geturl()}; compose publishes it on {published}"


def test_the_api_listens_where_compose_publishes_it(monkeypatch):
    api = SERVICES_IN_COMPOSE["api"]
    settings = settings_from_compose("api", monkeypatch)
    container_ports = {int(p.split(":")[-1]) for p in api.get("ports") or ()}
    assert settings.listen_host == "0.0.0.0" and settings.listen_port in container_ports, (
        f"the API listens on {settings.listen_host}:{settings.listen_port}; compose publishes {container_ports}")


def test_every_dependency_is_a_defined_service():
    for name, service in SERVICES_IN_COMPOSE.items():
        unknown = depends_on(service) - set(SERVICES_IN_COMPOSE)
        assert not unknown, f"compose service {name} depends on {sorted(unknown)}, which compose does not define"


@pytest.mark.parametrize("name", VMFLOW)
def test_each_service_depends_on_what_it_connects_to(name):
    env = environment(SERVICES_IN_COMPOSE[name])
    hosts = {urlsplit(url).hostname for url in env["VMFLOW_NATS_URL"].split(",")}
    hosts.add(env["VMFLOW_TEMPORAL_ADDRESS"].partition(":")[0])
    if "VMFLOW_DATABASE_URL" in env:
        hosts.add(make_url(env["VMFLOW_DATABASE_URL"]).host)
    missing = hosts - depends_on(SERVICES_IN_COMPOSE[name])
    assert not missing, f"{name} connects to {sorted(missing)} but does not depend on them"


def test_images_are_pinned():
    images = {name: s["image"] for name, s in SERVICES_IN_COMPOSE.items() if "build" not in s}
    images.update({f"Dockerfile stage {i}": stage[0][1].split()[0] for i, stage in enumerate(dockerfile_stages())})
    for where, image in images.items():
        _, _, tag = image.rpartition(":")
        assert "/" not in tag and tag != "latest" and any(c.isdigit() for c in tag), (
            f"{where} uses image {image}: pin it to a version tag")


def test_volumes_are_declared_and_bind_sources_exist():
    declared = set(COMPOSE.get("volumes") or {})
    for name, service in SERVICES_IN_COMPOSE.items():
        for source, target, _ in volume_mounts(service):
            if is_bind(source):
                assert (REPO / source).exists(), f"{name} mounts {source} at {target}, but there is no such file"
            else:
                assert source in declared, f"{name} mounts volume {source}, which the top-level volumes lack"


def test_the_dockerfile_copies_what_the_commands_need():
    assert dockerfile_path().is_file(), f"compose builds {dockerfile_path()}, which does not exist"
    copied = {source for args in final_stage("COPY") if not args.startswith("--from") for source in args.split()[:-1]}
    includes = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    needed = {pattern.rstrip("*") for pattern in includes["include"]} | {"pyproject.toml"}
    needed |= {command_module(name).split(".")[0] for name in VMFLOW}
    assert needed <= copied, f"the image lacks {sorted(needed - copied)}: the Dockerfile should COPY them"
    assert any(args.startswith("--from") and args.endswith("services/portal/node_modules")
               for args in final_stage("COPY")), "the image lacks the portal's node_modules (its browser libraries)"


def test_the_image_has_the_programs_the_services_run():
    assert "qemu-img" in (REPO / "services" / "storage" / "qemu_img.py").read_text(), (
        "the storage service no longer runs qemu-img: update PROGRAM_PACKAGES")
    fencer = SERVICES_IN_COMPOSE["fencer"]
    config_path = environment(fencer)["VMFLOW_FENCE_CONFIG"]
    source = next((src for src, target, _ in volume_mounts(fencer) if target == config_path), None)
    assert source, f"the fencer reads its agents from {config_path}, which compose mounts nothing at"
    config = yaml.safe_load((REPO / source).read_text())  # JSON is YAML
    agents = {entry["agent"][0] for entry in [*config.get("hosts", {}).values(), config.get("default", {})] if entry}
    for program in {"qemu-img", *agents}:
        needed = PROGRAM_PACKAGES.get(program, {"fence-agents"} if program.startswith("fence_") else set())
        assert needed, f"the fencer's configuration runs {program}: add the Debian package that ships it"
        assert needed <= apt_packages(), f"the services run {program}; the image should apt-get install {needed}"


def test_volumes_the_services_write_belong_to_the_image_user():
    user = final_stage("USER")[-1] if final_stage("USER") else "root"
    if user == "root":
        return
    runs = final_stage("RUN")
    for name in VMFLOW:
        for source, target, read_only in volume_mounts(SERVICES_IN_COMPOSE[name]):
            if is_bind(source) or read_only:
                continue
            assert any(target in run.split() and (f"-o {user}" in run or f"chown {user}" in run) for run in runs), (
                f"{name} writes volume {source} at {target} as {user}, but the image does not create it owned by {user}")
