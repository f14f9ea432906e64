"""The HTTP wing (SPEC §12): dashboard, JSON API, health and metrics, served by the daemon.

Imports ``orchestrator.api`` only (the engine is reached through the ``Service`` protocol);
``create_app`` builds an ASGI app that an embedding application may mount.
"""
