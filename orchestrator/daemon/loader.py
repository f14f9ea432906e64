"""Importing the workflow modules named in the config."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path


class WorkflowImportError(RuntimeError):
    def __init__(self, module: str, cause: BaseException) -> None:
        super().__init__(f"cannot import workflow module {module!r}: {cause}")
        self.module = module


def import_workflow_modules(paths: Sequence[Path], modules: Sequence[str]) -> None:
    """Put every path on ``sys.path``, then import every module once (registering workflows).

    A workflow id registered twice raises ``ValueError`` naming both places (from the registry).
    """
    for path in paths:
        entry = str(path)
        if entry not in sys.path:
            sys.path.insert(0, entry)
    for module in modules:
        try:
            importlib.import_module(module)
        except ValueError:
            raise
        except Exception as exc:
            raise WorkflowImportError(module, exc) from exc
