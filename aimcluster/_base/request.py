"""A prompt on its way through the cluster, and the reply that ends it."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Protocol

import anyio
import attrs

from .errors import PromptCancelledError, ReplyTimeoutError
from .usage import Usage

__all__ = ["Reply", "Request", "RequestEvent", "RequestState", "Ticket"]


class RequestEvent(Protocol):
    """What a request waits on: :class:`anyio.Event`, or the event it wraps in the running
    loop (``asyncio.Event``, ``trio.Event``), which the cluster makes directly."""

    def set(self) -> object: ...

    async def wait(self) -> object: ...


# Without slots: a frozen class with slots sets each field through object.__setattr__, and a
# Reply, built once a prompt, took 1.2 µs; with a __dict__ it takes 0.8 µs.
@attrs.frozen(kw_only=True, slots=False)
class Reply:
    """A complete reply of one tool instance to one prompt."""

    #: The tool's output for the prompt, without the echoed prompt, the trailing ready prompt
    #: and the trailing newline; ``\r\n`` is turned into ``\n``.
    text: str
    #: The index of the instance that answered.
    instance: int
    #: The prompt as it was sent (without the newline).
    prompt: str
    #: The routing key the prompt was sent with.
    key: str | None
    #: Seconds from the prompt being written to the reply being complete.
    elapsed: float
    #: How many times the prompt was sent (more than 1 only with ``retries``).
    attempts: int = 1
    #: The reply's JSON events, terminal event last (JSONL framings only; else empty). With
    #: these framings :attr:`text` is the answer extracted from them.
    events: tuple[dict[str, Any], ...] = ()
    #: Tokens and cost of the reply, as the tool reported them (see :attr:`ToolSpec.usage
    #: <aimcluster.ToolSpec.usage>`); ``None`` if it did not.
    usage: Usage | None = None
    #: The pool that answered: its name (by default its tool's name).
    tool: str = ""
    #: The pools the prompt moved away from before this one answered, in order (see
    #: ``launch_cluster(fallback=...)``); empty if it never moved.
    failovers: tuple[str, ...] = ()


class RequestState(enum.Enum):
    QUEUED = "queued"
    SENT = "sent"
    DONE = "done"


# The members as module constants, for the data path, which reads them about six times a
# prompt: on Python 3.11 reading a member off its class calls a descriptor, at five times the
# cost of a global.
QUEUED, SENT, DONE = RequestState.QUEUED, RequestState.SENT, RequestState.DONE


@attrs.define(eq=False)
class Request:
    """One prompt and its one-shot result. Resolved exactly once, by whoever finishes it."""

    prompt: str
    key: str | None
    target: int | None
    deadline: float | None
    retries: int = 0
    #: Sent with an explicit ``instance=``: it may go to no other instance.
    pinned: bool = False
    #: The pool it is queued in or sent to (``None`` until it is routed). :attr:`target` is
    #: a slot of that pool.
    pool: str | None = None
    #: The pools it moved away from, in order (failover).
    failovers: tuple[str, ...] = ()
    state: RequestState = QUEUED
    attempts: int = 0
    #: Times it was held back because the provider rate-limited it.
    rate_limited: int = 0
    #: The caller no longer wants the result: a queued request is dropped unsent, the reply of
    #: one in flight is read and discarded.
    abandoned: bool = False
    #: Whether the request holds one of the cluster's ``max_pending`` queue slots.
    holds_slot: bool = False
    # Created only when someone waits: map() and read_any() use callbacks instead.
    _event: RequestEvent | None = attrs.field(init=False, default=None)
    # Or, on asyncio, a bare future for the one task that sends the prompt and awaits it:
    # it ends with the result, the reply or the error.
    _future: asyncio.Future[Reply] | None = attrs.field(init=False, default=None)
    _result: Reply | BaseException | None = attrs.field(init=False, default=None)
    # Made by the first callback added: a plain send adds none.
    _callbacks: list[Callable[[Request], None]] | None = attrs.field(init=False, default=None)

    @property
    def live(self) -> bool:
        """Whether a worker should still send it."""
        return self.state is QUEUED and not self.abandoned

    @property
    def done(self) -> bool:
        return self.state is DONE

    def abandon(self) -> None:
        """The sender leaves (cancelled): the request fails unless it is done already."""
        self.abandoned = True
        self.resolve(PromptCancelledError(f"prompt {self.prompt[:60]!r} was cancelled"))

    def add_done_callback(self, callback: Callable[[Request], None]) -> None:
        if self.done:
            callback(self)
        elif self._callbacks is None:
            self._callbacks = [callback]
        else:
            self._callbacks.append(callback)

    def resolve(self, result: Reply | BaseException) -> bool:
        """Set the result unless one is set already; return whether this call set it."""
        if self.state is DONE:
            return False
        self.state = DONE
        self._result = result
        if self._event is not None:
            self._event.set()
        future = self._future
        if future is not None and not future.done():  # done: its waiter was cancelled
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        callbacks = self._callbacks
        if callbacks is not None:  # submit() (for read_any) and map(); not a plain send
            self._callbacks = None
            for callback in callbacks:
                callback(self)
        return True

    def result(self) -> Reply:
        assert self._result is not None, "request is not done"
        if isinstance(self._result, BaseException):
            raise self._result
        return self._result

    def exception(self) -> BaseException | None:
        return self._result if isinstance(self._result, BaseException) else None

    def wait(
        self,
        new_event: Callable[[], RequestEvent] = anyio.Event,
        new_future: Callable[[], asyncio.Future[Any]] | None = None,
    ) -> Awaitable[Reply]:
        """Wait for the result, enforcing the deadline while the request is still queued.

        Once the request is in flight its worker enforces the deadline (it must also restart
        the instance), so past that point this only waits. *new_event*: how to make the
        event to wait on (the cluster passes its loop's own, found once).

        *new_future*: the running asyncio loop's ``create_future``, from the task that sent
        the prompt, which alone waits for it. Without a deadline, the awaitable returned is a
        bare future that :meth:`resolve` ends with the reply or the error: no coroutine of
        this method's, no waiter list and no coroutine of an event's, eight Python calls a
        prompt. Only for that one task: were two to await one future, cancelling one would
        cancel the future under the other.
        """
        if new_future is not None and self.deadline is None and not self.done:
            assert self._future is None, "the sender alone awaits the future"
            future: asyncio.Future[Reply] = new_future()
            self._future = future
            return future
        return self._wait(new_event)

    async def _wait(self, new_event: Callable[[], RequestEvent]) -> Reply:
        if self.done:
            return self.result()
        if self._event is None:
            self._event = new_event()
        if self.deadline is not None:
            with anyio.move_on_at(self.deadline):
                await self._event.wait()
            if not self.done and self.state is QUEUED:
                self.abandoned = True
                self.resolve(self._not_taken())
        await self._event.wait()
        return self.result()

    def expired(self, now: float) -> bool:
        """Fail the request, unsent, if its deadline has passed by *now*; return whether it
        did. For whoever is about to send or queue it again: an instance taking it from a
        queue, a retry, a move to another pool."""
        if self.deadline is None or now < self.deadline:
            return False
        self.resolve(self._not_taken())
        return True

    def _not_taken(self) -> ReplyTimeoutError:
        return ReplyTimeoutError(
            f"no instance took the prompt {self.prompt[:60]!r} before its deadline",
            prompt=self.prompt,
            instance=None,
        )


@attrs.define(eq=False)
class Ticket:
    """A submitted prompt. Await it for its own reply, or collect replies with ``read_any``."""

    _request: Request

    @property
    def prompt(self) -> str:
        return self._request.prompt

    @property
    def key(self) -> str | None:
        return self._request.key

    @property
    def done(self) -> bool:
        return self._request.done

    async def wait(self) -> Reply:
        """The reply; raises the prompt's error if it failed."""
        return await self._request.wait()

    def cancel(self) -> None:
        """Withdraw the prompt: unsent, it is never sent; in flight, its reply is discarded.

        The ticket then resolves with :class:`PromptCancelledError` (unless it was done).
        """
        self._request.abandon()

    def __await__(self) -> Generator[Any, None, Reply]:
        return self.wait().__await__()
