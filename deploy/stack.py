"""The whole platform on one machine: nats-server, the Temporal dev server, a lab of simulated
KVM hosts, and every vmflow service as its own process. State, logs and pids under one run dir."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import httpx
import nats

from deploy import lab, postgres
from deploy.client import bearer_headers
from deploy.credentials import read_token_file
from deploy.processes import (
    free_port,
    is_alive,
    port_open,
    read_pid,
    start_process,
    stop_process,
    wait_for,
)

REPO_DIR = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("VMFLOW_CACHE_DIR", Path.home() / ".cache" / "vmflow"))
GUEST_IMAGE = "lab-guest"
DIRTY_GUEST_IMAGE = "lab-guest-dirty"  # the same guest rewriting memory fast, for migration tests
SERVICES = ("scheduler", "storage", "orchestrator", "fencer", "api")
METERED_SERVICES = ("scheduler", "storage", "orchestrator", "fencer")  # each with a /metrics port of its own
DATABASES = ("sqlite", "postgres")  # what StackConfig.database may be
STACK_FILE = "stack.json"
SUPERVISED_FILE = "supervised.json"
FENCING_FILE = "fencing.json"
LAB_GATEWAY = lab.GATEWAY_ADDRESS  # where lab hosts reach the control plane
NETWORK_RUN_DIR = Path("/run/vmflow")
ADMIN_TOKEN_FILE = "admin-token"


class StackError(RuntimeError):
    """The stack cannot come up, or does not answer as it should."""


@dataclass(frozen=True)
class StackConfig:
    run_dir: str
    lab_name: str = "vmflow"
    host_count: int = 1
    api_port: int = 8000
    nats_port: int = 4222
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    host_labels: dict[str, list[str]] = field(default_factory=dict)  # host id -> labels
    metrics_ports: dict[str, int] = field(default_factory=dict)  # process -> its /metrics port
    scheduler_replicas: int = 3  # in one queue group, sharing their claims
    nats_cluster: int = 1  # nats-servers; more than one: a cluster, JetStream keeping 3 copies (at most)
    nats_ports: list[int] = field(default_factory=list)  # client ports of every node (the first: nats_port)
    nats_route_ports: list[int] = field(default_factory=list)  # where the nodes reach each other
    database: str = "sqlite"  # the inventory's engine: sqlite (a file) or postgres (a server of its own)
    postgres_port: int = 0  # PostgreSQL's, on 127.0.0.1; 0: a free one, picked by up

    @classmethod
    def isolated(cls, run_dir: Path, lab_name: str, host_count: int = 1,
                 host_labels: dict[str, list[str]] | None = None, **options) -> StackConfig:
        """A stack that shares no port or name with any other: what tests use."""
        return replace(cls(str(run_dir), lab_name, host_count, free_port(), free_port(), free_port(), free_port(),
                           host_labels or {}), **options).with_metrics_ports().with_nats_ports().with_postgres_port()

    def with_nats_ports(self) -> StackConfig:
        """This config with a client and a route port for each NATS node; as it is when it has them."""
        if len(self.nats_ports) == self.nats_cluster:
            return self
        clients = [self.nats_port, *(free_port() for _ in range(self.nats_cluster - 1))]
        routes = [free_port() for _ in range(self.nats_cluster)] if self.nats_cluster > 1 else []
        return replace(self, nats_ports=clients, nats_route_ports=routes)

    def with_postgres_port(self) -> StackConfig:
        """This config with a free port for PostgreSQL when it runs one and has none yet."""
        if self.database != "postgres" or self.postgres_port:
            return self
        return replace(self, postgres_port=free_port())

    def nats_names(self) -> list[str]:
        """The NATS nodes' process names: ``nats``, ``nats-2``, ..."""
        return ["nats", *(f"nats-{i}" for i in range(2, self.nats_cluster + 1))]

    @property
    def jetstream_replicas(self) -> int:
        return min(3, self.nats_cluster)

    def with_metrics_ports(self) -> StackConfig:
        """This config with a free port for each process's /metrics (the API serves its own on
        its port); as it is when it has them already."""
        if self.metrics_ports:
            return self
        names = [*METERED_SERVICES, *self.scheduler_names()[1:], *(f"host-worker-{h}" for h in self.host_ids())]
        return replace(self, metrics_ports={name: free_port() for name in names})

    def labels_of(self, host_id: str) -> list[str]:
        return list(self.host_labels.get(host_id, []))

    @property
    def root(self) -> Path:
        return Path(self.run_dir)

    @property
    def pool_dir(self) -> Path:
        return self.root / "storage" / "shared"

    def local_pool_dir(self, host_id: str) -> Path:
        """The host's own pool, in its lab folder (lab hosts share one filesystem; only the
        host's own VMs use it)."""
        return self.root / "lab" / "hosts" / host_id / "pool"

    @property
    def admin_token_file(self) -> Path:
        """Where the API keeps a working admin token (it writes one, mode 0600, when missing)."""
        return self.root / ADMIN_TOKEN_FILE

    @property
    def console_dir(self) -> Path:
        return self.pool_dir / "consoles"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def nats_url(self) -> str:
        """Every node, comma-separated: clients move to another when theirs goes."""
        return ",".join(f"nats://127.0.0.1:{port}" for port in self.nats_ports or [self.nats_port])

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.temporal_port}"

    def host_ids(self) -> list[str]:
        return [f"h{i}" for i in range(1, self.host_count + 1)]

    def scheduler_names(self) -> list[str]:
        """The scheduler replicas' process names: ``scheduler``, ``scheduler-2``, ..."""
        return ["scheduler", *(f"scheduler-{i}" for i in range(2, self.scheduler_replicas + 1))]


