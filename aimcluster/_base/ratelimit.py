"""A cluster-wide pause after the provider rate-limited a prompt, with jittered backoff."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import anyio
import attrs

__all__ = ["RateLimiter"]


@attrs.define(eq=False)
class RateLimiter:
    """Shared by every instance of a cluster: once one of them sees a rate limit, none writes
    a prompt until the pause is over.

    Pauses grow exponentially with consecutive rate limits (``base * 2**streak``, at most
    ``cap``) and are jittered (50 to 100 % of that), so that clusters sharing a provider do not
    come back in step. Rate limits seen during a pause (other instances' prompts that were
    already in flight) do not make it longer.
    """

    #: The event loop's clock (:meth:`wait` sleeps on it).
    clock: Callable[[], float] = anyio.current_time
    #: The source of the jitter.
    rng: random.Random = attrs.field(factory=random.Random)
    #: Rate limits seen in a row, without a successful reply in between.
    streak: int = attrs.field(init=False, default=0)
    _resume_at: float = attrs.field(init=False, default=-math.inf)

    @property
    def paused(self) -> bool:
        """Whether prompts are held back now."""
        if self._resume_at == -math.inf:
            return False  # the usual case, asked about every prompt: no clock to read
        if self.clock() < self._resume_at:
            return True
        self._resume_at = -math.inf
        return False

    def pause(self, *, base: float, cap: float) -> float:
        """Start a pause (or keep the current one); return the seconds left of it."""
        now = self.clock()
        if now < self._resume_at:
            return self._resume_at - now
        delay = min(cap, base * 2.0**self.streak) * self.rng.uniform(0.5, 1.0)
        self.streak += 1
        self._resume_at = now + delay
        return delay

    def succeeded(self) -> None:
        """A reply came through: the next rate limit starts from the shortest pause again."""
        self.streak = 0

    async def wait(self) -> None:
        """Return once no pause is in force (at once if none is)."""
        # One sleep is enough: pause() never moves the end of a pause in force.
        if self.clock() < self._resume_at:
            await anyio.sleep_until(self._resume_at)
