"""Results as they come: the ``async with`` / ``async for`` shape of a run of jobs.

A :class:`ResultStream` is entered once; entering starts the subclass's tasks, which send
results into a stream the run owns, and leaving cancels whatever has not ended. A bare
``async for`` over one that was not entered enters it for the length of the loop.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Generic, Self, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._base.errors import single_error

__all__ = ["ResultStream"]

T = TypeVar("T")


class ResultStream(Generic[T]):
    """Enter it to start it, iterate it for each result as it ends; subclasses say how the
    results are made in :meth:`_start`."""

    def __init__(self) -> None:
        self._entered = False
        self._stack: AsyncExitStack | None = None
        self._receive: MemoryObjectReceiveStream[T] | None = None

    async def _start(self, stack: AsyncExitStack, send: MemoryObjectSendStream[T]) -> None:
        """Start the tasks that send the results into *send*, under *stack* (which leaving
        the block unwinds); they close *send* when the last result is sent."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        name = type(self).__name__
        if self._entered:
            raise RuntimeError(f"a {name} can be started only once")
        self._entered = True
        send, receive = anyio.create_memory_object_stream[T](math.inf)
        async with AsyncExitStack() as stack:
            stack.enter_context(receive)
            await self._start(stack, send)
            self._receive = receive
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None
        try:
            return await self._stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # A single error is raised as itself at the public boundary.
            raise single_error(group) from None

    def __aiter__(self) -> AsyncIterator[T]:
        if self._entered:
            return self
        return self._run_and_iterate()

    async def _run_and_iterate(self) -> AsyncGenerator[T, None]:
        async with self:
            async for result in self:
                yield result

    async def __anext__(self) -> T:
        if self._receive is None:
            raise RuntimeError(
                f"iterate a {type(self).__name__} with 'async for', or enter it first"
            )
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
