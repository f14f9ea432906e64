"""Child process of the crash test: many concurrent writers, print each id once acknowledged."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import storage as st


async def main(path: str, writers: int) -> None:
    async with st.SQLiteStorage.open(path, synchronous="full") as s:
        await s.commit([st.CreateRun(f"r{w}", "crash", 1.0) for w in range(writers)])
        out = sys.stdout

        async def writer(w: int) -> None:
            i = 0
            while True:
                step_id = f"s{i}"
                await s.execute(st.RecordStepAttempt(f"r{w}", step_id, 1, st.StepStatus.COMPLETED,
                                                     position=i, output=i))
                out.write(f"r{w} {step_id}\n")
                out.flush()
                i += 1

        await asyncio.gather(*(writer(w) for w in range(writers)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