def temporal_binary() -> str:
    for candidate in (os.environ.get("VMFLOW_TEMPORAL_BIN"), shutil.which("temporal"),
                      str(CACHE_DIR / "bin" / "temporal")):
        if candidate and Path(candidate).is_file():
            return candidate
    raise FileNotFoundError("no temporal binary: run deploy/install.sh first")


def load_config(run_dir: Path) -> StackConfig | None:
    try:
        return StackConfig(**json.loads((run_dir / STACK_FILE).read_text()))
    except FileNotFoundError:
        return None


def common_env(cfg: StackConfig) -> dict[str, str]:
    return {
        "VMFLOW_NATS_URL": cfg.nats_url,
        "VMFLOW_JETSTREAM_REPLICAS": str(cfg.jetstream_replicas),
        "VMFLOW_TEMPORAL_ADDRESS": cfg.temporal_address,
        "VMFLOW_LOG_JSON": "true",
        "PYTHONUNBUFFERED": "1",
    }


def metrics_env(cfg: StackConfig, name: str, address: str = "127.0.0.1") -> dict[str, str]:
    """Where process ``name`` serves its /metrics: nowhere (port 0) when the config has no port for it."""
    return {"VMFLOW_METRICS_HOST": address, "VMFLOW_METRICS_PORT": str(cfg.metrics_ports.get(name, 0))}


def metrics_endpoints(cfg: StackConfig) -> dict[str, str]:
    """process -> where its Prometheus metrics are. Host workers serve theirs on their lab address,
    inside their host's network namespace (the root namespace's 127/8 is its own loopback)."""
    where = {"api": f"{cfg.api_url}/metrics (with the admin token, {cfg.admin_token_file})"}
    where.update({name: f"http://127.0.0.1:{cfg.metrics_ports[name]}/metrics"
                  for name in (*METERED_SERVICES, *cfg.scheduler_names()) if name in cfg.metrics_ports})
    the_lab = lab.load_lab(cfg.lab_name, cfg.root / "lab")
    for host in the_lab.hosts if the_lab else ():
        port = cfg.metrics_ports.get(f"host-worker-{host.host_id}")
        if port:
            where[f"host-worker-{host.host_id}"] = (
                f"ip netns exec {host.namespace} curl http://{host.address}:{port}/metrics")
    return where


def ensure_guest_image(cfg: StackConfig) -> None:
    """Build the lab guest images once per machine (cached), then hard-link them into the
    stack's pool. One build makes both: lab-guest and its lab-guest-dirty variant beside it."""
    built = CACHE_DIR / "images"
    names = (GUEST_IMAGE, DIRTY_GUEST_IMAGE)
    if not all((built / name / "image.json").exists() for name in names):
        subprocess.run(["bash", str(REPO_DIR / "deploy" / "guest" / "build-image.sh"), str(built / GUEST_IMAGE)],
                       check=True)
    for name in names:
        target = cfg.pool_dir / "images" / name
        if (target / "image.json").exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(built / name, target, copy_function=_link_or_copy)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def start_nats(cfg: StackConfig) -> None:
    for index in range(cfg.nats_cluster):
        start_nats_node(cfg, index)


