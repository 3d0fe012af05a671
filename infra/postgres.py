"""A PostgreSQL cluster of the project's own, in a directory it chooses: the tracking server's
database (infra/mlflow_server.py).

Why not the system's service: a developer or CI machine may have none, or one holding other data;
the project initialises its cluster once (`initdb`) and starts and stops it (`pg_ctl`) in its
state dir, on a port of its own, listening on 127.0.0.1 only (no Unix socket). The binaries are
Debian's (`infra/install_postgres.sh`): `initdb` on PATH, else the newest
/usr/lib/postgresql/<version>/bin.

PostgreSQL refuses to run as root. Run as root (CI, containers), every server-side command runs as
the unprivileged user `postgres` that Debian's package creates, and the cluster's files belong to
it; run as anyone else, they run as that user. Clients (MLflow, `psql`) run as the caller.

Authentication is SCRAM for the one role, `mlflow`, whose password initdb receives and which is
kept, for clients only, in `pgpass` beside the data dir (mode 0600; libpq reads it through
PGPASSFILE). Without a password, any local user could connect as the cluster's superuser and,
through `COPY ... TO PROGRAM`, run commands as its owner.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.errors import BrokerError
from infra.ports import LOOPBACK, port_in_use
from infra.processes import tail_file

ROLE = DATABASE = "mlflow"
SERVER_USER_WHEN_ROOT = "postgres"  # created by Debian's postgresql-common
DEBIAN_BINARIES = Path("/usr/lib/postgresql")
INSTALL_HINT = "install it with `bash infra/install_postgres.sh` (Debian's postgresql package)"


@dataclass(frozen=True)
class Cluster:
    """A cluster's files: `data` (PGDATA), its log and the clients' password file."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def pgpass(self) -> Path:
        return self.root / "pgpass"

    def url(self, port: int) -> str:
        """The SQLAlchemy URL of the database, without its password (libpq reads `pgpass`)."""
        return f"postgresql+psycopg://{ROLE}@{LOOPBACK}:{port}/{DATABASE}"

    def client_env(self) -> dict[str, str]:
        """What a client process (the tracking server, psql) needs beside the URL."""
        return {"PGPASSFILE": str(self.pgpass)}


def bindir() -> Path:
    """Where initdb, pg_ctl and createdb are: beside `initdb` on PATH, else Debian's newest."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    versions = sorted(
        (p for p in DEBIAN_BINARIES.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not versions:
        raise BrokerError(
            f"PostgreSQL's initdb is neither on PATH nor in {DEBIAN_BINARIES}: " + INSTALL_HINT
        )
    return versions[-1]


def _as_server_user() -> dict[str, Any]:
    """subprocess arguments that run a server-side command as the cluster's owner."""
    if os.geteuid() != 0:
        return {}
    try:
        owner = pwd.getpwnam(SERVER_USER_WHEN_ROOT)
    except KeyError:
        raise BrokerError(
            f"running as root, and PostgreSQL refuses root: its server runs as the user "
            f"{SERVER_USER_WHEN_ROOT!r}, which does not exist; {INSTALL_HINT}"
        ) from None
    return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}


def _give_to_server_user(*paths: Path) -> None:
    """Hand files the server writes or reads to the user it runs as (nothing to do unless root)."""
    owner = _as_server_user()
    for path in paths if owner else ():
        os.chown(path, owner["user"], owner["group"])


def _run(command: list[str | Path], what: str, **kwargs: Any) -> None:
    """Run a PostgreSQL command; a failure raises with its output."""
    done = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd="/",  # the server user may not be allowed into the caller's working directory
        check=False,
        **kwargs,
    )
    if done.returncode != 0:
        raise BrokerError(f"{what} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")


def initialised(cluster: Cluster) -> bool:
    """Whether initdb has run in the cluster's data dir."""
    return (cluster.data / "PG_VERSION").exists()


