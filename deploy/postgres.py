"""A PostgreSQL server of one run folder: the inventory's database of a stack started with
``--database postgres``, and the unit tests' second engine.

Its files live under ``<run dir>/postgres``: ``data`` (the cluster, made once by initdb),
``socket`` (its unix socket) and ``pgpass`` (the vmflow role's password, 0600, read by libpq).
It listens on 127.0.0.1 at the port given and on that socket, nowhere else. No other cluster is
used or touched (not Debian's ``main`` cluster, not its service).

Who may connect (its pg_hba.conf):
- the superuser ``postgres``, over the unix socket only and without a password: the socket's
  folder belongs to the server's user, mode 0700, so only that user and root reach it;
- the role ``vmflow``, over 127.0.0.1 with its password (scram-sha-256). Every local account
  can reach 127.0.0.1 (other engineers' stacks and tests too), so not trust: only who may read
  the pgpass file gets in. The URL names that file, never the password, so the password is in
  no environment, command line or supervised.json.

PostgreSQL refuses to run as root: run by root, initdb and the server run as the ``postgres``
system user (Debian's package makes it) through setpriv, which execs, so the pid kept in
``pids/postgres.pid`` is the postmaster's own. Standard library only but for ``psycopg`` (the
``postgres`` extra), imported where a connection is made. Blocking.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from deploy.processes import is_alive, read_pid, start_process, stop_process

SERVER_USER = "postgres"  # the system user the server runs as when we are root
SUPERUSER = "postgres"
ROLE = "vmflow"
DATABASE = "vmflow"
PROCESS = "postgres"  # its name under the run dir's pids/ and logs/
_INITIALIZED = "initialized"  # written once initdb and pg_hba.conf are done: a half-made cluster is redone
_HBA = f"""\
# Written by vmflow (deploy/postgres.py). The superuser only over the unix socket, whose folder
# only the server's user (and root) may enter; the vmflow role over 127.0.0.1 with its password.
local   all   {SUPERUSER}                  trust
host    all   {ROLE}      127.0.0.1/32   scram-sha-256
"""


class PostgresError(RuntimeError):
    """The server cannot be made, started or reached."""


@dataclass(frozen=True)
class Server:
    """The PostgreSQL server of ``run_dir``, listening on 127.0.0.1:``port``."""

    run_dir: Path
    port: int

    @property
    def root(self) -> Path:
        return Path(self.run_dir) / "postgres"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def passfile(self) -> Path:
        return self.root / "pgpass"

    def url(self, database: str = DATABASE) -> str:
        """The SQLAlchemy URL of ``database`` as the vmflow role: no password in it, libpq reads
        it from the pgpass file."""
        return (f"postgresql+psycopg://{ROLE}@127.0.0.1:{self.port}/{database}"
                f"?passfile={quote(str(self.passfile), safe='/')}")

    def conninfo(self, database: str = DATABASE) -> str:
        """The same as a libpq connection string (psql, pg_dump)."""
        return f"host=127.0.0.1 port={self.port} user={ROLE} dbname={database} passfile='{self.passfile}'"


def bin_dir() -> Path:
    """Where initdb and postgres are: $VMFLOW_POSTGRES_BIN, else the newest Debian
    /usr/lib/postgresql/<version>/bin, else the PATH's. Raises FileNotFoundError."""
    candidates = [Path(p) for p in (os.environ.get("VMFLOW_POSTGRES_BIN"),) if p]
    debian = [d for d in Path("/usr/lib/postgresql").glob("*/bin") if d.parent.name.isdigit()]
    candidates += sorted(debian, key=lambda d: int(d.parent.name), reverse=True)
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append(Path(on_path).parent)
    for candidate in candidates:
        if (candidate / "postgres").is_file() and (candidate / "initdb").is_file():
            return candidate
    raise FileNotFoundError("no PostgreSQL server (initdb, postgres): run deploy/install.sh")


def available() -> bool:
    """Whether a server can run here: its binaries, its user when we are root, and psycopg."""
    try:
        bin_dir()
        _server_ids()
        import psycopg  # noqa: F401
    except (FileNotFoundError, PostgresError, ImportError):
        return False
    return True