def start_nats_node(cfg: StackConfig, index: int) -> None:
    """Node ``index`` (0-based); with more than one, clustered with the others by routes."""
    name = cfg.nats_names()[index]
    store = cfg.root / name
    store.mkdir(parents=True, exist_ok=True)
    argv = ["nats-server", "-a", "127.0.0.1", "-p", str(cfg.nats_ports[index]), "-js", "-sd", str(store)]
    if cfg.nats_cluster > 1:
        peers = [f"nats://127.0.0.1:{port}" for i, port in enumerate(cfg.nats_route_ports) if i != index]
        argv += ["--server_name", name, "--cluster_name", "vmflow",
                 "--cluster", f"nats://127.0.0.1:{cfg.nats_route_ports[index]}", "--routes", ",".join(peers)]
    start_process(name, argv, cfg.root)


def jetstream_ready(cfg: StackConfig) -> bool:
    """Whether JetStream answers (on a cluster: once its nodes have elected a leader)."""
    async def ask() -> bool:
        nc = await nats.connect(cfg.nats_url.split(","), connect_timeout=2, allow_reconnect=False)
        try:
            await nc.jetstream().account_info()
            return True
        finally:
            await nc.close()
    try:
        return asyncio.run(ask())
    except Exception:
        return False


def start_temporal(cfg: StackConfig) -> None:
    start_process("temporal", [
        temporal_binary(), "server", "start-dev",
        "--ip", "127.0.0.1",
        "--port", str(cfg.temporal_port),
        "--ui-port", str(cfg.temporal_ui_port),
        "--http-port", str(free_port()),
        "--metrics-port", str(free_port()),
        "--db-filename", str(cfg.root / "temporal.db"),
        # Each history write was a rollback-journal transaction with its fsyncs: tens of ms per
        # workflow step on a busy disk. The write-ahead log, synced at checkpoints, survives a
        # crash of the server (not of the machine, as an in-memory store would not either).
        "--sqlite-pragma", "journal_mode=wal",
        "--sqlite-pragma", "synchronous=normal",
        "--log-level", "warn",
    ], cfg.root)


def launch(cfg: StackConfig, name: str, argv: list[str], env: dict[str, str] | None = None,
           cwd: Path | None = REPO_DIR) -> int:
    """Start a process the supervisor keeps running from now on."""
    supervised = cfg.root / SUPERVISED_FILE
    specs = json.loads(supervised.read_text()) if supervised.exists() else {}
    specs[name] = {"argv": argv, "env": env or {}, "cwd": str(cwd) if cwd else None}
    tmp = supervised.with_suffix(".tmp")
    tmp.write_text(json.dumps(specs, indent=2))
    os.replace(tmp, supervised)
    return start_process(name, argv, cfg.root, env, cwd)


def fencing_config(cfg: StackConfig) -> dict:
    """Every lab host is fenced by the lab's own agent, which powers it off from outside."""
    agent = [sys.executable, str(REPO_DIR / "deploy" / "fence_lab.py")]
    options = {"lab": cfg.lab_name, "state_dir": str(cfg.root / "lab"), "plug": "{host}"}
    return {"default": {"agent": agent, "options": options}}


def start_relays(cfg: StackConfig) -> None:
    """Lab hosts reach NATS and Temporal through their own link: a relay in the switch namespace
    listens on the lab network and hands each connection over a unix socket to the root
    namespace's loopback. Cutting a host's link cuts its worker off, as a real network would.
    Both TCP legs send at once (``nodelay``), as gRPC and NATS clients do on their own sockets:
    without it Nagle's algorithm held a worker's small write behind an unacknowledged one until
    the peer's delayed ACK (~40 ms), e.g. an activity's completion right after a heartbeat."""
    relay_dir = cfg.root / "relay"
    relay_dir.mkdir(parents=True, exist_ok=True)
    switch = f"{cfg.lab_name}-sw"
    for name, port in (*zip(cfg.nats_names(), cfg.nats_ports), ("temporal", cfg.temporal_port)):
        sock = relay_dir / f"{name}.sock"
        launch(cfg, f"relay-{name}-in", ["socat", f"UNIX-LISTEN:{sock},fork,unlink-early",
                                         f"TCP:127.0.0.1:{port},nodelay"], cwd=None)
        wait_for(sock.exists, 10, f"{name} relay socket")
        launch(cfg, f"relay-{name}-out", ["ip", "netns", "exec", switch, "socat",
                                          f"TCP-LISTEN:{port},bind={LAB_GATEWAY},fork,reuseaddr,nodelay",
                                          f"UNIX-CONNECT:{sock}"], cwd=None)


