"""Leases: one instance held exclusively for a multi-step job (``/add``, instruct, ``/drop``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .errors import ClusterClosedError

if TYPE_CHECKING:
    from .request import Reply, Request
    from .spec import ToolSpec

__all__ = ["LeaseRequest", "Session", "SessionHost"]


class SessionHost(Protocol):
    """What a session needs of its cluster (the cluster is one; the protocol keeps this
    module from importing it)."""

    def spec_of(self, instance: int) -> ToolSpec: ...

    def _session_request(self, prompt: str, instance: int, timeout: float | None) -> Request:
        """A prompt for the held *instance*, checked and ready to submit."""
        ...

    def _recycle(self, instance: int) -> None:
        """Restart *instance* once its current lease ends."""
        ...

    async def _await_reply(self, request: Request) -> Reply:
        """The reply of *request*, submitted."""
        ...


@attrs.define(eq=False)
class LeaseRequest:
    """Queued like a prompt; the instance that takes it serves only this lease until release."""

    key: str | None
    #: A slot of :attr:`pool` (``None``: whichever instance of the pool is free first).
    target: int | None
    pinned: bool = False
    holds_slot: bool = False
    #: The pool it is queued in, and the pools it moved away from (or its job left).
    pool: str | None = None
    failovers: tuple[str, ...] = ()
    instance: int | None = None
    abandoned: bool = False
    #: Why the lease can no longer be used (its instance crashed, the cluster closed).
    error: BaseException | None = None
    _granted: anyio.Event = attrs.field(init=False, factory=anyio.Event)
    _send: MemoryObjectSendStream[Request] = attrs.field(init=False)
    _receive: MemoryObjectReceiveStream[Request] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream["Request"](math.inf)

    @property
    def live(self) -> bool:
        return self.instance is None and not self.abandoned and self.error is None

    # -- the instance's side ----------------------------------------------------------------

    def grant(self, instance: int) -> None:
        self.instance = instance
        self._granted.set()

    async def next(self) -> Request | None:
        """The session's next prompt, or ``None`` once the lease is released."""
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            return None

    def lose(self, error: BaseException) -> None:
        """The instance can no longer serve this lease: fail its waiting prompts, and those
        sent from now on."""
        if self.error is None:
            self.error = error
        self.finish()
        self._granted.set()

    # -- the dispatcher's side (never-granted leases) -------------------------------------------

    def resolve(self, result: BaseException) -> bool:
        if self.instance is not None or self.error is not None:
            return False
        self.lose(result)
        return True

    # -- the holder's side ------------------------------------------------------------------

    async def wait_granted(self) -> int:
        await self._granted.wait()
        if self.error is not None:
            raise self.error
        assert self.instance is not None
        return self.instance

    def submit(self, request: Request) -> None:
        if self.error is not None:
            raise self.error
        try:
            self._send.send_nowait(request)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise self.error or ClusterClosedError("the lease was released") from None

    def finish(self) -> None:
        """The instance is done with the lease (released, lost or shut down). Prompts sent
        to it and not taken yet fail: nobody else may send them."""
        while True:
            try:
                request = self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            request.resolve(self.error or ClusterClosedError("the lease was released"))
        self._receive.close()

    def release(self) -> None:
        self.abandoned = True
        self._send.close()
        if self.instance is None:
            self._receive.close()  # never granted: no instance will finish it


@attrs.define(eq=False)
class Session:
    """An instance held exclusively. Every prompt sent through it goes to that one instance."""

    _cluster: SessionHost
    _lease: LeaseRequest

    @property
    def instance(self) -> int:
        """The index of the held instance."""
        assert self._lease.instance is not None
        return self._lease.instance

    @property
    def key(self) -> str | None:
        return self._lease.key

    @property
    def failovers(self) -> tuple[str, ...]:
        """The pools the lease moved away from before it was granted (or its job left)."""
        return self._lease.failovers

    @property
    def tool(self) -> str:
        """The name of the held instance's pool."""
        assert self._lease.pool is not None
        return self._lease.pool

    @property
    def spec(self) -> ToolSpec:
        """The spec the held instance runs."""
        return self._cluster.spec_of(self.instance)

    def recycle(self) -> None:
        """Restart the held instance once the lease ends: gracefully, and not counted
        against its restart budget. Nothing this lease built up in the tool (files added to
        an agent's chat, a REPL's variables) then reaches the next work it takes, which is
        what a job that stopped half-way (before its ``/drop``) needs."""
        self._cluster._recycle(self.instance)

    async def send(self, prompt: str, *, timeout: float | None = None) -> Reply:
        """Send *prompt* to the held instance and return its reply.

        :raises InstanceCrashedError: if the instance crashed during the lease (its state,
            such as the files added to an agent's chat, is gone, so later sends fail too)
        """
        request = self._cluster._session_request(prompt, self.instance, timeout)
        request.key, request.failovers = self._lease.key, self._lease.failovers
        self._lease.submit(request)
        try:
            return await self._cluster._await_reply(request)
        except anyio.get_cancelled_exc_class():
            request.abandon()
            raise
