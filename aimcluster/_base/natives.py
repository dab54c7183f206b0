"""The running event loop's own functions for what the data path asks of anyio every prompt.

anyio finds the backend at every call (``sniffio``, a context variable, a registry look-up), or
wraps what it finds; the cluster and each reader find the loop's own functions once, when they
start, and call them directly.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import anyio.lowlevel

    from .request import RequestEvent

__all__ = ["LoopNatives", "is_trio", "loop_natives"]


def is_trio(native_token: object) -> bool:
    """Whether the loop of *native_token* (anyio's ``current_token().native_token``) is
    trio's. trio is not imported unless something already did: on asyncio it may never be."""
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(native_token, trio.lowlevel.TrioToken)


class LoopNatives(NamedTuple):
    """What anyio calls in the running loop for the things the data path does."""

    #: What ``anyio.current_time()`` reads: the loop's ``time()`` on asyncio,
    #: ``trio.current_time`` on trio. A prompt reads it three times.
    clock: Callable[[], float]
    #: What ``anyio.Event()`` wraps: ``asyncio.Event``, ``trio.Event``. The wrapper forwards
    #: ``wait`` and ``set``, at six Python calls a prompt; the one thing it adds, a
    #: checkpoint on waiting for an event already set, ``Request.wait`` does not need (it
    #: returns at once when done). A request's event is made, awaited and set in the
    #: cluster's loop only: ``send`` checks its caller, and the reader that sets it runs there.
    new_event: Callable[[], RequestEvent]
    #: ``loop.create_future`` on asyncio, for the task that sends a prompt and alone awaits
    #: its request (see :meth:`Request.wait`); ``None`` elsewhere.
    new_future: Callable[[], asyncio.Future[Any]] | None
    #: What the backend's ``current_token`` calls: ``asyncio.get_running_loop`` (a C
    #: function), trio's ``current_trio_token``. It returns the native token of the loop it
    #: runs in, and raises :class:`RuntimeError` where no loop of its kind runs.
    current_token: Callable[[], object]
    #: What ``anyio.lowlevel.checkpoint()`` awaits: ``asyncio.sleep(0)``,
    #: ``trio.lowlevel.checkpoint()``. With one instance busy at most, a prompt takes two
    #: passes of the loop (one in ``send``, one in the reader after the reply); through anyio
    #: each pass cost 0.7-1.3 µs more.
    checkpoint: Callable[[], Awaitable[None]]


def loop_natives(token: anyio.lowlevel.EventLoopToken) -> LoopNatives:
    """The :class:`LoopNatives` of the loop of *token*; anyio's own for another backend."""
    native = token.native_token
    if isinstance(native, asyncio.AbstractEventLoop):
        return LoopNatives(
            native.time,
            asyncio.Event,
            native.create_future,
            asyncio.get_running_loop,
            functools.partial(asyncio.sleep, 0),
        )
    if is_trio(native):
        trio = sys.modules["trio"]
        lowlevel = trio.lowlevel
        return LoopNatives(
            trio.current_time, trio.Event, None, lowlevel.current_trio_token, lowlevel.checkpoint
        )
    backend = token.backend_class
    return LoopNatives(
        backend.current_time,
        backend.create_event,
        None,
        backend.current_token,
        backend.checkpoint,
    )