def start_services(cfg: StackConfig, hosts: tuple[lab.LabHost, ...]) -> None:
    env = common_env(cfg)
    py = sys.executable
    for name in cfg.scheduler_names():
        launch(cfg, name, [py, "-m", "services.scheduler"], {**env, **metrics_env(cfg, name)})
    local_pools = {h: str(cfg.local_pool_dir(h)) for h in cfg.host_ids()}
    for path in local_pools.values():  # there before any host measures its disk
        Path(path).mkdir(parents=True, exist_ok=True)
    launch(cfg, "storage", [py, "-m", "services.storage"],
           {**env, **metrics_env(cfg, "storage"), "VMFLOW_POOL_DIR": str(cfg.pool_dir),
            "VMFLOW_LOCAL_POOLS": json.dumps(local_pools)})
    launch(cfg, "orchestrator", [py, "-m", "workflows"], {**env, **metrics_env(cfg, "orchestrator")})
    fencing = cfg.root / FENCING_FILE
    if not fencing.exists():  # an operator's edits (another agent for a host) are kept
        fencing.write_text(json.dumps(fencing_config(cfg), indent=2))
    launch(cfg, "fencer", [py, "-m", "services.fencing"],
           {**env, **metrics_env(cfg, "fencer"), "VMFLOW_FENCE_CONFIG": str(fencing)})
    launch(cfg, "api", [py, "-m", "services.api"], api_env(cfg, cfg.api_port))
    for host in hosts:
        start_host_worker(cfg, host)


def database_url(cfg: StackConfig) -> str:
    """The inventory's SQLAlchemy URL: the run dir's SQLite file, or its PostgreSQL (no password
    in it: libpq reads it from the run dir's pgpass file)."""
    if cfg.database == "postgres":
        return postgres.Server(cfg.root, cfg.postgres_port).url()
    return f"sqlite:///{cfg.root / 'vmflow.db'}"


def api_env(cfg: StackConfig, port: int) -> dict[str, str]:
    """What an API process listening on ``port`` runs with; every replica alike but its port."""
    return {
        **common_env(cfg),
        "VMFLOW_DATABASE_URL": database_url(cfg),
        "VMFLOW_LISTEN_PORT": str(port),
        "VMFLOW_ADMIN_TOKEN_FILE": str(cfg.admin_token_file),
        "VMFLOW_TEMPORAL_UI_URL": f"http://127.0.0.1:{cfg.temporal_ui_port}",
    }


def start_api_replica(cfg: StackConfig, index: int) -> str:
    """Another API process, ``api-<index>``, on a free port and the same inventory, NATS and
    Temporal (kept by the supervisor, stopped by down). Returns its URL once it is ready. The
    inventory must be PostgreSQL: SQLite serves one process."""
    if cfg.database != "postgres":
        raise StackError("API replicas share the inventory's database: start the stack with database postgres")
    port = free_port()
    launch(cfg, f"api-{index}", [sys.executable, "-m", "services.api"], api_env(cfg, port))
    replica = replace(cfg, api_port=port)
    wait_for(lambda: _api_ready(replica), 60, f"API replica api-{index}", interval_s=0.3)
    return replica.api_url


def start_postgres(cfg: StackConfig) -> None:
    """The inventory's PostgreSQL, in the run dir (made there the first time), with the vmflow
    role and database; returns once it accepts connections. Stopped by down (fast shutdown)."""
    postgres.start(postgres.Server(cfg.root, cfg.postgres_port))


def network_state_dir(cfg: StackConfig, host_id: str) -> Path:
    """Where a lab host's DHCP servers keep their files: under /run, which every user can
    traverse (dnsmasq re-reads its hosts file after dropping root), gone on reboot like them."""
    return NETWORK_RUN_DIR / cfg.lab_name / host_id


