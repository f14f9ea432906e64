"""``wf migrate --to URL``: move a stopped daemon's SQLite database to PostgreSQL.

The file's lock (``<storage.path>.lock``) is taken first, so a running daemon is a refusal, not
a copy of a moving target. Afterwards set ``storage.url`` to the URL and start the daemon: the
runs continue where they stopped.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from orchestrator import config
from orchestrator.daemon.lockfile import DatabaseLock, DatabaseLocked

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_CONFIG = 2


def run_migrate(config_path: str | None, source: str | None, url: str) -> int:
    if not url.startswith(("postgresql://", "postgres://")):
        print(f"error: --to must be a postgresql:// URL, got {url!r}", file=sys.stderr)
        return EXIT_CONFIG
    if source is None:
        file = Path(config_path or "config.toml")
        try:
            cfg = (config.load_config(file) if file.exists() or config_path
                   else config.Config.default(Path.cwd()))
        except config.ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        path = cfg.storage.path
    else:
        path = Path(source).resolve()
    # Imported here: only this command needs the PostgreSQL driver.
    import storage
    from storage.postgres.copy import copy_sqlite_to_postgres
    from storage.postgres.storage import redact

    try:
        with DatabaseLock.acquire(path):
            counts = asyncio.run(copy_sqlite_to_postgres(path, url))
    except (DatabaseLocked, storage.StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    width = max(map(len, counts), default=5)
    for table, n in counts.items():
        print(f"{table:<{width}}  {n}")
    print(f"copied {sum(counts.values())} rows in {len(counts)} tables from {path} to "
          f"{redact(url)}; counts verified. Set storage.url to it and start the daemon.")
    return EXIT_OK
