"""Test instruments: hooks that the reliability campaign installs and production never does.

Modelled on trio's ``Instrument``: an object passed in (to the storage writer and to the engine)
whose hooks are called at named moments. The base class does nothing, so a hook costs one method
call when nothing is installed, and nothing test-only is read from the environment by product
code: a test launcher (``tests/harness/launch.py``) builds the instrument it needs and hands it to
the daemon's composition root.
"""

from __future__ import annotations


class Instrument:
    """Every hook does nothing; a test subclass overrides what it needs."""

    def reached(self, point: str) -> None:
        """Execution passed the named point (e.g. ``batch.executed``, ``step.returned``): the
        crash campaign kills the process at a chosen passage of a chosen point."""

    def fail_stop(self, error: BaseException) -> bool:
        """The storage writer met an I/O error: True stops every later write (SPEC §4). A
        mutant answers False to prove the campaign notices a writer that carries on."""
        return True


NO_INSTRUMENT = Instrument()