def start_host_worker(cfg: StackConfig, host: lab.LabHost) -> None:
    """The host's worker, inside the host's network namespace: it reaches NATS and Temporal over
    the lab network (through the relays), its libvirtd over its unix socket."""
    # nsenter, not `ip netns exec`: the worker stays in the root mount namespace, so the DHCP
    # namespaces it makes for its networks are visible (and removable) from everywhere.
    launch(cfg, f"host-worker-{host.host_id}", [
        "nsenter", f"--net=/run/netns/{host.namespace}", sys.executable, "-m", "services.host_worker"], {
        **common_env(cfg),
        **metrics_env(cfg, f"host-worker-{host.host_id}", host.address),  # its address inside its namespace
        "VMFLOW_NATS_URL": ",".join(f"nats://{LAB_GATEWAY}:{port}" for port in cfg.nats_ports),
        "VMFLOW_TEMPORAL_ADDRESS": f"{LAB_GATEWAY}:{cfg.temporal_port}",
        "VMFLOW_HOST_ID": host.host_id,
        "VMFLOW_LIBVIRT_URI": host.unix_uri,
        "VMFLOW_DOMAIN_TYPE": "qemu",  # KVM here cannot boot guests (see LAB facts)
        "VMFLOW_CONSOLE_DIR": str(cfg.console_dir),
        "VMFLOW_LOCAL_DISK_DIR": str(cfg.local_pool_dir(host.host_id)),  # its own disk, not the shared one
        "VMFLOW_LABELS": json.dumps(cfg.labels_of(host.host_id)),
        "VMFLOW_MIGRATION_URI": host.tcp_uri,
        # Seeds on shared storage: a VM that moves finds its seed where it arrives.
        "VMFLOW_SEED_DIR": str(cfg.pool_dir / "seeds"),
        # The hosts share one kernel: their DHCP namespaces carry the host's name.
        "VMFLOW_NETNS_PREFIX": f"{host.namespace}-",
        "VMFLOW_NETWORK_STATE_DIR": str(network_state_dir(cfg, host.host_id)),
    }, REPO_DIR)


def up(cfg: StackConfig, say=print) -> StackConfig:
    """Bring everything up and wait until the API is ready and every lab host reports in.
    On any failure, stop what was started. Returns the config it ran with (metrics ports given)."""
    cfg = cfg.with_metrics_ports().with_nats_ports().with_postgres_port()
    cfg.root.mkdir(parents=True, exist_ok=True)
    if load_config(cfg.root) is not None:
        down(cfg.root, say=lambda _msg: None)
    (cfg.root / STACK_FILE).write_text(json.dumps(asdict(cfg), indent=2))
    try:
        t0 = time.monotonic()
        ensure_guest_image(cfg)
        start_nats(cfg)
        start_temporal(cfg)
        if cfg.database == "postgres":
            start_postgres(cfg)
        say(f"starting {cfg.host_count} lab host(s)")
        the_lab = lab.start_lab(cfg.lab_name, cfg.root / "lab", cfg.host_count, shared_dirs=[cfg.pool_dir])
        wait_for(lambda: all(port_open(port) for port in cfg.nats_ports), 20, "nats-server")
        wait_for(lambda: jetstream_ready(cfg), 30, "JetStream", interval_s=0.5)
        wait_for(lambda: port_open(cfg.temporal_port), 60, "Temporal server")
        start_relays(cfg)
        start_services(cfg, the_lab.hosts)
        start_process("supervisor", [sys.executable, "-m", "deploy.supervisor", str(cfg.root)], cfg.root,
                      common_env(cfg), REPO_DIR)
        wait_for(lambda: _api_ready(cfg), 60, "API", interval_s=0.3)
        wait_for(lambda: admin_token(cfg) is not None, 10, f"the admin token in {cfg.admin_token_file}")
        wait_for(lambda: _hosts_up(cfg) >= cfg.host_count, 60, "lab hosts", interval_s=0.3)
        wait_for(lambda: _answers(cfg, "/v1/images"), 60, "the storage service", interval_s=0.3)
        say(f"vmflow is up in {time.monotonic() - t0:.1f} s")
    except BaseException:
        say(f"start failed; logs are in {cfg.root / 'logs'}")
        down(cfg.root, say=lambda _msg: None)
        raise
    return cfg


