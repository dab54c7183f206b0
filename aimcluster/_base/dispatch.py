"""The queues between the router and the instances.

Each instance has a private queue (prompts routed to it by index: round-robin, sticky keys,
explicit ``instance=``) and all instances share one queue (late-bound prompts: ``least_busy``).
An idle instance parks on an event; a put wakes exactly the instance that can take the item, so
nothing polls and a burst of puts does not wake the whole pool.

A producer finding ``max_pending`` items queued waits in line: waiters get room in the order they
came, and a slot freed is granted to one waiter (the slot passes to it, so a newcomer cannot take
it first) and wakes that waiter alone. Grants start once the queues have drained to a low-water
mark, so that a producer feeding thousands of prompts wakes once per batch of replies rather than
per reply; N waiters take N wake-ups in all, not one each per freed slot.

Two short cuts keep the event loop out of the way of a prompt. An idle instance may offer to
take an item on the spot: the put then hands it over already written to the tool, and the
instance's task wakes to wait for the reply. And an instance's reader, having just completed a
reply, may take the next item at the head of the queues (:meth:`peek`, :meth:`remove`) and write
it at once, without waking the instance's task in between.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

import anyio

from .errors import ClusterClosedError

__all__ = ["Dispatcher", "Offer", "Parking", "Queued"]


class Queued(Protocol):
    """What the dispatcher needs of a queued item (a prompt or a lease)."""

    key: str | None
    target: int | None
    pinned: bool
    holds_slot: bool

    @property
    def live(self) -> bool: ...

    def resolve(self, result: BaseException) -> bool: ...


#: Called by a put with an item for an idle instance: True if the instance took it, then and
#: there (it is in flight); False to queue it as usual.
Offer = Callable[[Queued], bool]


class _Idle:
    """An idle instance: its task waits in :meth:`Dispatcher.get`, or is *parked* elsewhere."""

    __slots__ = ("item", "offer", "parked", "wake")

    def __init__(self, offer: Offer | None, wake: Callable[[], None], *, parked: bool) -> None:
        self.offer = offer
        self.wake = wake
        self.parked = parked
        self.item: Queued | None = None  # what an offer took for get()


class Parking(_Idle):
    """What :meth:`Dispatcher.park` records for an instance whose task waits elsewhere: made
    once by the instance and handed in at every park, as nothing changes it (a reader parks
    its instance after most replies)."""

    __slots__ = ()

    def __init__(self, offer: Offer, wake: Callable[[], None]) -> None:
        super().__init__(offer, wake, parked=True)


class _Producer:
    """A producer waiting in :meth:`Dispatcher.put` for room in the queues."""

    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        # None while it waits in line; True once a slot was granted to it (it holds the slot);
        # False if it left the line without one (cancelled, or the dispatcher closed).
        self.granted: bool | None = None


class Dispatcher:
    def __init__(self, size: int, *, max_pending: int) -> None:
        self._shared: deque[Queued] = deque()
        self._private: list[deque[Queued]] = [deque() for _ in range(size)]
        self._idle: dict[int, _Idle] = {}
        self._interrupted: set[int] = set()
        # Slots held: by queued items, and by producers granted one that have yet to queue.
        self._pending = 0
        self._max_pending = max_pending
        self._low_water = max_pending - max(1, max_pending // 8)
        # Producers waiting for a slot, in arrival order. Those that left the line (cancelled)
        # stay in it until they reach its head: removing one from the middle would cost O(N).
        self._producers: deque[_Producer] = deque()
        self._waiting = 0  # producers in the line that still wait
        self._closed = False

    # -- producers ------------------------------------------------------------------------

    async def put(self, item: Queued) -> bool:
        """Queue *item*, waiting while ``max_pending`` items are already queued; return
        whether it waited (then where it was routed may have gone meanwhile).

        Producers that wait get room in the order they came.
        """
        if self.has_room:
            # The usual case: no pass of the event loop on the hot path.
            self.put_nowait(item)
            return False
        if self._closed:
            raise ClusterClosedError("the cluster is shut down")
        await self._wait_for_slot()
        if self._closed:
            self._pending -= 1
            raise ClusterClosedError("the cluster is shut down")
        item.holds_slot = True
        if item.target is not None and item.target >= len(self._private):
            # Its instance was scaled away while we waited for room.
            if item.pinned:
                self._release(item)
                raise ValueError(
                    f"instance must be in range(0, {len(self._private)}), got {item.target}"
                )
            item.target = None
        self.put_nowait(item)
        return True

    @property
    def has_room(self) -> bool:
        """Whether :meth:`put` would queue an item at once: open, fewer than ``max_pending``
        items queued, and no producer waiting (they get room in the order they came). Then
        :meth:`put_nowait` does the same as :meth:`put`, without a coroutine."""
        return not self._closed and not self._waiting and self._pending < self._max_pending

    async def _wait_for_slot(self) -> None:
        """Wait in line until a slot is granted to us; on return we hold it."""
        producer = _Producer()
        self._producers.append(producer)
        self._waiting += 1
        try:
            await producer.event.wait()
        except BaseException:
            if producer.granted:
                # Granted, then cancelled before it could use the slot (anyio lets a task that
                # was woken run to its next checkpoint, but a plain asyncio cancel does not):
                # the slot goes to the next in line at once, or nobody may ever wake it.
                self._pending -= 1
                self._grant()
            elif producer.granted is None:
                producer.granted = False
                self._waiting -= 1
                if not self._waiting:
                    self._producers.clear()  # only those that left: none to skip later
            raise
        if not producer.granted:
            raise ClusterClosedError("the cluster is shut down")

    def put_nowait(self, item: Queued) -> None:
        """Queue *item* without waiting: for requeues and moves, which must never block a
        worker. Unless an idle instance takes it at once, it takes a slot all the same (past
        ``max_pending`` if need be), so that the queue's count stays true and producers wait
        for it."""
        if self._closed:
            # A worker requeueing during shutdown: nobody would ever take it.
            self._release(item)
            item.resolve(ClusterClosedError("the cluster was shut down before the prompt was sent"))
            return
        # An offer only where nothing is queued ahead of the item: it must not jump the queue.
        if item.target is None:
            index = None if self._shared else next(iter(self._idle), None)
        else:
            index = item.target
            if index not in self._idle or self._private[index]:
                index = None
        if index is not None:
            idle = self._idle[index]
            if idle.offer is not None and idle.offer(item):
                # Taken at once: it never waits in a queue, so it needs no slot (one it holds,
                # from a wait in put(), is freed).
                del self._idle[index]
                if item.holds_slot:
                    self._release(item)
                if not idle.parked:  # a parked task waits for the reply as it is
                    idle.item = item
                    idle.wake()
                return
        if not item.holds_slot:
            item.holds_slot = True
            self._pending += 1
        if item.target is None:
            self._shared.append(item)
            self._wake_any()
        else:
            self._private[item.target].append(item)
            waiter = self._idle.pop(item.target, None)
            if waiter is not None:
                waiter.wake()

    # -- consumers ------------------------------------------------------------------------

    async def get(self, index: int, *, offer: Offer | None = None) -> Queued | None:
        """The next live item for instance *index*: its own queue first, then the shared one.

        While it waits, a put may hand an item to *offer*; one it took is returned.
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
            idle = self._idle[index] = _Idle(offer, event.set, parked=False)
            try:
                await event.wait()
            except BaseException:
                if self._idle.get(index) is idle:
                    del self._idle[index]
                elif idle.item is not None:
                    pass  # the offer took it: it is in flight, the instance's to finish
                elif self._shared:
                    # We were woken for a shared item but are leaving (cancelled): pass it on.
                    self._wake_any()
                raise
            if idle.item is not None:
                return idle.item

    def park(self, index: int, parking: Parking, *, peeked: bool = False) -> bool:
        """Count instance *index* as idle while its task waits elsewhere: a put offers it the
        item (``parking.offer``), then calls ``parking.wake`` if it did not take it. Refused
        (False) if an item or an interrupt is waiting for it already (*peeked*: the caller
        has just found that :meth:`peek` returns ``None``, with nothing run since)."""
        if not peeked and self.peek(index) is not None:
            return False
        if index in self._interrupted:
            return False
        assert index not in self._idle
        self._idle[index] = parking
        return True

    def unpark(self, index: int) -> None:
        """Undo :meth:`park` (if still in force): the task is about to look for itself."""
        idle = self._idle.get(index)
        if idle is not None and idle.parked:
            del self._idle[index]

    def peek(self, index: int) -> Queued | None:
        """The item :meth:`get` would return for *index* now, left where it is; ``None`` if
        there is none or an interrupt is pending."""
        if self._interrupted and index in self._interrupted:
            return None
        private, shared = self._private[index], self._shared
        if not private and not shared:
            return None  # the usual case, as a reader carries on after a reply
        return self._head(private) or self._head(shared)

    def remove(self, index: int, item: Queued) -> None:
        """Take *item*, which :meth:`peek` has just returned for *index*, off its queue."""
        queue = self._private[index]
        if not queue or queue[0] is not item:
            queue = self._shared
        assert queue[0] is item
        queue.popleft()
        self._release(item)

    def interrupt(self, index: int) -> None:
        """Make instance *index*'s current or next :meth:`get` return ``None``."""
        self._interrupted.add(index)
        idle = self._idle.pop(index, None)
        if idle is not None:
            idle.wake()

    def _pop(self, queue: deque[Queued]) -> Queued | None:
        while queue:
            item = queue.popleft()
            self._release(item)
            if item.live:
                return item
        return None

    def _head(self, queue: deque[Queued]) -> Queued | None:
        while queue:
            if queue[0].live:
                return queue[0]
            self._release(queue.popleft())
        return None

    def _release(self, item: Queued) -> None:
        if item.holds_slot:
            item.holds_slot = False
            self._pending -= 1
            if self._waiting and self._pending <= self._low_water:
                self._grant()

    def _grant(self) -> None:
        """Hand free slots to the producers at the head of the line, waking each."""
        while self._waiting and self._pending < self._max_pending:
            producer = self._producers.popleft()
            if producer.granted is None:
                producer.granted = True
                self._waiting -= 1
                self._pending += 1
                producer.event.set()

    def _refuse_producers(self) -> None:
        while self._producers:
            producer = self._producers.popleft()
            if producer.granted is None:
                producer.granted = False
                producer.event.set()
        self._waiting = 0

    def _wake_any(self) -> None:
        for index, idle in self._idle.items():
            del self._idle[index]
            idle.wake()
            return

    # -- re-routing and shutdown ----------------------------------------------------------

    def take_private(self, index: int) -> list[Queued]:
        """Remove and return everything queued for instance *index* (it failed for good)."""
        return self._drain(self._private[index])

    def take_movable(self) -> list[Queued]:
        """Remove and return every queued item that may go to another pool: the shared
        queue's, and the private queues' items that are not pinned to their instance."""
        items = self._drain(self._shared)
        for queue in self._private:
            if queue:
                kept = deque(item for item in queue if item.pinned)
                if len(kept) < len(queue):
                    items += self._drain(deque(item for item in queue if not item.pinned))
                    queue.clear()
                    queue.extend(kept)
        return items

    def withdraw(self, item: Queued) -> bool:
        """Take *item* off its queue if it is still queued here; return whether it was."""
        for queue in (self._shared, *self._private):
            try:
                queue.remove(item)
            except ValueError:
                continue
            self._release(item)
            return True
        return False

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
        self._refuse_producers()
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
