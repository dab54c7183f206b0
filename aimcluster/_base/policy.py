"""When and how fast a crashed instance is restarted."""

from __future__ import annotations

import random
from collections import deque
from typing import Any

import attrs

__all__ = ["RestartBudget", "RestartPolicy"]


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class RestartPolicy:
    """Exponential backoff with jitter and a sliding-window restart budget per instance.

    An instance may restart at most ``max_restarts`` times within ``window`` seconds (Erlang's
    restart intensity). When the budget is spent the instance becomes ``failed`` and its traffic
    moves to the healthy instances; with ``quarantine`` set it is tried again after that many
    seconds (circus' flapping handling), otherwise it stays failed.
    """

    #: Delay before the first restart, in seconds.
    initial_delay: float = attrs.field(default=0.05, validator=_non_negative)
    #: Each consecutive restart multiplies the delay by this.
    multiplier: float = attrs.field(default=2.0, validator=_non_negative)
    #: The cap on the delay.
    max_delay: float = attrs.field(default=5.0, validator=_non_negative)
    #: Random spread as a fraction of the delay (0.1 means +-10 %), so that instances that
    #: failed together do not restart in lockstep.
    jitter: float = attrs.field(default=0.1, validator=_non_negative)
    #: Restart budget: at most this many restarts ...
    max_restarts: int = attrs.field(default=5, validator=_non_negative)
    #: ... within this many seconds.
    window: float = attrs.field(default=60.0, validator=_non_negative)
    #: Seconds after which a failed instance is given a fresh budget (``None``: never).
    quarantine: float | None = attrs.field(default=None, validator=_non_negative)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The backoff before restart number *attempt* (1-based) of one failure streak."""
        try:
            base = min(self.max_delay, self.initial_delay * self.multiplier ** max(0, attempt - 1))
        except OverflowError:  # a long streak with a big multiplier: long past the cap
            base = self.max_delay
        if not self.jitter:
            return base
        spread = base * self.jitter
        return max(0.0, base + (rng or random).uniform(-spread, spread))


@attrs.define
class RestartBudget:
    """The sliding window of one instance's recent restarts."""

    policy: RestartPolicy
    _times: deque[float] = attrs.field(init=False, factory=deque)

    def try_spend(self, now: float) -> bool:
        """Record a restart at *now* if the budget allows it; return whether it did."""
        horizon = now - self.policy.window
        while self._times and self._times[0] <= horizon:
            self._times.popleft()
        if len(self._times) >= self.policy.max_restarts:
            return False
        self._times.append(now)
        return True

    def reset(self) -> None:
        self._times.clear()

    @property
    def streak(self) -> int:
        """Restarts still inside the window: the attempt number for the backoff."""
        return len(self._times)