def _api_ready(cfg: StackConfig) -> bool:
    try:
        return httpx.get(f"{cfg.api_url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def admin_token(cfg: StackConfig) -> str | None:
    """The stack's admin token; None until the API has written it, or when this user may not
    read the file (it is its owner's only)."""
    return read_token_file(cfg.admin_token_file)


def _answers(cfg: StackConfig, path: str) -> bool:
    """Whether the API answers ``path`` (with the admin token) without an error: the services
    behind it are there."""
    try:
        return httpx.get(f"{cfg.api_url}{path}", timeout=3, headers=bearer_headers(admin_token(cfg))).status_code == 200
    except httpx.HTTPError:
        return False


def _hosts_up(cfg: StackConfig) -> int:
    """How many lab hosts report in, asked with the admin token. Raises StackError when the API
    refuses the token: waiting longer would not help."""
    token = admin_token(cfg)
    try:
        response = httpx.get(f"{cfg.api_url}/v1/hosts", timeout=3, headers=bearer_headers(token))
    except httpx.HTTPError:
        return 0
    if response.status_code in (401, 403):
        raise StackError(f"the API refuses the admin token of {cfg.admin_token_file}: "
                         f"{response.status_code} {response.text[:200]}")
    try:
        hosts = response.json()
    except ValueError:
        return 0
    # Reporting in is what counts: a host an operator left disabled or fenced is still up.
    return sum(1 for h in hosts if isinstance(h, dict) and (h.get("state") == "up" or h.get("liveness") == "up"))


def down(run_dir: Path, say=print) -> None:
    """Stop exactly what ``up`` started: services, guests and lab hosts, PostgreSQL, Temporal, NATS."""
    cfg = load_config(run_dir)
    if cfg is None:
        say(f"nothing runs from {run_dir}")
        return
    stop_process(run_dir, "supervisor")  # first: nothing is brought back from here on
    workers = [f"host-worker-{h}" for h in cfg.host_ids()]
    replicas = sorted(p.stem for p in (run_dir / "pids").glob("api-*.pid"))  # start_api_replica's
    for name in ("api", *replicas, "orchestrator", "fencer", *workers, "storage", *cfg.scheduler_names()):
        stop_process(run_dir, name)
    for name in (*cfg.nats_names(), "temporal"):
        for side in ("out", "in"):
            stop_process(run_dir, f"relay-{name}-{side}")
    (run_dir / SUPERVISED_FILE).unlink(missing_ok=True)
    lab.stop_lab(cfg.lab_name, run_dir / "lab")  # its DHCP servers with it
    shutil.rmtree(NETWORK_RUN_DIR / cfg.lab_name, ignore_errors=True)
    postgres.stop(run_dir)  # fast shutdown, once nothing uses it
    stop_process(run_dir, "temporal")
    for name in cfg.nats_names():
        stop_process(run_dir, name)
    (run_dir / STACK_FILE).unlink(missing_ok=True)
    say("vmflow is down")


def status(run_dir: Path) -> dict[str, tuple[bool, str]]:
    """component -> (healthy, detail)."""
    cfg = load_config(run_dir)
    if cfg is None:
        return {}
    report: dict[str, tuple[bool, str]] = {}
    alive = lambda name: is_alive(read_pid(run_dir, name))  # noqa: E731
    for name, port in zip(cfg.nats_names(), cfg.nats_ports or [cfg.nats_port]):
        report[name] = (alive(name) and port_open(port), f"nats://127.0.0.1:{port}")
    report["temporal"] = (alive("temporal") and port_open(cfg.temporal_port),
                          f"{cfg.temporal_address}, UI http://127.0.0.1:{cfg.temporal_ui_port}")
    metrics_at = metrics_endpoints(cfg)
    metered = lambda name: f", metrics {metrics_at[name]}" if name in metrics_at else ""  # noqa: E731
    for name in (*cfg.scheduler_names(), "storage", "orchestrator", "fencer", "supervisor"):
        report[name] = (alive(name), f"pid {read_pid(run_dir, name)}{metered(name)}")
    report["api"] = (alive("api") and _api_ready(cfg), f"{cfg.api_url}/docs{metered('api')}")
    if cfg.database == "postgres":
        server = postgres.Server(run_dir, cfg.postgres_port)
        report["postgres"] = (alive(postgres.PROCESS) and port_open(cfg.postgres_port),
                              f"127.0.0.1:{cfg.postgres_port}, data {server.data_dir}")
    lab_file = run_dir / "lab"
    health = lab.lab_health(lab.load_lab(cfg.lab_name, lab_file)) if (lab_file / "lab.json").exists() else {}
    for host_id in cfg.host_ids():
        worker = f"host-worker-{host_id}"
        report[f"libvirtd {host_id}"] = (health.get(host_id, False), "lab host")
        report[worker] = (alive(worker), f"pid {read_pid(run_dir, worker)}{metered(worker)}")
    return report
