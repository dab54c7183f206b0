"""A bounded queue from a few producer tasks to one consumer task."""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import anyio

__all__ = ["Channel"]

T = TypeVar("T")


class Channel(Generic[T]):
    """What an instance's reader hands its task: frames, and the exit watcher's sentinel.

    A memory object stream with one receiver would do, but its ``receive`` takes a checkpoint
    even when an item is waiting: one more pass of the event loop for every reply, on the path
    every prompt takes. Here a receive that finds an item returns it at once, and a send wakes
    the receiver only if it is waiting. One task receives; one at a time may wait to send.

    The receiver sees :exc:`anyio.EndOfStream` once every sender has called
    :meth:`close_sender` and the queue is empty; senders see :exc:`anyio.BrokenResourceError`
    once the receiver has called :meth:`close`.
    """

    __slots__ = ("_closed", "_items", "_max_items", "_receiver", "_senders", "_space", "pending")

    def __init__(self, max_items: int, *, senders: int = 1) -> None:
        self._items: deque[T] = deque()
        #: Whether items wait to be received. An attribute, not a property: the slot asks
        #: twice a prompt (see Process.writable_now).
        self.pending = False
        self._max_items = max_items
        self._senders = senders
        self._closed = False
        self._receiver: anyio.Event | None = None  # set when an item arrives or senders end
        self._space: anyio.Event | None = None  # set when an item is taken or we close

    def send_nowait(self, item: T) -> None:
        """Queue *item*.

        :raises anyio.WouldBlock: if the queue is full
        :raises anyio.BrokenResourceError: if the receiver has closed the channel
        """
        if self._closed:
            raise anyio.BrokenResourceError
        if len(self._items) >= self._max_items:
            raise anyio.WouldBlock
        self._items.append(item)
        self.pending = True
        self._wake_receiver()

    async def send(self, item: T) -> None:
        """Queue *item*, waiting while the queue is full."""
        while True:
            try:
                self.send_nowait(item)
            except anyio.WouldBlock:
                self._space = space = anyio.Event()
                await space.wait()
            else:
                return

    def close_sender(self) -> None:
        """One sender is done; the last one's call ends the stream after its items."""
        self._senders -= 1
        if self._senders <= 0:
            self._wake_receiver()

    def receive_nowait(self) -> T:
        """The oldest item.

        :raises anyio.WouldBlock: if there is none yet
        :raises anyio.EndOfStream: if there is none and every sender is done
        """
        if self._items:
            item = self._items.popleft()
            self.pending = bool(self._items)
            space, self._space = self._space, None
            if space is not None:
                space.set()
            return item
        if self._senders <= 0 or self._closed:
            raise anyio.EndOfStream
        raise anyio.WouldBlock

    async def receive(self) -> T:
        """The oldest item, waiting for one if need be. Cancelling the wait loses nothing."""
        while True:
            try:
                return self.receive_nowait()
            except anyio.WouldBlock:
                self._receiver = receiver = anyio.Event()
                await receiver.wait()

    def close(self) -> None:
        """The receiver is done: senders fail from now on, and one waiting to send wakes."""
        self._closed = True
        self._items.clear()
        self.pending = False
        space, self._space = self._space, None
        if space is not None:
            space.set()

    def _wake_receiver(self) -> None:
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            receiver.set()