def _server_ids() -> tuple[int, int]:
    """(uid, gid) the server runs as: the postgres user when we are root, else ourselves."""
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    try:
        user = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PostgresError(f"no '{SERVER_USER}' system user to run PostgreSQL as (it refuses root): "
                            "install Debian's postgresql (deploy/install.sh)") from None
    return user.pw_uid, user.pw_gid


def _as_server_user() -> list[str]:
    """The command prefix that runs a program as the server's user (nothing unless we are root)."""
    if os.geteuid() != 0:
        return []
    uid, gid = _server_ids()
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--"]


def _may_enter(folder: Path, uid: int, groups: set[int]) -> bool:
    st = folder.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _let_server_user_through(run_dir: Path) -> None:
    """The server's user must pass through every folder down to its own. The run dir (ours) gets
    the search bit for others when it lacks it (0700 becomes 0711: passing through, never
    listing); a folder above it that stops the user is an error saying so."""
    if os.geteuid() != 0:
        return
    uid, gid = _server_ids()
    groups = set(os.getgrouplist(SERVER_USER, gid))
    for folder in (run_dir, *run_dir.parents):
        if _may_enter(folder, uid, groups):
            continue
        if folder == run_dir:
            folder.chmod(stat.S_IMODE(folder.stat().st_mode) | stat.S_IXOTH)
            continue
        raise PostgresError(f"the '{SERVER_USER}' user may not pass through {folder}: PostgreSQL cannot reach "
                            f"its files under {run_dir}; use a run dir it can reach")


def _own_folder(path: Path, uid: int, gid: int) -> None:
    path.mkdir(mode=0o700, exist_ok=True)
    os.chown(path, uid, gid)
    path.chmod(0o700)


