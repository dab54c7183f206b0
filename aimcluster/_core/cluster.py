"""The cluster: supervised instances of one or more tools behind one routed, async API.

A cluster is one pool of instances per tool (see :mod:`.pool`); where each piece of work
goes, and when it moves to another pool, is the fleet's business (:mod:`.fleet`). The cluster
is the public face: it checks what callers give it, starts and stops the instances, and hands
work to the fleet.

This module is over the house's 500 lines, and :class:`Cluster` over 450, for a reason: the
class is the library's whole public API, fourteen methods with their documentation (a third
of its lines are docstrings, comments and blank lines), and each of them only checks its
arguments and hands over; what they do is decided in the fleet, the pools, the dispatcher and
the slots.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any, Literal, overload

import anyio
import anyio.lowlevel
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._base.errors import AimclusterError, ClusterClosedError, StartupError, single_error
from .._base.lease import LeaseRequest, Session
from .._base.logs import library_logger
from .._base.metrics import ClusterMetrics
from .._base.natives import is_trio, loop_natives
from .._base.policy import RestartPolicy
from .._base.request import Reply, Request, RequestEvent, Ticket
from .._base.routing import make_router
from .._base.spec import ToolSpec
from .._base.statedir import StateDirectory, uses_state
from .._slot.instance import Instance, InstanceState
from .._transport.local import LocalTransport
from ..abc import Transport
from .fleet import Fleet, Item
from .pool import Pool, PoolInfo, PoolState, check_prompt, pools_of

__all__ = ["Cluster", "launch_cluster"]


class Cluster:
    """A running cluster. Create it with :func:`launch_cluster` and use it as ``async with``.

    A cluster belongs to the event loop that entered it: its events, streams and tasks live
    there. Every public method checks, first, that it runs in that loop's thread and in that
    loop (a thread-id and a loop-identity comparison, about 0.2 µs), and raises
    :class:`RuntimeError` at once otherwise, instead of hanging (asyncio), failing obscurely
    (trio) or corrupting the state another thread is changing. Another thread calls it
    through ``anyio.from_thread.run`` or a ``BlockingPortal``.
    """

    def __init__(
        self,
        pools: Sequence[Pool],
        *,
        routing: str,
        restart: RestartPolicy | None,
        max_pending: int,
        transport: Transport,
        logger: structlog.typing.FilteringBoundLogger,
        fallback: Sequence[str] = (),
        failover_after: float | None = None,
    ) -> None:
        self._pool_specs = tuple(pools)
        self._count = sum(pool.count for pool in pools)
        self._restart = restart
        self._max_pending = max_pending
        self._transport = transport
        self._log = logger if len(pools) > 1 else logger.bind(tool=pools[0].tool.name)
        self._fleet = Fleet(
            router=make_router(routing),
            transport=transport,
            on_state=self._on_state,
            log=self._log,
            fallback=tuple(fallback),
            failover_after=failover_after,
        )
        # The pool of a cluster of one pool (None: several, or not entered yet): the common
        # case, checked and routed to without a look-up on every prompt.
        self._single_pool: PoolState | None = None
        self._stack: AsyncExitStack | None = None
        self._closing = False
        self._task_group: anyio.abc.TaskGroup
        self._closed: anyio.Event
        # Set (and dropped) at the next instance state change; created only when awaited.
        self._changed: anyio.Event | None = None
        self._completed_in: MemoryObjectSendStream[Request]
        self._completed_out: MemoryObjectReceiveStream[Request]
        # The thread and event loop that entered the cluster (None: not entered yet), and the
        # backend's own loop lookup, kept so that the check skips anyio's backend detection.
        self._owner_thread: int | None = None
        self._owner_loop: object = None
        self._current_loop: Callable[[], object] = _no_loop
        self._clock: Callable[[], float] = anyio.current_time
        self._new_event: Callable[[], RequestEvent] = anyio.Event
        self._new_future: Callable[[], asyncio.Future[Any]] | None = None
        self._checkpoint: Callable[[], Awaitable[None]] = anyio.lowlevel.checkpoint
        # Callers awaiting a reply in send() or a lease's send(), and whether one alone gives
        # the event loop a pass before it sleeps on its reply (see _await_reply).
        self._awaiting = 0
        self._pass_first = False

    def _on_state(self, instance: Instance) -> None:
        """*instance* changed state: every change while a wait_for waits (Busy.watched),
        else all but the per-prompt flips between ready and busy."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None
            self._fleet.busy.watched = False
        if instance.state not in (InstanceState.READY, InstanceState.BUSY):
            # Not the per-prompt flip, which cannot change which instances are healthy.
            self._fleet.state_changed(instance)

    def _instance(self, index: int) -> Instance:
        return self._fleet.instance(index)

    # What a Session asks of its cluster (see SessionHost).

    def _session_request(self, prompt: str, instance: int, timeout: float | None) -> Request:
        self._check_caller()
        return self._new_request(prompt, key=None, instance=instance, timeout=timeout, retries=0)

    def _recycle(self, instance: int) -> None:
        self._fleet.instance(instance).request_restart()

    async def _await_reply(self, request: Request) -> Reply:
        """Await the reply of *request*, whose prompt is queued or written (a lease's send;
        :meth:`send` does the same in place, one coroutine less on every wake-up).

        A caller alone (no other send awaits a reply) first gives the event loop one pass,
        on trio, and on asyncio and uvloop when no pool runs its tool in a PTY: its prompt
        was written before this (unless it is queued), and a fast child's reply is often in
        by the end of that pass, so the loop takes it without putting the thread to sleep in
        the kernel and waking it again. Measured on the closed-loop benchmark's child, one
        caller: on trio, in turns on one cluster, p50 11-18% lower and 6-19% more calls/s,
        at the same CPU per call, on pipes and a PTY; through pipes on uvloop, p50 0.94-0.95x
        raw instead of 1.12-1.13x, and on asyncio 0.95-0.97x instead of 0.99-1.04x. Not
        through a PTY on asyncio or uvloop, where the echo comes first, and the pass made
        p50 5-9% higher. Nor with other callers awaiting, where the pass is one more step
        each for nothing (8 callers: 10% fewer calls/s through a PTY). One checkpoint, not a
        poll: the reply is taken as soon as its bytes are read, whenever they come.
        """
        self._awaiting += 1
        try:
            if self._pass_due(request):
                await self._checkpoint()
            return await request.wait(self._new_event, self._new_future)
        finally:
            self._awaiting -= 1

    def _pass_due(self, request: Request) -> bool:
        return self._pass_first and self._awaiting == 1 and not request.done

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Cluster:
        pools = self._fleet.pools
        if pools:
            raise RuntimeError("a Cluster can be entered only once")
        for described in self._pool_specs:
            self._transport.check(described.tool)
        token = anyio.lowlevel.current_token()
        natives = loop_natives(token)
        self._current_loop = natives.current_token
        self._owner_loop = token.native_token
        self._owner_thread = threading.get_ident()
        self._closed = anyio.Event()
        # Finished submit() requests, in completion order, for read_any().
        self._completed_in, self._completed_out = anyio.create_memory_object_stream[Request](
            math.inf
        )
        self._clock = self._fleet.clock = natives.clock
        self._new_event, self._new_future = natives.new_event, natives.new_future
        self._checkpoint = natives.checkpoint
        self._pass_first = is_trio(token.native_token) or not any(
            described.tool.pty for described in self._pool_specs
        )
        async with AsyncExitStack() as stack:
            for described in self._pool_specs:
                pool = pools[described.name] = PoolState.create(
                    described, self._restart, max_pending=self._max_pending, clock=self._clock
                )
                if uses_state(pool.spec):
                    pool.state = StateDirectory.create(pool.spec.name)
                    # Removed last, once every process that used it has stopped.
                    stack.callback(pool.state.remove)
            for pool in pools.values():
                count = next(p.count for p in self._pool_specs if p.name == pool.name)
                pool.instances = [self._fleet.add_instance(pool, slot) for slot in range(count)]
                pool.refresh_healthy()
            if len(pools) == 1:
                self._single_pool = self._fleet.only
            self._task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.push_async_callback(self._shutdown_shielded)
            launch = _Launch(self._count)
            for instance in self._instances:
                self._task_group.start_soon(self._host, instance, launch)
            if self._fleet.fallback and self._fleet.failover_after is not None:
                self._task_group.start_soon(self._fleet.move_saturated)
            await launch.done.wait()
            if launch.error is None:
                several = {name: len(p.instances) for name, p in pools.items()}
                self._log.info(
                    "cluster_started",
                    size=self.size,
                    routing=self._fleet.router.name,
                    **({"pools": several} if len(several) > 1 else {}),
                )
                self._stack = stack.pop_all()
        # Raised once the stack has shut the other instances down, and outside the task group,
        # which would wrap it in an ExceptionGroup.
        if launch.error is not None:
            raise launch.error
        return self

    @property
    def _instances(self) -> list[Instance]:
        return self._fleet.instances()

    async def _host(self, instance: Instance, launch: _Launch) -> None:
        """Run one instance, reporting its first start (or failure to start) to *launch*."""
        try:
            await instance.run(task_status=launch)
        except StartupError as exc:
            launch.fail(exc)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._check_caller()
        assert self._stack is not None
        try:
            return await self._stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            raise single_error(group) from None

    async def _shutdown_shielded(self) -> None:
        # Runs on every way out, cancellation included, so it must not be cancellable; each
        # instance bounds its own stop sequence.
        with anyio.CancelScope(shield=True):
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop every instance (``exit_command``, SIGTERM, SIGKILL to each process group).

        Queued prompts fail with :class:`ClusterClosedError`. Idempotent; leaving the
        ``async with`` block does it too.
        """
        self._check_caller()
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._fleet.close()
        for pool in self._fleet.pools.values():
            pool.dispatcher.close()
        instances = self._instances
        for instance in instances:
            instance.stop()
        for instance in instances:
            await instance.stopped.wait()
        self._completed_in.close()
        self._completed_out.close()
        self._log.info("cluster_stopped", size=self.size)
        self._closed.set()

    def _check_caller(self) -> None:
        """Raise :class:`RuntimeError` unless called in the thread and event loop that
        entered the cluster. On the data path: one look-up and one comparison when all is
        well. The running loop is the thread's own, so the owner's loop is the owner's
        thread as well; the thread is told apart only for the error."""
        try:
            if self._current_loop() is self._owner_loop:
                return
        except RuntimeError:
            pass  # this thread runs no event loop (any more)
        raise self._wrong_caller()

    def _wrong_caller(self) -> RuntimeError:
        if self._owner_thread is None:
            return RuntimeError(
                f"the cluster of {self._names()} was not entered: enter the cluster with "
                "`async with launch_cluster(...) as cluster:` first"
            )
        where = (
            "another thread"
            if threading.get_ident() != self._owner_thread
            else "another event loop (or none)"
        )
        return RuntimeError(
            f"the cluster of {self._names()} was used from {where}: a cluster belongs to the "
            "event loop that started it; from another thread use anyio.from_thread.run() or a "
            "BlockingPortal (anyio.from_thread.start_blocking_portal) to call it in its own loop"
        )

    def _names(self) -> str:
        return ", ".join(repr(pool.name) for pool in self._pool_specs)

    # -- pools ------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The number of instances, over every pool."""
        return self._count

    @property
    def spec(self) -> ToolSpec:
        """The tool of a cluster of one pool.

        :raises RuntimeError: if the cluster has several pools (see :attr:`pools`)
        """
        if len(self._pool_specs) > 1:
            raise RuntimeError(
                f"this cluster has several pools ({self._names()}): use "
                "cluster.pools[name].spec, or cluster.spec_of(instance)"
            )
        return self._pool_specs[0].tool

    @property
    def pools(self) -> Mapping[str, PoolInfo]:
        """Each pool by name, in the order they were given: spec, tags, instance indices."""
        if not self._fleet.pools:
            return {
                p.name: PoolInfo(name=p.name, spec=p.tool, tags=p.tags, instances=(), paused=False)
                for p in self._pool_specs
            }
        return {name: pool.info() for name, pool in self._fleet.pools.items()}

    def spec_of(self, instance: int) -> ToolSpec:
        """The spec instance *instance* runs (its pool's, with ``{state}`` filled in)."""
        return self._fleet.instance(instance).spec

    def tool_of(self, instance: int) -> str:
        """The name of instance *instance*'s pool."""
        return self._fleet.instance(instance).tool

    @property
    def fallback(self) -> tuple[str, ...]:
        """The failover order: pool names (empty: no failover)."""
        return self._fleet.fallback

    # -- routing ----------------------------------------------------------------------------

    # -- sending ----------------------------------------------------------------------------

    def _new_request(
        self,
        prompt: str,
        *,
        key: str | None,
        instance: int | None,
        timeout: float | None,
        retries: int,
        tool: str | None = None,
    ) -> Request:
        if self._closing:
            raise ClusterClosedError("the cluster is shut down")
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        request = Request(
            prompt=prompt,
            key=key,
            target=None,
            pinned=instance is not None,
            deadline=None,
            retries=retries,
        )
        if instance is not None:
            held = self._instance(instance)
            if tool is not None and held.tool not in {p.name for p in self._fleet.select(tool)}:
                raise ValueError(f"instance {instance} is in pool {held.tool!r}, not {tool!r}")
            check_prompt(self._fleet.pools[held.tool].spec, prompt)
            request.pool, request.target = held.tool, held.slot
            default = held.spec.reply_timeout
        elif self._single_pool is not None and tool is None:
            # One pool (the common case, on every prompt).
            spec = self._single_pool.spec
            check_prompt(spec, prompt)
            default = spec.reply_timeout
        else:
            pools = self._fleet.select(tool)
            self._fleet.taking(pools, prompt)
            # It may go to any of them: the longest of their reply timeouts cuts none short.
            timeouts = [pool.spec.reply_timeout for pool in pools]
            default = None if None in timeouts else max(t for t in timeouts if t is not None)
        timeout = default if timeout is None else timeout
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        request.deadline = None if timeout is None else self._clock() + timeout
        return request

    def _enqueue_now(self, item: Item, tool: str | None) -> bool:
        """Queue *item* at once, where that is how :meth:`_enqueue` would queue it; return
        whether it did. One pool, with room in its queue (the common case, on every
        prompt): routed in place, with nothing to fail over to and no coroutine."""
        pool = self._single_pool
        if pool is None or tool is not None or item.pinned or not pool.dispatcher.has_room:
            return False
        self._route_in(pool, item)
        pool.dispatcher.put_nowait(item)
        return True

    def _route_in(self, pool: PoolState, item: Item) -> None:
        if not pool.healthy:
            raise self._fleet.no_healthy(pool, None)
        item.target, item.pool = self._fleet.router.route(item.key, pool.healthy), pool.name

    async def _enqueue(self, item: Item, tool: str | None = None) -> None:
        if self._enqueue_now(item, tool):
            return
        pool = self._single_pool
        if pool is not None and tool is None and not item.pinned:
            # One pool, and no room in its queue: wait for it (put() raises if it is closed).
            self._route_in(pool, item)
            if await pool.dispatcher.put(item):
                self._fleet.recheck(item, pool)
            return
        pool = self._fleet.check_pinned(item) if item.pinned else self._fleet.place(item, tool)
        if await pool.dispatcher.put(item):
            self._fleet.recheck(item, pool)
        self._fleet.watch_saturation(item, pool)

    async def send(
        self,
        prompt: str,
        *,
        key: str | None = None,
        instance: int | None = None,
        tool: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
    ) -> Reply:
        """Send *prompt* to an instance chosen by the routing strategy and return its reply.

        :param key: the sticky routing key (``sticky`` routing keeps a key on one instance)
        :param instance: send to this instance index, whatever the routing (never moved)
        :param tool: send to this pool, by name or tag (default: any pool; see
            ``launch_cluster(fallback=...)`` for when a prompt moves to another)
        :param timeout: seconds until :class:`ReplyTimeoutError` (default
            ``ToolSpec.reply_timeout``; the longest of those of the pools it may go to),
            counted from now, queueing included
        :param retries: re-send up to this many times if the instance crashes or stalls
            before the reply is complete (prompts to agents are not idempotent: opt in)
        """
        self._check_caller()
        request = self._new_request(
            prompt, key=key, instance=instance, timeout=timeout, retries=retries, tool=tool
        )
        # As _await_reply, in place: a send counts as awaiting from here.
        self._awaiting += 1
        try:
            if not self._enqueue_now(request, tool):
                await self._enqueue(request, tool)
            if self._pass_due(request):
                await self._checkpoint()
            return await request.wait(self._new_event, self._new_future)
        except anyio.get_cancelled_exc_class():
            request.abandon()
            raise
        finally:
            self._awaiting -= 1

    async def submit(
        self,
        prompt: str,
        *,
        key: str | None = None,
        instance: int | None = None,
        tool: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
    ) -> Ticket:
        """Route *prompt* now and return without waiting for its reply.

        Collect the reply by awaiting the ticket, or with :meth:`read_any`. Waits while
        ``max_pending`` prompts are queued in its pool.
        """
        self._check_caller()
        request = self._new_request(
            prompt, key=key, instance=instance, timeout=timeout, retries=retries, tool=tool
        )
        request.add_done_callback(self._completed_in.send_nowait)
        await self._enqueue(request, tool)
        return Ticket(request)

    async def read_any(self, timeout: float | None = None) -> Reply:
        """The next reply of a submitted prompt to complete, in completion order.

        Each submitted prompt is returned (or raises its error) exactly once.

        :raises TimeoutError: if nothing completes within *timeout* seconds
        """
        self._check_caller()
        with anyio.fail_after(timeout):
            try:
                request = await self._completed_out.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                raise ClusterClosedError("the cluster is shut down") from None
        return request.result()

    @overload
    async def map(
        self,
        prompts: Iterable[str],
        *,
        keys: Iterable[str | None] | None = ...,
        tool: str | None = ...,
        return_exceptions: Literal[False] = ...,
        timeout: float | None = ...,
        retries: int = ...,
    ) -> list[Reply]: ...

    @overload
    async def map(
        self,
        prompts: Iterable[str],
        *,
        keys: Iterable[str | None] | None = ...,
        tool: str | None = ...,
        return_exceptions: Literal[True],
        timeout: float | None = ...,
        retries: int = ...,
    ) -> list[Reply | AimclusterError]: ...

    async def map(
        self,
        prompts: Iterable[str],
        *,
        keys: Iterable[str | None] | None = None,
        tool: str | None = None,
        return_exceptions: bool = False,
        timeout: float | None = None,
        retries: int = 0,
    ) -> list[Reply] | list[Reply | AimclusterError]:
        """Run *prompts* concurrently across the instances (of pool *tool*, by name or tag, if
        given); results come in input order.

        With ``return_exceptions=False`` the first error is raised at once and the prompts
        not yet sent are withdrawn; with ``True`` each failed prompt's error takes its place.
        """
        self._check_caller()
        prompt_list = list(prompts)
        key_list = [None] * len(prompt_list) if keys is None else list(keys)
        if len(key_list) != len(prompt_list):
            raise ValueError(f"got {len(key_list)} keys for {len(prompt_list)} prompts")
        requests = [
            self._new_request(p, key=k, instance=None, timeout=timeout, retries=retries, tool=tool)
            for p, k in zip(prompt_list, key_list, strict=True)
        ]
        all_done = anyio.Event()
        remaining = len(requests)
        failure: BaseException | None = None

        def on_done(request: Request) -> None:
            nonlocal remaining, failure
            remaining -= 1
            error = request.exception()
            if error is not None and not return_exceptions and failure is None:
                failure = error
                all_done.set()
            if remaining == 0:
                all_done.set()

        async def feed() -> None:
            for request in requests:
                request.add_done_callback(on_done)
                try:
                    await self._enqueue(request, tool)
                except AimclusterError as exc:
                    request.resolve(exc)

        try:
            if requests:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(feed)
                    await all_done.wait()
                    tg.cancel_scope.cancel()
        except BaseException:
            for request in requests:
                request.abandon()
            raise
        if failure is not None:
            for request in requests:
                request.abandon()
            raise failure
        if return_exceptions:
            return [_result_or_error(request) for request in requests]
        return [request.result() for request in requests]

    @asynccontextmanager
    async def lease(
        self, key: str | None = None, *, instance: int | None = None, tool: str | None = None
    ) -> AsyncIterator[Session]:
        """Hold one instance exclusively for the duration of the block.

        While the block runs, no other prompt goes to that instance: what a multi-step agent
        job needs (``/add``, then instruct, then ``/drop``). *tool* picks the pool, by name or
        tag (default: any). A lease still queued moves with the failover order as a prompt
        does; once granted it stays, and a prompt the provider rate-limits in it fails with
        :class:`RateLimitedError` (if another pool could take the work over).
        """
        self._check_caller()
        async with self._lease(key, instance=instance, tool=tool, avoid=()) as session:
            yield session

    @asynccontextmanager
    async def _lease(
        self,
        key: str | None,
        *,
        instance: int | None,
        tool: str | None,
        avoid: tuple[str, ...],
    ) -> AsyncIterator[Session]:
        """:meth:`lease`, kept off the pools *avoid* names (a job moving away from them) if
        another can take it."""
        if self._closing:
            raise ClusterClosedError("the cluster is shut down")
        lease = LeaseRequest(key=key, target=None, pinned=instance is not None)
        lease.failovers = avoid
        if instance is not None:
            held = self._instance(instance)
            if tool is not None and held.tool not in {p.name for p in self._fleet.select(tool)}:
                raise ValueError(f"instance {instance} is in pool {held.tool!r}, not {tool!r}")
            lease.pool, lease.target = held.tool, held.slot
        try:
            await self._enqueue(lease, tool)
            await lease.wait_granted()
            if avoid and lease.pool not in avoid:
                self._fleet.job_moved(lease, avoid[-1])
            yield Session(self, lease)
        finally:
            lease.release()

    # -- observing --------------------------------------------------------------------------

    def metrics(self) -> ClusterMetrics:
        """A snapshot of the cluster's, each pool's and each instance's counters and state.

        Once the cluster is shut down nothing changes any more, and any thread may read it.
        """
        if not (self._closing and self._closed.is_set()):
            self._check_caller()
        return self._fleet.metrics()

    async def wait_for(
        self, predicate: Callable[[ClusterMetrics], bool], *, timeout: float | None = None
    ) -> ClusterMetrics:
        """Wait until ``predicate(cluster.metrics())`` holds and return that snapshot.

        It is checked again at every instance state change, so no polling is involved::

            await cluster.wait_for(lambda m: all(i.state == "ready" for i in m.instances))

        :raises TimeoutError: if it does not hold within *timeout* seconds
        """
        self._check_caller()
        with anyio.fail_after(timeout):
            while not predicate(metrics := self.metrics()):
                if self._changed is None:
                    self._changed = anyio.Event()
                    self._fleet.busy.watched = True
                await self._changed.wait()
        return metrics

    async def restart(self, index: int, *, timeout: float | None = None) -> None:
        """Restart instance *index* gracefully: after its current prompt or lease, it is
        stopped (``exit_command``, SIGTERM, SIGKILL) and started afresh. Returns once it is
        ready again. A requested restart does not count against the restart budget."""
        self._check_caller()
        instance = self._instance(index)
        before = instance.restarts
        instance.request_restart()

        def restarted(metrics: ClusterMetrics) -> bool:
            now = metrics.instance(index)
            return now.state == "failed" or (now.restarts > before and now.state == "ready")

        await self.wait_for(restarted, timeout=timeout)

    async def scale(self, count: int, *, tool: str | None = None) -> None:
        """Grow or shrink pool *tool* (the only pool if the cluster has one) to *count*
        instances.

        New instances are ready when this returns; each gets the lowest index no instance
        has (in a cluster of one pool: N to count-1). Shrinking removes the pool's last
        instances: they take no new work,
        finish their current prompt or lease, then stop gracefully; work queued for them
        moves to the others. With sticky routing only the keys of removed instances move
        (rendezvous hashing).
        """
        self._check_caller()
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be an integer >= 1, got {count!r}")
        if self._closing:
            raise ClusterClosedError("the cluster is shut down")
        if tool is None:
            if len(self._fleet.pools) > 1:
                raise ValueError(f"this cluster has several pools ({self._names()}): name one")
            pool = next(iter(self._fleet.pools.values()))
        elif tool in self._fleet.pools:
            pool = self._fleet.pools[tool]
        else:
            raise ValueError(f"no pool is named {tool!r}; the cluster has: {self._names()}")
        while len(pool.instances) < count:
            await self._grow(pool)
        if count < len(pool.instances):
            await self._shrink(pool, count)
        self._log.info("cluster_scaled", size=self._count, pool=pool.name, count=count)

    async def _grow(self, pool: PoolState) -> None:
        instance = self._fleet.add_instance(pool, pool.dispatcher.add_slot())
        pool.instances.append(instance)
        self._count += 1
        launch = _Launch(1)
        self._task_group.start_soon(self._host, instance, launch)
        await launch.done.wait()
        if launch.error is not None:
            await instance.stopped.wait()
            self._fleet.remove_instances(pool, len(pool.instances) - 1)
            self._count -= 1
            raise launch.error
        pool.refresh_healthy()

    async def _shrink(self, pool: PoolState, count: int) -> None:
        leaving = pool.instances[count:]
        for instance in leaving:
            instance.retire()
        pool.refresh_healthy()  # they are no longer healthy: nothing new is routed there
        for instance in leaving:
            self._fleet.reroute_from(pool, instance.slot, why="was removed by scale()")
        for instance in leaving:
            await instance.stopped.wait()
        self._fleet.remove_instances(pool, count)
        self._count -= len(leaving)

    def restart_instance(self, index: int) -> None:
        """Kill instance *index*'s process now; the supervisor restarts it (budget applies)."""
        self._check_caller()
        self._instance(index).restart_now()

    @property
    def pids(self) -> list[int | None]:
        """The current process id of each instance (``None`` while not running), in index
        order."""
        return [instance.pid for instance in self._instances]


