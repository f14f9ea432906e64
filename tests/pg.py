"""A private throwaway PostgreSQL cluster for the tests (the recipe of reviews/scaleout.md §4).

``initdb``/``pg_ctl`` refuse to run as root, so under root the server runs as the ``postgres``
user (Debian's package creates it). The cluster listens on a unix socket only, in a short temp
dir under /tmp, so parallel sessions never clash on a port. One migrated template database is
made per session; each test gets ``CREATE DATABASE ... TEMPLATE`` of it (about 0.1 s).

Without the server binaries the PostgreSQL tests skip with the reason, except under CI (env
``CI`` set), where a missing server is a failure: ``.ci/system-deps`` installs it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

TEMPLATE = "wf_template"
T = TypeVar("T")


def _bindir() -> Path | None:
    env = os.environ.get("WF_PG_BINDIR")
    if env:
        return Path(env)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


@dataclass
class Cluster:
    socket_dir: str
    port: int
    user: str
    _names: Iterator[int]
    _ctl: list[str] = field(default_factory=list)  # pg_ctl -D <data> -l <log>, as its user

    def url(self, dbname: str) -> str:
        return f"postgresql://{self.user}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def next_name(self) -> str:
        return f"t{os.getpid()}_{next(self._names)}"

    def restart(self, mode: str = "immediate") -> None:
        """``pg_ctl restart -m mode``: ``immediate`` is a crash of the server (no checkpoint,
        every session cut; the restart replays the WAL). The same options as the first start."""
        subprocess.run([*self._ctl, "-m", mode, "-w", "-t", "60", "restart"], check=True,
                       capture_output=True, timeout=90)


def start_cluster() -> Iterator[Cluster]:
    bindir = _bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        unavailable("no PostgreSQL server binaries (initdb, pg_ctl); install the Debian "
                    "package postgresql or set WF_PG_BINDIR")
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        unavailable("asyncpg is not installed (pip install -e '.[postgres]')")
    assert bindir is not None
    prefix: list[str] = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root and there is no 'postgres' user to run the server as")
        prefix = ["runuser", "-u", "postgres", "--"]
    tmp = tempfile.mkdtemp(prefix="wfpg.", dir="/tmp")
    if prefix:
        shutil.chown(tmp, "postgres", "postgres")
    data = f"{tmp}/data"
    port = 5432  # with no TCP listener the port only names the socket file in `tmp`

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=60)

    try:
        run(f"{bindir}/initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--locale=C", "--no-sync")
        run(f"{bindir}/pg_ctl", "-D", data, "-l", f"{tmp}/server.log", "-w", "-t", "30",
            "-o", f"-c listen_addresses='' -k {tmp} -p {port} -c fsync=off "
            "-c full_page_writes=off -c max_connections=200", "start")
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"starting PostgreSQL failed: {exc.stderr.decode()}") from exc
    cluster = Cluster(tmp, port, "postgres", itertools.count(),
                      [*prefix, f"{bindir}/pg_ctl", "-D", data, "-l", f"{tmp}/server.log"])
    try:
        run_sync(_make_template(cluster))
        yield cluster
    finally:
        subprocess.run([*prefix, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w",
                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to the end on a loop of its own, in a thread: callers may be inside a
    running loop (fixtures set up from async tests)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _make_template(cluster: Cluster) -> None:
    import asyncpg

    from storage.postgres import schema

    admin = await asyncpg.connect(cluster.url("postgres"))
    try:
        await admin.execute(f"CREATE DATABASE {TEMPLATE}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(cluster.url(TEMPLATE))
    try:
        await schema.migrate(conn, TEMPLATE)
    finally:
        await conn.close()


async def create_database(cluster: Cluster, *, migrated: bool = True) -> str:
    """A fresh database (a copy of the migrated template, or empty); returns its URL."""
    import asyncpg

    name = cluster.next_name()
    admin = await asyncpg.connect(cluster.url("postgres"))
    try:
        template = TEMPLATE if migrated else "template0"
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    finally:
        await admin.close()
    return cluster.url(name)


async def drop_database(cluster: Cluster, url: str) -> None:
    import asyncpg

    name = url.split("/")[3].split("?")[0]
    admin = await asyncpg.connect(cluster.url("postgres"))
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


async def fetch(url: str, sql: str, *args: Any) -> list[Any]:
    """Rows of one query on its own connection (what a test reads beside the daemons)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()