def init(server: Server) -> None:
    """Make the cluster once (initdb: UTF-8, C collation, superuser 'postgres'; vmflow's
    pg_hba.conf) and the vmflow role's password file. A no-op once done; a cluster whose making
    was cut short is made again. Raises PostgresError."""
    root = server.root
    root.mkdir(parents=True, exist_ok=True)
    _let_server_user_through(Path(server.run_dir))
    uid, gid = _server_ids()
    _own_folder(server.socket_dir, uid, gid)
    if not server.passfile.exists():
        fd = os.open(server.passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # libpq ignores a laxer one
        with os.fdopen(fd, "w") as out:
            out.write(f"127.0.0.1:*:*:{ROLE}:{os.urandom(24).hex()}\n")
    if (root / _INITIALIZED).exists():
        return
    shutil.rmtree(server.data_dir, ignore_errors=True)
    _own_folder(server.data_dir, uid, gid)
    made = subprocess.run(
        [*_as_server_user(), str(bin_dir() / "initdb"), "-D", str(server.data_dir), "-U", SUPERUSER,
         "-E", "UTF8", "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256"],
        cwd=server.data_dir, capture_output=True, text=True)
    if made.returncode != 0:
        raise PostgresError(f"initdb failed ({made.returncode}): {(made.stdout + made.stderr)[-2000:]}")
    hba = server.data_dir / "pg_hba.conf"
    hba.write_text(_HBA)
    os.chown(hba, uid, gid)
    hba.chmod(0o600)
    (root / _INITIALIZED).write_text("")


def server_argv(server: Server, settings: dict[str, str | int] | None = None) -> list[str]:
    """The postmaster's command line (for start_process or launch): listening on 127.0.0.1 and
    the run dir's socket only; ``settings`` are more ``-c name=value``."""
    options = {"listen_addresses": "127.0.0.1", "port": server.port,
               "unix_socket_directories": str(server.socket_dir), **(settings or {})}
    argv = [*_as_server_user(), str(bin_dir() / "postgres"), "-D", str(server.data_dir)]
    for name, value in options.items():
        argv += ["-c", f"{name}={value}"]
    return argv


def start(server: Server, settings: dict[str, str | int] | None = None, timeout_s: float = 60.0) -> int:
    """Make the cluster if it is not there, start the server (process ``postgres`` of the run
    dir: its pid in pids/, its log in logs/), wait until it accepts connections, and make sure the
    vmflow role and database exist. Returns the postmaster's pid. Raises PostgresError."""
    init(server)
    pid = start_process(PROCESS, server_argv(server, settings), Path(server.run_dir), cwd=server.data_dir)
    wait_ready(server, timeout_s)
    ensure_role(server)
    create_database(server, DATABASE)
    return pid


def _connect_admin(server: Server, dbname: str = "postgres", timeout_s: float = 5.0):
    """A connection as the superuser over the socket, in autocommit (CREATE DATABASE wants it)."""
    import psycopg

    return psycopg.connect(host=str(server.socket_dir), port=server.port, user=SUPERUSER, dbname=dbname,
                           autocommit=True, connect_timeout=max(1, int(timeout_s)))


def is_ready(server: Server) -> bool:
    import psycopg

    try:
        with _connect_admin(server, timeout_s=2):
            return True
    except psycopg.OperationalError:
        return False


def wait_ready(server: Server, timeout_s: float = 60.0) -> None:
    """Until the server accepts connections. Raises PostgresError, with the end of its log, when it
    exits or does not answer in time."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not is_alive(read_pid(Path(server.run_dir), PROCESS)):
            raise PostgresError(f"PostgreSQL exited: {_log_tail(server)}")
        if is_ready(server):
            return
        if time.monotonic() > deadline:
            raise PostgresError(f"PostgreSQL not ready after {timeout_s:g} s: {_log_tail(server)}")
        time.sleep(0.1)


def _log_tail(server: Server, limit: int = 2000) -> str:
    try:
        return (Path(server.run_dir) / "logs" / f"{PROCESS}.log").read_text(errors="replace")[-limit:]
    except FileNotFoundError:
        return "(no log)"


def _password(server: Server) -> str:
    return server.passfile.read_text().strip().rsplit(":", 1)[1]


def ensure_role(server: Server, create_db: bool = False) -> None:
    """The vmflow role, able to log in with the pgpass file's password. ``create_db``: it may
    make databases too (the unit tests make one per test). Idempotent."""
    from psycopg import sql

    with _connect_admin(server) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(sql.SQL(verb + " ROLE {} LOGIN {} PASSWORD {}").format(
            sql.Identifier(ROLE), sql.SQL("CREATEDB" if create_db else "NOCREATEDB"),
            sql.Literal(_password(server))))


def create_database(server: Server, name: str, template: str | None = None) -> None:
    """The database ``name``, owned by the vmflow role, as a copy of ``template`` when given.
    Idempotent: one that exists is kept as it is."""
    from psycopg import sql

    with _connect_admin(server) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return
        statement = sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(ROLE))
        if template is not None:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            if conn.info.server_version >= 150000:  # copying files is twice as fast for a small one
                statement += sql.SQL(" STRATEGY FILE_COPY")
        conn.execute(statement)


def drop_database(server: Server, name: str) -> None:
    """Drop ``name``, ending its sessions first. Idempotent."""
    from psycopg import sql

    with _connect_admin(server) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def dump(server: Server, database: str = DATABASE) -> bytes:
    """Everything ``database`` holds, as pg_dump writes it (data only)."""
    return subprocess.run([str(bin_dir() / "pg_dump"), "--data-only", "-d", server.conninfo(database)],
                          check=True, capture_output=True).stdout


def stop(run_dir: Path, timeout_s: float = 30.0) -> bool:
    """Fast shutdown: SIGINT to the postmaster ends the sessions, rolls back what is open and
    writes a clean checkpoint; whatever is left after ``timeout_s`` goes the hard way
    (stop_process). Idempotent; True when it was running."""
    pid = read_pid(run_dir, PROCESS)
    was_alive = is_alive(pid)
    if was_alive:
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        while is_alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)
    stop_process(run_dir, PROCESS)  # reaps it, and forgets its pid
    return was_alive


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
