"""Retry policies and the delay before the next attempt of a failed step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from runtime import durations, errors

Backoff = Literal["exponential", "linear", "fixed"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max`` counts attempts, the first included: ``max=3`` calls the step at most three times."""

    max: int = 1
    backoff: Backoff = "exponential"
    initial: durations.Duration = "1s"
    max_delay: durations.Duration = "60s"

    def __post_init__(self) -> None:
        if not isinstance(self.max, int) or isinstance(self.max, bool) or self.max < 1:
            raise ValueError(f"RetryPolicy.max must be an int >= 1, got {self.max!r}")
        if self.backoff not in ("exponential", "linear", "fixed"):
            raise ValueError(
                f"RetryPolicy.backoff must be 'exponential', 'linear' or 'fixed', "
                f"got {self.backoff!r}"
            )
        durations.to_seconds(self.initial)
        durations.to_seconds(self.max_delay)

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based), capped."""
        initial = durations.to_seconds(self.initial)
        if self.backoff == "exponential":
            delay = initial * (2 ** (attempt - 1))
        elif self.backoff == "linear":
            delay = initial * attempt
        else:
            delay = initial
        return float(min(delay, durations.to_seconds(self.max_delay)))


DEFAULT_POLICY = RetryPolicy()

# Codes that describe the engine refusing the step itself; another attempt cannot help.
_NEVER_RETRIED = frozenset(
    {"NOT_SERIALIZABLE", "PAYLOAD_TOO_LARGE", "PROCESS_RUNTIME_UNAVAILABLE", "INVALID_STEP"}
)


def next_delay(policy: RetryPolicy, attempt: int, err: BaseException) -> float | None:
    """Seconds before the next attempt, or ``None`` when ``err`` ends the step for good."""
    if isinstance(err, errors.FatalError):
        return None
    if isinstance(err, errors.WorkflowError) and err.code in _NEVER_RETRIED:
        return None
    if attempt >= policy.max:
        return None
    if isinstance(err, errors.RetryableError) and err.retry_after is not None:
        return durations.to_seconds(err.retry_after)
    return policy.delay_after(attempt)