class _Launch(TaskStatus[None]):
    """Collects the instances' first starts: done when all are ready or the first one failed."""

    def __init__(self, count: int) -> None:
        self.remaining = count
        self.error: StartupError | None = None
        self.done = anyio.Event()

    def started(self, value: None = None) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()

    def fail(self, error: StartupError) -> None:
        if self.error is None:
            self.error = error
        self.done.set()


def _no_loop() -> object:
    raise RuntimeError("not entered")


def _result_or_error(request: Request) -> Reply | AimclusterError:
    error = request.exception()
    if error is None:
        return request.result()
    assert isinstance(error, AimclusterError)
    return error


def launch_cluster(
    tool: str | ToolSpec | Mapping[str, int] | Sequence[Pool | tuple[str | ToolSpec, int]],
    count: int = 1,
    *,
    routing: str = "least_busy",
    restart: RestartPolicy | bool = True,
    max_pending: int = 1024,
    transport: Transport | None = None,
    logger: structlog.typing.FilteringBoundLogger | None = None,
    fallback: Sequence[str] | None = None,
    failover_after: float | None = None,
) -> Cluster:
    """Describe a cluster of *count* instances of *tool*, or of several pools of tools;
    ``async with`` starts it.

    Entering the block returns once every instance shows its ready prompt::

        launch_cluster("aider", 3)
        launch_cluster({"aider": 4, "claude": 2}, fallback=["claude", "aider"])
        launch_cluster([Pool("aider", 4, tags={"cheap"}), Pool(my_spec, 2, name="mine")])

    :param tool: a registered tool name (see :func:`aimcluster.tools.names`) or a ToolSpec;
        or several pools: ``{name: count}``, or a list of :class:`Pool` or ``(tool, count)``
    :param routing: ``"least_busy"`` (late binding), ``"round_robin"`` or ``"sticky"``; across
        pools, least-busy picks the pool with the least work per instance, round-robin and
        sticky pick among every healthy instance of the pools a prompt may go to
    :param restart: a :class:`RestartPolicy`, ``True`` for the default one, ``False`` for none
        (a :class:`Pool` may have its own)
    :param max_pending: how many prompts may wait in a pool's queues before ``submit`` waits
    :param transport: where processes run (default: :class:`LocalTransport`)
    :param logger: a structlog logger (default: the app's structlog configuration, else its
        standard ``logging`` configuration of the ``aimcluster`` logger, else none: nothing
        is printed)
    :param fallback: the failover order, as pool names: a prompt (or a lease not granted yet)
        whose pool is rate-limited, has failed, or, with *failover_after*, has kept it queued
        that long, moves to the next pool in this order that it has not left before; a pool
        not named here neither sends nor takes work this way
    :param failover_after: seconds a prompt may wait in its pool's queue before it moves on
        (default: it waits as long as it takes)
    :raises ValueError: for an unknown tool or routing name, ``count < 1``, or a failover
        order that names no pool
    """
    pools = pools_of(tool, count)
    if max_pending < 1:
        raise ValueError(f"max_pending must be >= 1, got {max_pending!r}")
    if restart is True:
        policy: RestartPolicy | None = RestartPolicy()
    elif restart is False:
        policy = None
    else:
        policy = restart
    names = [pool.name for pool in pools]
    order = () if fallback is None else tuple(fallback)
    if isinstance(fallback, str):
        raise TypeError(f"fallback must be a sequence of pool names, got the string {fallback!r}")
    for name in order:
        if name not in names:
            raise ValueError(f"fallback names no pool {name!r}; the pools are: {', '.join(names)}")
    if len(set(order)) != len(order):
        raise ValueError(f"fallback names a pool twice: {list(order)!r}")
    if failover_after is not None:
        if not failover_after > 0:
            raise ValueError(f"failover_after must be > 0, got {failover_after!r}")
        if not order:
            raise ValueError("failover_after needs a failover order (fallback=...)")
    return Cluster(
        pools,
        routing=routing,
        restart=policy,
        max_pending=max_pending,
        transport=transport or LocalTransport(),
        logger=logger or _default_logger(),
        fallback=order,
        failover_after=failover_after,
    )


def _default_logger() -> structlog.typing.FilteringBoundLogger:
    """The app's structlog configuration if it made one (its level applies), else its
    standard logging's ``aimcluster`` logger if that has a handler, else nothing: a library
    does not print unasked. Asked at each event, not once (see :mod:`aimcluster._base.logs`)."""
    return library_logger("aimcluster")
