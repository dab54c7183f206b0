"""Signals (Ctrl-C, SIGTERM, SIGHUP) turned into a graceful stop of a run.

The first starts no new job and gives those in flight the grace period; the second cancels
them at once; a third, or any before the run has started, abandons it (the start-up is
cancelled).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import anyio
import attrs
from anyio.abc import TaskStatus

__all__ = ["Stopper"]


class _Stoppable(Protocol):
    """A run of jobs: :class:`aimcluster.JobRun` or :class:`aimcluster.CompareRun`."""

    @property
    def active(self) -> Mapping[int, Any]: ...

    def stop(self, grace: float | None = None) -> None: ...


def _quiet(message: str) -> None:
    pass


@attrs.define(eq=False)
class Stopper:
    """Turns signals into a graceful stop of :attr:`run` (or of the start-up before it)."""

    grace: float
    #: Tells the user what a signal did.
    notice: Callable[[str], None] = _quiet
    #: Cancelled by a signal before the run started, or by a third one.
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    run: _Stoppable | None = None
    #: The first signal received (the exit code is 128 + it).
    signum: int | None = None
    received: int = 0

    def on_signal(self, signum: int) -> None:
        self.received += 1
        if self.signum is None:
            self.signum = signum
        name = signal.Signals(signum).name
        if self.run is None:
            self.scope.cancel()
        elif self.received == 1:
            self.run.stop(self.grace)
            self.notice(
                f"{name}: starting no new jobs; waiting up to {self.grace:g} s for the "
                f"{len(self.run.active)} in flight (Ctrl-C again to cancel them now)"
            )
        elif self.received == 2:
            self.run.stop(0)
            self.notice(f"{name} again: cancelling the jobs in flight")
        else:
            self.scope.cancel()

    async def watch(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Receive the signals until cancelled; started once they are caught."""
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                self.on_signal(signum)
