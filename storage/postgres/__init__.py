"""The PostgreSQL backend of ``storage.Storage`` (needs the ``postgres`` extra: asyncpg)."""

from __future__ import annotations

from storage.postgres.storage import PostgresStorage

__all__ = ["PostgresStorage"]
