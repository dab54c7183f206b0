"""When a slot's process is due for replacement or a health check.

An :class:`Upkeep` owns the schedule of one process: how many prompts it served against
``max_prompts``, when it reaches ``max_age``, when it is next probed. Both spread by
``recycle_jitter``, so that instances started together are not all replaced at once. It also
keeps what was asked of the slot from outside: a restart, or retirement. The slot asks it
between prompts, and its fast paths ask :meth:`Upkeep.due` before they write: a process due
for anything is left to the slot's task.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from .._base.spec import ToolSpec

__all__ = ["Upkeep"]


@attrs.define(eq=False)
class Upkeep:
    """The recycling and probe schedule of the slot's current process."""

    spec: ToolSpec
    clock: Callable[[], float]
    #: Prompts written to this process (probes not counted).
    served: int = attrs.field(init=False, default=0)
    #: Asked to take no new work and stop once idle (:meth:`retire`); for good.
    retiring: bool = attrs.field(init=False, default=False)
    # Asked to restart once idle, until the slot takes the request (take_restart_request).
    _restart_requested: bool = attrs.field(init=False, default=False)
    #: When an idle slot must wake without work, to probe or recycle (inf: never). Set here
    #: only, with the two times it is the earlier of: the fast paths read it on every prompt.
    wake_at: float = attrs.field(init=False, default=math.inf)
    # Prompts this process serves before it is recycled (inf: no limit): a number to compare
    # with, for the same reason.
    _recycle_limit: float = attrs.field(init=False, default=math.inf)
    _recycle_at: float = attrs.field(init=False, default=math.inf)
    _next_probe_at: float = attrs.field(init=False, default=math.inf)

    def start(self, *, recycle: bool = True, rng: random.Random | None = None) -> None:
        """A process starts: count from zero. Without *recycle* (a one-shot tool's slot,
        which keeps no process) only probes are scheduled."""
        spec, now = self.spec, self.clock()
        self.served = 0
        self._recycle_limit, self._recycle_at = math.inf, math.inf
        if recycle:
            rng = rng or random.Random()
            spread = spec.recycle_jitter
            if spec.max_prompts is not None:
                jittered = spec.max_prompts * rng.uniform(1 - spread, 1 + spread)
                self._recycle_limit = max(1, round(jittered))
            if spec.max_age is not None:
                self._recycle_at = now + spec.max_age * rng.uniform(1 - spread, 1 + spread)
        self.idle_from_now()

    @property
    def recycle_after(self) -> int | None:
        """How many prompts this process serves before it is recycled (jittered)."""
        return None if self._recycle_limit == math.inf else int(self._recycle_limit)

    def count(self, prompts: int) -> None:
        self.served += prompts

    def idle_from_now(self) -> None:
        """The process is idle from now on: its next probe is an interval away."""
        probe = self.spec.probe
        self._next_probe_at = math.inf if probe is None else self.clock() + probe.interval
        self.wake_at = min(self._next_probe_at, self._recycle_at)

    def retire(self) -> None:
        self.retiring = True

    def request_restart(self) -> None:
        self._restart_requested = True

    def take_restart_request(self) -> bool:
        """Whether a restart was asked for; the request is the caller's from now on."""
        requested, self._restart_requested = self._restart_requested, False
        return requested

    def due(self) -> bool:
        """Whether the slot's task has something to do before the next prompt: act on a
        request, replace the process, or probe it."""
        # Asked twice per prompt: four comparisons when nothing is scheduled or asked for.
        return (
            self.retiring
            or self._restart_requested
            or self.served >= self._recycle_limit
            or (self.wake_at != math.inf and self.clock() >= self.wake_at)
        )

    def recycle_reason(self) -> str | None:
        """``"max_prompts"`` or ``"max_age"`` if the process is due to be replaced."""
        if self.served >= self._recycle_limit:
            return "max_prompts"
        if self.clock() >= self._recycle_at:
            return "max_age"
        return None

    def probe_due(self) -> bool:
        return self.clock() >= self._next_probe_at
