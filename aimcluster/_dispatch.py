"""The queues between the router and the instances.

Each instance has a private queue (prompts routed to it by index: round-robin, sticky keys,
explicit ``instance=``) and all instances share one queue (late-bound prompts: ``least_busy``).
An idle instance parks on an event; a put wakes exactly the instance that can take the item, so
nothing polls and a burst of puts does not wake the whole pool.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

import anyio

from ._exceptions import ClusterClosedError

__all__ = ["Dispatcher", "Queued"]


class Queued(Protocol):
    """What the dispatcher needs of a queued item (a prompt or a lease)."""

    key: str | None
    target: int | None
    pinned: bool
    holds_slot: bool

    @property
    def live(self) -> bool: ...

    def resolve(self, result: BaseException) -> bool: ...


class Dispatcher:
    def __init__(self, size: int, *, max_pending: int) -> None:
        self._shared: deque[Queued] = deque()
        self._private: list[deque[Queued]] = [deque() for _ in range(size)]
        self._idle: dict[int, anyio.Event] = {}
        self._interrupted: set[int] = set()
        self._slots = anyio.Semaphore(max_pending)
        self._closed = False

    # -- producers ------------------------------------------------------------------------

    async def put(self, item: Queued) -> None:
        """Queue *item*, waiting while ``max_pending`` items are already queued."""
        if self._closed:
            raise ClusterClosedError("the cluster is shut down")
        try:
            self._slots.acquire_nowait()  # the usual case: no event-loop pass on the hot path
        except anyio.WouldBlock:
            await self._slots.acquire()
        if self._closed:
            self._slots.release()
            raise ClusterClosedError("the cluster is shut down")
        item.holds_slot = True
        self.put_nowait(item)

    def put_nowait(self, item: Queued) -> None:
        """Queue *item* without taking a slot: for requeues, which must never block a worker."""
        if self._closed:
            # A worker requeueing during shutdown: nobody would ever take it.
            self._release(item)
            item.resolve(ClusterClosedError("the cluster was shut down before the prompt was sent"))
            return
        if item.target is None:
            self._shared.append(item)
            self._wake_any()
        else:
            self._private[item.target].append(item)
            event = self._idle.pop(item.target, None)
            if event is not None:
                event.set()

    # -- consumers ------------------------------------------------------------------------

    async def get(self, index: int) -> Queued | None:
        """The next live item for instance *index*: its own queue first, then the shared one.

        Returns ``None`` if :meth:`interrupt` was called for *index* (before or during the
        wait): cheaper on the hot path than a cancel scope around every wait.
        """
        while True:
            if self._interrupted and index in self._interrupted:
                self._interrupted.discard(index)
                return None
            item = self._pop(self._private[index]) or self._pop(self._shared)
            if item is not None:
                return item
            event = anyio.Event()
            self._idle[index] = event
            try:
                await event.wait()
            except BaseException:
                if self._idle.get(index) is event:
                    del self._idle[index]
                elif self._shared:
                    # We were woken for a shared item but are leaving (cancelled): pass it on.
                    self._wake_any()
                raise

    def interrupt(self, index: int) -> None:
        """Make instance *index*'s current or next :meth:`get` return ``None``."""
        self._interrupted.add(index)
        event = self._idle.pop(index, None)
        if event is not None:
            event.set()

    def _pop(self, queue: deque[Queued]) -> Queued | None:
        while queue:
            item = queue.popleft()
            self._release(item)
            if item.live:
                return item
        return None

    def _release(self, item: Queued) -> None:
        if item.holds_slot:
            item.holds_slot = False
            self._slots.release()

    def _wake_any(self) -> None:
        for index, event in self._idle.items():
            del self._idle[index]
            event.set()
            return

    # -- re-routing and shutdown ----------------------------------------------------------

    def take_private(self, index: int) -> list[Queued]:
        """Remove and return everything queued for instance *index* (it failed for good)."""
        return self._drain(self._private[index])

    def add_slot(self) -> int:
        self._private.append(deque())
        return len(self._private) - 1

    def remove_slots(self, keep: int) -> None:
        """Forget the queues of slots ``keep`` and above (already emptied with take_private)."""
        for queue in self._private[keep:]:
            assert not any(item.live for item in queue)
        del self._private[keep:]

    def queued(self, index: int | None = None) -> int:
        """Items waiting (for instance *index*, or in the shared queue)."""
        queue = self._shared if index is None else self._private[index]
        return sum(1 for item in queue if item.live)

    def fail_shared(self, error: BaseException) -> None:
        for item in self._drain(self._shared):
            item.resolve(error)

    def close(self) -> None:
        """Refuse new items and fail every queued one with ClusterClosedError."""
        self._closed = True
        error = ClusterClosedError("the cluster was shut down before the prompt was sent")
        for queue in (self._shared, *self._private):
            for item in self._drain(queue):
                item.resolve(error)

    def _drain(self, queue: deque[Queued]) -> list[Queued]:
        items = list(queue)
        queue.clear()
        for item in items:
            self._release(item)
        return items
