"""The pauses in force, in memory: runs paused by ``pause {run_id}`` and paused workflows.

A mirror of what storage holds (each run's ``paused`` flag and ``paused`` status, the
``paused_workflows`` table): the engine changes storage first, then this; at start it is
rebuilt from storage before any run moves. The supervisor consults it before it moves a run
(a paused run gets no actor; the resolutions that reach it are kept here, in arrival order,
and handed over at resume), the runtime's step gate before each new step of a running run, and
admission before it starts a pending run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from orchestrator.engine.messages import Message
from storage.records import RunRecord, RunStatus

PAUSED = "paused"
PAUSED_WORKFLOW = "paused_workflow"


class Holds:
    def __init__(self) -> None:
        self._runs: dict[str, list[Message]] = {}
        self.workflows: set[str] = set()
        # Runs whose pause or resume this daemon is committing: memory and storage disagree
        # until it is done, which the cluster's move pass must not take for another
        # daemon's doing.
        self._changing: dict[str, int] = {}

    # ------------------------------------------------------------------ runs

    def is_paused(self, run_id: str) -> bool:
        return run_id in self._runs

    def pause(self, run_id: str) -> None:
        self._runs.setdefault(run_id, [])

    def resume(self, run_id: str) -> list[Message] | None:
        """Lift the run's pause; the messages kept for it (None if it was not paused)."""
        return self._runs.pop(run_id, None)

    def keep(self, run_id: str, message: Message) -> bool:
        """Keep ``message`` for the paused run's resume; False if the run is not paused."""
        kept = self._runs.get(run_id)
        if kept is None:
            return False
        kept.append(message)
        return True

    def runs(self) -> list[str]:
        """The runs paused here."""
        return list(self._runs)

    @contextlib.contextmanager
    def changing(self, run_id: str) -> Iterator[None]:
        """Around this daemon's commit of a pause or a resume of ``run_id``."""
        self._changing[run_id] = self._changing.get(run_id, 0) + 1
        try:
            yield
        finally:
            left = self._changing.pop(run_id) - 1
            if left:
                self._changing[run_id] = left

    def is_changing(self, run_id: str) -> bool:
        return run_id in self._changing

    def forget(self, run_id: str) -> None:
        """The run ended: nothing is kept for it any more."""
        self._runs.pop(run_id, None)

    @property
    def paused_runs(self) -> int:
        return len(self._runs)

    # ------------------------------------------------------------------ starts

    def blocks_start(self, run: RunRecord) -> str | None:
        """Why the pending ``run`` may not start now (``paused`` or ``paused_workflow``), or
        None. A run already past its start is never held by its workflow's pause."""
        if run.status is not RunStatus.PENDING:
            return None
        if run.run_id in self._runs:
            return PAUSED
        if run.workflow_id in self.workflows:
            return PAUSED_WORKFLOW
        return None
