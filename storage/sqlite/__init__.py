"""The SQLite backend of ``storage.Storage``."""

from __future__ import annotations

from storage.sqlite.storage import SQLiteStorage

__all__ = ["SQLiteStorage"]
