"""What the engine is told about itself: limits and budgets, not where things live.

The engine never reads the config file or opens anything; the composition root builds these
settings from ``config.toml`` (:meth:`Settings.from_config`) or an embedder builds them by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.config import Config
from orchestrator.engine.retention import RetentionPolicy
from runtime.facts import Limits


@dataclass(frozen=True, slots=True)
class Settings:
    max_active_runs: int = 1000
    warm_runs: int = 10000
    shutdown_grace: float = 10.0
    max_recoveries: int = 5
    max_payload_bytes: int = 2_097_152
    max_journal_entries: int = 100_000
    deadlock_timeout: float = 2.0
    # Many daemons: seconds between the cluster loop's polls (None: min(1 s, lease/3)).
    cluster_poll: float | None = None
    # Embedders and tests keep everything unless they say otherwise; the daemon passes the
    # config's [retention] ages (SPEC defaults 30d/90d/7d).
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        return cls(
            max_active_runs=config.daemon.max_active_runs,
            warm_runs=config.daemon.warm_runs,
            shutdown_grace=config.daemon.shutdown_grace,
            max_recoveries=config.daemon.max_recoveries,
            max_payload_bytes=config.limits.max_payload_bytes,
            max_journal_entries=config.limits.max_journal_entries,
            deadlock_timeout=config.runtime.deadlock_timeout,
            cluster_poll=config.daemon.poll,
            retention=RetentionPolicy(
                completed=config.retention.completed,
                failed=config.retention.failed,
                cancelled=config.retention.cancelled,
                events=config.retention.events,
            ),
        )

    @property
    def limits(self) -> Limits:
        """The limits every execution runs under."""
        return Limits(self.max_payload_bytes, self.max_journal_entries, self.deadlock_timeout)
