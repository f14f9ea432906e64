"""Golden journals: runtime journal entries as JSON files in tests/data/journals/."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from runtime import journal as rj
from runtime.status import ResolutionSource, WaitpointKind

DIR = Path(__file__).resolve().parents[1] / "data" / "journals"
_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (rj.StepAttempt, rj.WaitpointRegistered, rj.WaitpointResolved, rj.MetadataOp,
                rj.StreamChunk, rj.CompensationRan)
}


def dump(entries: list[rj.Entry]) -> str:
    rows = [{"type": type(e).__name__, **dataclasses.asdict(e)} for e in entries]
    return json.dumps(rows, indent=1, sort_keys=True) + "\n"


def load(name: str) -> list[rj.Entry]:
    out: list[rj.Entry] = []
    for row in json.loads((DIR / name).read_text()):
        cls = _TYPES[row.pop("type")]
        if "kind" in row:
            row["kind"] = WaitpointKind(row["kind"])
        if cls is rj.WaitpointResolved:
            row["source"] = ResolutionSource(row["source"])
        out.append(cls(**row))
    return out