def init_cluster(cluster: Cluster) -> None:
    """initdb once: role `mlflow` with a new random password, SCRAM on every connection."""
    owner = _as_server_user()
    cluster.root.mkdir(parents=True, exist_ok=True)
    cluster.data.mkdir(mode=0o700, exist_ok=True)
    cluster.log.touch()
    _give_to_server_user(cluster.data, cluster.log)
    reachable = subprocess.run(["test", "-w", str(cluster.data)], check=False, **owner)
    if reachable.returncode != 0:
        raise BrokerError(
            f"the PostgreSQL server user {SERVER_USER_WHEN_ROOT!r} cannot write {cluster.data}: "
            f"every directory above it must be searchable by others (chmod o+x), or choose "
            f"another state dir"
        )
    password = secrets.token_urlsafe(24)
    cluster.pgpass.touch(mode=0o600)
    cluster.pgpass.write_text(f"{LOOPBACK}:*:*:{ROLE}:{password}\n")
    password_file = cluster.root / "initdb-password"  # read by initdb as the server user
    password_file.touch(mode=0o600)
    password_file.write_text(password + "\n")
    _give_to_server_user(password_file)
    try:
        _run(
            [
                bindir() / "initdb",
                "--pgdata",
                cluster.data,
                "--username",
                ROLE,
                f"--pwfile={password_file}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            "initdb",
            **owner,
        )
    finally:
        password_file.unlink()


def running(cluster: Cluster) -> bool:
    """Whether a server runs on this data dir (`pg_ctl status`)."""
    if not initialised(cluster):
        return False
    done = subprocess.run(
        [str(bindir() / "pg_ctl"), "status", "--pgdata", str(cluster.data)],
        capture_output=True,
        cwd="/",
        check=False,
        **_as_server_user(),
    )
    return done.returncode == 0


def port(cluster: Cluster) -> int | None:
    """The port of the server running on this data dir (line 4 of postmaster.pid), or None."""
    try:
        return int((cluster.data / "postmaster.pid").read_text().splitlines()[3])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def start(cluster: Cluster, port: int, timeout: float = 120) -> None:
    """Start the server on 127.0.0.1:`port` (initialising the cluster first if need be), create
    the database `mlflow` if missing, and return once it accepts connections."""
    if port_in_use(port):
        raise BrokerError(
            f"port {port} on {LOOPBACK} is already in use; PostgreSQL needs it. Choose another "
            f"with --db-port"
        )
    if not initialised(cluster):
        init_cluster(cluster)
    options = f"-c listen_addresses={LOOPBACK} -c port={port} -c unix_socket_directories=''"
    try:
        _run(
            [
                bindir() / "pg_ctl",
                "start",
                "--pgdata",
                cluster.data,
                "--log",
                cluster.log,
                "--wait",
                f"--timeout={int(timeout)}",
                "-o",
                options,
            ],
            "pg_ctl start",
            **_as_server_user(),
        )
    except BrokerError as error:
        raise BrokerError(f"{error}\n{tail_file(cluster.log, 20)}") from None
    _create_database(cluster, port)


def _create_database(cluster: Cluster, port: int) -> None:
    client = [bindir() / "psql", "--no-psqlrc", "--tuples-only", "--no-align"]
    where = ["--host", LOOPBACK, "--port", str(port), "--username", ROLE]
    env = os.environ | cluster.client_env()
    exists = subprocess.run(
        [str(p) for p in [*client, *where, "--dbname", "postgres"]]
        + ["--command", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if exists.returncode != 0:
        raise BrokerError(f"cannot query PostgreSQL on port {port}:\n{exists.stderr}")
    if exists.stdout.strip() != "1":
        _run([bindir() / "createdb", *where, DATABASE], "createdb", env=env)


def stop(cluster: Cluster, timeout: float = 60) -> bool:
    """`pg_ctl stop -m fast` (connections are closed, transactions rolled back). False when no
    server was running on this data dir."""
    if not running(cluster):
        return False
    _run(
        [
            bindir() / "pg_ctl",
            "stop",
            "--pgdata",
            cluster.data,
            "--mode",
            "fast",
            "--wait",
            f"--timeout={int(timeout)}",
        ],
        "pg_ctl stop",
        **_as_server_user(),
    )
    return True
