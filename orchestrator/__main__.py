"""``python -m orchestrator ...`` is the ``wf`` command."""

from orchestrator.client.cli import main

main()
