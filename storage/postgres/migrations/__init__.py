"""Numbered PostgreSQL migrations (``NNNN_name.sql``), twins of ``storage/sqlite/migrations``."""

from __future__ import annotations
