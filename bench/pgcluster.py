"""A throwaway PostgreSQL cluster for the W7 benchmark (the recipe of tests/pg.py, durable).

Like the tests' cluster (``initdb`` + ``pg_ctl`` as the ``postgres`` user when run as root, a
unix socket in a short temp dir under /tmp, no TCP listener), but with PostgreSQL's durable
defaults left on (``fsync``, ``synchronous_commit``, ``full_page_writes``): the benchmark
compares commit rates, so every COMMIT waits for its WAL flush as in production.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Cluster:
    socket_dir: str
    port: int
    user: str
    version: str

    def url(self, dbname: str) -> str:
        return f"postgresql://{self.user}@/{dbname}?host={self.socket_dir}&port={self.port}"


def bindir() -> Path | None:
    env = os.environ.get("WF_PG_BINDIR")
    if env:
        return Path(env)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


@contextlib.contextmanager
def cluster(shared_buffers: str = "256MB") -> Iterator[Cluster]:
    """Start a private cluster; stop it and delete its files on exit."""
    bins = bindir()
    if bins is None or not (bins / "pg_ctl").exists():
        raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl): install Debian's "
                           "postgresql package or set WF_PG_BINDIR")
    prefix: list[str] = []
    if os.geteuid() == 0:
        pwd.getpwnam("postgres")  # KeyError: no user to run the server as
        prefix = ["runuser", "-u", "postgres", "--"]
    tmp = tempfile.mkdtemp(prefix="wfpgb.", dir="/tmp")
    if prefix:
        shutil.chown(tmp, "postgres", "postgres")
    data, port = f"{tmp}/data", 5432

    def run(*args: str) -> str:
        done = subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)
        return done.stdout.decode()

    try:
        run(f"{bins}/initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--locale=C")
        run(f"{bins}/pg_ctl", "-D", data, "-l", f"{tmp}/server.log", "-w", "-t", "60",
            "-o", f"-c listen_addresses='' -k {tmp} -p {port} -c max_connections=200 "
            f"-c shared_buffers={shared_buffers}", "start")
        found = re.search(r"\(PostgreSQL\) (\S+)", run(f"{bins}/postgres", "--version"))
        version = found.group(1) if found else "?"
        yield Cluster(tmp, port, "postgres", version)
    finally:
        subprocess.run([*prefix, f"{bins}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


async def create_database(c: Cluster, name: str) -> str:
    import asyncpg

    admin = await asyncpg.connect(c.url("postgres"))
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    return c.url(name)
