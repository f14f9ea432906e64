"""Numbered schema migrations (``NNNN_name.sql``), applied by ``storage.sqlite.schema``."""

from __future__ import annotations
