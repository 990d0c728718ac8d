"""Fixtures of the analytics sink tests: a real PostgreSQL server for the session, a fresh
database per test, and the store under test for both engines.

PostgreSQL comes from ``ESTOP_TEST_POSTGRES_DSN`` when set (a role allowed to create databases),
otherwise from the server binaries of Debian's ``postgresql`` package (``make test`` installs
them): a throwaway cluster in a temporary folder on a free localhost port, trust auth, stopped
at the end of the session. Missing binaries fail the tests; the PostgreSQL path is never skipped.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from streams.sink.store import OutcomeStore, PostgresStore, SQLiteStore
from tests.support import free_port

POSTGRES_DSN_ENV = "ESTOP_TEST_POSTGRES_DSN"
STORES = ["sqlite", "postgresql"]


@dataclass
class PostgresServer:
    """A PostgreSQL server the tests may create databases on."""

    dsn: str  # a database on it to connect to for CREATE/DROP DATABASE
    origin: str

    def create_database(self) -> tuple[str, str]:
        """A new empty database; returns its name and DSN."""
        name = f"estop_{uuid4().hex[:12]}"
        with psycopg.connect(self.dsn, autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return name, make_conninfo(self.dsn, dbname=name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _server_bin_dir() -> Path:
    """The newest installed server's bin folder (Debian layout first, then PATH)."""
    def version(binary: str) -> int:
        name = Path(binary).parent.parent.name  # /usr/lib/postgresql/<version>/bin/postgres
        return int(name) if name.isdigit() else 0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=version)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path and (Path(on_path).parent / "postgres").exists():
        return Path(on_path).parent
    pytest.fail(
        "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/postgres or pg_ctl on "
        "PATH): install Debian's `postgresql` package (`make test` does) or set "
        f"{POSTGRES_DSN_ENV} to a server where this role may create databases"
    )


@dataclass
class _LocalCluster:
    bin_dir: Path
    root: Path
    as_user: list[str] = field(default_factory=list)  # runuser prefix when we are root
    port: int = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    def run(self, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.as_user, *args], cwd=self.root, capture_output=True, text=True,
                              timeout=timeout_s, check=False, stdin=subprocess.DEVNULL)

    def log_tail(self) -> str:
        log = self.root / "server.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else ""

    def initdb(self) -> None:
        done = self.run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres",
                        "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync")
        if done.returncode != 0:
            pytest.fail(f"initdb failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        """Start on a free port; a port taken in the meantime gets another try."""
        failure = ""
        for _ in range(3):
            self.port = free_port()
            options = (f"-c port={self.port} -c listen_addresses=127.0.0.1 "
                       f"-c unix_socket_directories={self.root} -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            done = self.run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l",
                            str(self.root / "server.log"), "-w", "-t", "60", "-o", options, "start")
            if done.returncode == 0:
                return
            failure = f"{done.stdout}\n{done.stderr}\n{self.log_tail()}"
        pytest.fail(f"could not start PostgreSQL from {self.bin_dir}:\n{failure}")

    def stop(self) -> None:
        self.run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")


def _start_local_cluster() -> tuple[_LocalCluster, str]:
    bin_dir = _server_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="estop-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the postgres user
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root and there is no `postgres` user to run PostgreSQL as")
        os.chown(root, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    cluster = _LocalCluster(bin_dir, root, as_user)
    cluster.initdb()
    cluster.start()
    admin_dsn = f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(admin_dsn, autocommit=True) as db:
                db.execute("CREATE DATABASE estop")
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return cluster, f"postgresql://postgres@127.0.0.1:{cluster.port}/estop"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (the user's, or a throwaway local cluster)."""
    given = os.environ.get(POSTGRES_DSN_ENV)
    if given:
        yield PostgresServer(given, POSTGRES_DSN_ENV)
        return
    cluster, dsn = _start_local_cluster()
    try:
        yield PostgresServer(dsn, f"local cluster from {cluster.bin_dir} on port {cluster.port}")
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def postgres_dsn(postgres: PostgresServer) -> Iterator[str]:
    """DSN of a database created for this test alone, dropped afterwards."""
    name, dsn = postgres.create_database()
    try:
        yield dsn
    finally:
        postgres.drop_database(name)


@dataclass
class StoreLocation:
    """Where one test's store lives, so a test can open it again or prepare it by hand."""

    kind: str
    target: str  # SQLite file path or PostgreSQL DSN
    opened: list[OutcomeStore] = field(default_factory=list)

    def open(self) -> OutcomeStore:
        store: OutcomeStore = (SQLiteStore(Path(self.target)) if self.kind == "sqlite"
                               else PostgresStore(self.target))
        self.opened.append(store)
        return store

    def execute(self, *statements: str) -> None:
        """Run raw SQL on the store's database, outside the store."""
        if self.kind == "sqlite":
            import sqlite3

            Path(self.target).parent.mkdir(parents=True, exist_ok=True)
            with sqlite3.connect(self.target) as db:
                for statement in statements:
                    db.execute(statement)
            return
        with psycopg.connect(self.target, autocommit=True) as db:
            for statement in statements:
                db.execute(statement)


@pytest.fixture(params=STORES)
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreLocation]:
    """A fresh, empty place for a store of each engine: the same test runs on both."""
    if request.param == "sqlite":
        location = StoreLocation("sqlite", str(tmp_path / "analytics" / "analytics.sqlite"))
    else:
        location = StoreLocation("postgresql", request.getfixturevalue("postgres_dsn"))
    try:
        yield location
    finally:
        for store in location.opened:
            store.close()


@pytest.fixture
def store(store_location: StoreLocation) -> OutcomeStore:
    """An OutcomeStore (SQLiteStore or PostgresStore) on an empty database."""
    return store_location.open()

