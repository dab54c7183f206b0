"""The cluster: N supervised instances of one tool behind one routed, async API."""

from __future__ import annotations

import math
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Literal, overload

import anyio
import anyio.lowlevel
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._dispatch import Dispatcher
from ._exceptions import (
    AimclusterError,
    ClusterClosedError,
    NoHealthyInstancesError,
    StartupError,
    single_error,
)
from ._instance import Instance, InstanceState
from ._lease import LeaseRequest, Session
from ._logging import library_logger
from ._metrics import ClusterMetrics
from ._policy import RestartPolicy
from ._ratelimit import RateLimiter
from ._request import Reply, Request, Ticket
from ._routing import make_router
from ._spec import ToolSpec
from ._state import StateDirectory, uses_state
from ._state import resolve as resolve_state
from ._transport import LocalTransport
from .abc import Transport
from .tools import get as get_tool

__all__ = ["Cluster", "launch_cluster"]

# Linux's canonical-mode line limit (N_TTY_BUF_SIZE): a longer line sent to a pty is truncated.
_PTY_MAX_LINE = 4095


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
        spec: ToolSpec,
        count: int,
        *,
        routing: str,
        restart: RestartPolicy | None,
        max_pending: int,
        transport: Transport,
        logger: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.spec = spec
        self._count = count
        self._router = make_router(routing)
        self._restart = restart
        self._max_pending = max_pending
        self._transport = transport
        self._log = logger.bind(tool=spec.name)
        self._healthy: list[int] = list(range(count))
        # One rate-limit pause for all instances: a 429 on one holds every prompt back.
        self._limiter = RateLimiter()
        self._stack: AsyncExitStack | None = None
        self._closing = False
        # Event loop objects; created on entry, since launch_cluster() itself is synchronous.
        self._dispatcher: Dispatcher
        self._instances: list[Instance] = []
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
        # The instances' {state} directories, while the cluster runs (None: the spec has none).
        self._state: StateDirectory | None = None

    def _new_instance(self, index: int) -> Instance:
        spec = self.spec
        if self._state is not None:
            spec = resolve_state(spec, self._state.for_instance(index))
        return Instance(
            index=index,
            spec=spec,
            transport=self._transport,
            dispatcher=self._dispatcher,
            policy=self._restart,
            log=self._log,
            on_state=self._on_state,
            requeue=self._requeue,
            limiter=self._limiter,
            clock=self._limiter.clock,
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Cluster:
        if self._instances:
            raise RuntimeError("a Cluster can be entered only once")
        self._transport.check(self.spec)
        token = anyio.lowlevel.current_token()
        self._current_loop = token.backend_class.current_token
        self._owner_loop = token.native_token
        self._owner_thread = threading.get_ident()
        self._closed = anyio.Event()
        # Finished submit() requests, in completion order, for read_any().
        self._completed_in, self._completed_out = anyio.create_memory_object_stream[Request](
            math.inf
        )
        self._dispatcher = Dispatcher(self._count, max_pending=self._max_pending)
        # anyio.current_time() without looking the backend up at every call: a prompt reads
        # the clock three times.
        self._limiter.clock = token.backend_class.current_time
        async with AsyncExitStack() as stack:
            if uses_state(self.spec):
                self._state = StateDirectory.create(self.spec.name)
                # Removed last, once every process that used it has stopped.
                stack.callback(self._state.remove)
            self._instances = [self._new_instance(index) for index in range(self._count)]
            self._task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.push_async_callback(self._shutdown_shielded)
            launch = _Launch(self._count)
            for instance in self._instances:
                self._task_group.start_soon(self._host, instance, launch)
            await launch.done.wait()
            if launch.error is None:
                self._log.info("cluster_started", size=self.size, routing=self._router.name)
                self._stack = stack.pop_all()
        # Raised once the stack has shut the other instances down, and outside the task group,
        # which would wrap it in an ExceptionGroup.
        if launch.error is not None:
            raise launch.error
        return self

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
        self._dispatcher.close()
        for instance in self._instances:
            instance.stop()
        for instance in self._instances:
            await instance.stopped.wait()
        self._completed_in.close()
        self._completed_out.close()
        self._log.info("cluster_stopped", size=self.size)
        self._closed.set()

    def _check_caller(self) -> None:
        """Raise :class:`RuntimeError` unless called in the thread and event loop that
        entered the cluster. On the data path: two comparisons when all is well."""
        if threading.get_ident() == self._owner_thread:
            try:
                if self._current_loop() is self._owner_loop:
                    return
            except RuntimeError:
                pass  # this thread runs no event loop (any more)
        raise self._wrong_caller()

    def _wrong_caller(self) -> RuntimeError:
        if self._owner_thread is None:
            return RuntimeError(
                f"the cluster of {self.spec.name!r} was not entered: enter the cluster with "
                "`async with launch_cluster(...) as cluster:` first"
            )
        where = (
            "another thread"
            if threading.get_ident() != self._owner_thread
            else "another event loop (or none)"
        )
        return RuntimeError(
            f"the cluster of {self.spec.name!r} was used from {where}: a cluster belongs to the "
            "event loop that started it; from another thread use anyio.from_thread.run() or a "
            "BlockingPortal (anyio.from_thread.start_blocking_portal) to call it in its own loop"
        )

    # -- routing ----------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The number of instance slots."""
        return self._count

    def _on_state(self, instance: Instance) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        if instance.state in (InstanceState.READY, InstanceState.BUSY):
            return  # the per-prompt flip: it cannot change which instances are healthy
        self._refresh_healthy()
        if instance.state is InstanceState.FAILED and not self._closing:
            self._reroute_from(instance.index, why="has failed (restart budget spent)")

    def _refresh_healthy(self) -> None:
        self._healthy = [i.index for i in self._instances if i.healthy]

    def _reroute_from(self, index: int, *, why: str) -> None:
        """Instance *index* is gone for good: move its queued work to the healthy instances."""
        for item in self._dispatcher.take_private(index):
            if item.pinned or not self._healthy:
                item.resolve(self._no_healthy(index if item.pinned else None, why=why))
            else:
                item.target = self._router.route(item.key, self._healthy)
                self._dispatcher.put_nowait(item)
        if not self._healthy:
            self._dispatcher.fail_shared(self._no_healthy(None))

    def _no_healthy(
        self, index: int | None, *, why: str = "has failed (restart budget spent)"
    ) -> NoHealthyInstancesError:
        if index is not None:
            return NoHealthyInstancesError(
                f"instance {index} {why} and the prompt was pinned to it"
            )
        return NoHealthyInstancesError(
            f"all {self.size} instances of {self.spec.name!r} have failed (restart budget spent)"
        )

    def _requeue(self, request: Request) -> None:
        if not request.pinned:
            # Any instance may take the retry; the one that failed is restarting, so another
            # ready instance normally gets there first.
            request.target = None
        if request.pinned and request.target not in self._healthy:
            request.resolve(self._no_healthy(request.target))
        elif not self._healthy:
            request.resolve(self._no_healthy(None))
        else:
            self._dispatcher.put_nowait(request)

    def _new_request(
        self,
        prompt: str,
        *,
        key: str | None,
        instance: int | None,
        timeout: float | None,
        retries: int,
    ) -> Request:
        if self._closing:
            raise ClusterClosedError("the cluster is shut down")
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        if instance is not None and not 0 <= instance < self.size:
            raise ValueError(f"instance must be in range(0, {self.size}), got {instance!r}")
        try:
            prompt.encode(self.spec.encoding)
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"the prompt cannot be written in the tool's encoding ({exc.encoding}): "
                f"{exc.object[exc.start : exc.end]!r} at position {exc.start}"
            ) from None
        # Refuses a prompt the tool would not read as one input (a line break, mostly).
        # With the largest input number it may go as: a numbered input's line grows with it.
        text = self.spec.input_for(prompt, 10**9)
        if self.spec.pty:
            for line in text.encode(self.spec.encoding).split(b"\n"):
                if len(line) > _PTY_MAX_LINE:
                    raise ValueError(
                        f"a prompt line of {len(line)} bytes is longer than a terminal "
                        f"accepts ({_PTY_MAX_LINE} bytes); use pipes (pty=False) for long input"
                    )
        timeout = self.spec.reply_timeout if timeout is None else timeout
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        deadline = None if timeout is None else anyio.current_time() + timeout
        return Request(
            prompt=prompt,
            key=key,
            target=instance,
            pinned=instance is not None,
            deadline=deadline,
            retries=retries,
        )

    async def _enqueue(self, item: Request | LeaseRequest) -> None:
        if item.pinned:
            assert item.target is not None
            if item.target >= self._count:
                raise ValueError(f"instance must be in range(0, {self._count}), got {item.target}")
            if item.target not in self._healthy:
                raise self._no_healthy(item.target)
        else:
            if not self._healthy:
                raise self._no_healthy(None)
            item.target = self._router.route(item.key, self._healthy)
        await self._dispatcher.put(item)

    # -- sending ----------------------------------------------------------------------------

    async def send(
        self,
        prompt: str,
        *,
        key: str | None = None,
        instance: int | None = None,
        timeout: float | None = None,
        retries: int = 0,
    ) -> Reply:
        """Send *prompt* to an instance chosen by the routing strategy and return its reply.

        :param key: the sticky routing key (``sticky`` routing keeps a key on one instance)
        :param instance: send to this instance index, whatever the routing
        :param timeout: seconds until :class:`ReplyTimeoutError` (default
            ``ToolSpec.reply_timeout``), counted from now, queueing included
        :param retries: re-send up to this many times if the instance crashes or stalls
            before the reply is complete (prompts to agents are not idempotent: opt in)
        """
        self._check_caller()
        request = self._new_request(
            prompt, key=key, instance=instance, timeout=timeout, retries=retries
        )
        try:
            await self._enqueue(request)
            return await request.wait()
        except anyio.get_cancelled_exc_class():
            request.abandon()
            raise

    async def submit(
        self,
        prompt: str,
        *,
        key: str | None = None,
        instance: int | None = None,
        timeout: float | None = None,
        retries: int = 0,
    ) -> Ticket:
        """Route *prompt* now and return without waiting for its reply.

        Collect the reply by awaiting the ticket, or with :meth:`read_any`. Waits while
        ``max_pending`` prompts are queued.
        """
        self._check_caller()
        request = self._new_request(
            prompt, key=key, instance=instance, timeout=timeout, retries=retries
        )
        request.add_done_callback(self._completed_in.send_nowait)
        await self._enqueue(request)
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
        return_exceptions: Literal[True],
        timeout: float | None = ...,
        retries: int = ...,
    ) -> list[Reply | AimclusterError]: ...

    async def map(
        self,
        prompts: Iterable[str],
        *,
        keys: Iterable[str | None] | None = None,
        return_exceptions: bool = False,
        timeout: float | None = None,
        retries: int = 0,
    ) -> list[Reply] | list[Reply | AimclusterError]:
        """Run *prompts* concurrently across the instances; results come in input order.

        With ``return_exceptions=False`` the first error is raised at once and the prompts
        not yet sent are withdrawn; with ``True`` each failed prompt's error takes its place.
        """
        self._check_caller()
        prompt_list = list(prompts)
        key_list = [None] * len(prompt_list) if keys is None else list(keys)
        if len(key_list) != len(prompt_list):
            raise ValueError(f"got {len(key_list)} keys for {len(prompt_list)} prompts")
        requests = [
            self._new_request(p, key=k, instance=None, timeout=timeout, retries=retries)
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
                    await self._enqueue(request)
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
        self, key: str | None = None, *, instance: int | None = None
    ) -> AsyncIterator[Session]:
        """Hold one instance exclusively for the duration of the block.

        While the block runs, no other prompt goes to that instance: what a multi-step agent
        job needs (``/add``, then instruct, then ``/drop``).
        """
        self._check_caller()
        if self._closing:
            raise ClusterClosedError("the cluster is shut down")
        lease = LeaseRequest(key=key, target=instance, pinned=instance is not None)
        try:
            await self._enqueue(lease)
            await lease.wait_granted()
            yield Session(self, lease)
        finally:
            lease.release()

    # -- observing --------------------------------------------------------------------------

    def metrics(self) -> ClusterMetrics:
        """A snapshot of the cluster's and each instance's counters and state.

        Once the cluster is shut down nothing changes any more, and any thread may read it.
        """
        if not (self._closing and self._closed.is_set()):
            self._check_caller()
        return ClusterMetrics(
            instances=tuple(instance.metrics() for instance in self._instances),
            queued=self._dispatcher.queued(None),
        )

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
                await self._changed.wait()
        return metrics

    async def restart(self, index: int, *, timeout: float | None = None) -> None:
        """Restart instance *index* gracefully: after its current prompt or lease, it is
        stopped (``exit_command``, SIGTERM, SIGKILL) and started afresh. Returns once it is
        ready again. A requested restart does not count against the restart budget."""
        self._check_caller()
        instance = self._instances[index]
        before = instance.restarts
        instance.request_restart()
        await self.wait_for(
            lambda m: (
                m.instances[index].state == "failed"
                or (m.instances[index].restarts > before and m.instances[index].state == "ready")
            ),
            timeout=timeout,
        )

    async def scale(self, count: int) -> None:
        """Grow or shrink the cluster to *count* instances.

        New instances are ready when this returns. Shrinking removes the highest indices: they
        take no new work, finish their current prompt or lease, then stop gracefully; work
        queued for them moves to the others. With sticky routing only the keys of removed
        instances move (rendezvous hashing).
        """
        self._check_caller()
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be an integer >= 1, got {count!r}")
        if self._closing:
            raise ClusterClosedError("the cluster is shut down")
        while self._count < count:
            await self._grow()
        if count < self._count:
            await self._shrink(count)
        self._log.info("cluster_scaled", size=self._count)

    async def _grow(self) -> None:
        index = self._dispatcher.add_slot()
        instance = self._new_instance(index)
        self._instances.append(instance)
        self._count += 1
        launch = _Launch(1)
        self._task_group.start_soon(self._host, instance, launch)
        await launch.done.wait()
        if launch.error is not None:
            await instance.stopped.wait()
            self._instances.pop()
            self._dispatcher.remove_slots(index)
            self._count -= 1
            self._refresh_healthy()
            raise launch.error
        self._refresh_healthy()

    async def _shrink(self, count: int) -> None:
        leaving = self._instances[count:]
        for instance in leaving:
            instance.retire()
        self._refresh_healthy()  # they are no longer healthy: nothing new is routed there
        for instance in leaving:
            self._reroute_from(instance.index, why="was removed by scale()")
        for instance in leaving:
            await instance.stopped.wait()
        del self._instances[count:]
        self._dispatcher.remove_slots(count)
        self._count = count
        self._refresh_healthy()

    def restart_instance(self, index: int) -> None:
        """Kill instance *index*'s process now; the supervisor restarts it (budget applies)."""
        self._check_caller()
        self._instances[index].restart_now()

    @property
    def pids(self) -> list[int | None]:
        """The current process id of each instance (``None`` while not running)."""
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
    tool: str | ToolSpec,
    count: int = 1,
    *,
    routing: str = "least_busy",
    restart: RestartPolicy | bool = True,
    max_pending: int = 1024,
    transport: Transport | None = None,
    logger: structlog.typing.FilteringBoundLogger | None = None,
) -> Cluster:
    """Describe a cluster of *count* instances of *tool*; ``async with`` starts it.

    Entering the block returns once every instance shows its ready prompt.

    :param tool: a registered tool name (see :func:`aimcluster.tools.names`) or a ToolSpec
    :param routing: ``"least_busy"`` (late binding), ``"round_robin"`` or ``"sticky"``
    :param restart: a :class:`RestartPolicy`, ``True`` for the default one, ``False`` for none
    :param max_pending: how many prompts may wait in the queues before ``submit`` waits
    :param transport: where processes run (default: :class:`LocalTransport`)
    :param logger: a structlog logger (default: the app's structlog configuration, else its
        standard ``logging`` configuration of the ``aimcluster`` logger, else none: nothing
        is printed)
    :raises ValueError: for an unknown tool or routing name, or ``count < 1``
    """
    spec = tool if isinstance(tool, ToolSpec) else get_tool(tool)
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an integer >= 1, got {count!r}")
    if max_pending < 1:
        raise ValueError(f"max_pending must be >= 1, got {max_pending!r}")
    if restart is True:
        policy: RestartPolicy | None = RestartPolicy()
    elif restart is False:
        policy = None
    else:
        policy = restart
    return Cluster(
        spec,
        count,
        routing=routing,
        restart=policy,
        max_pending=max_pending,
        transport=transport or LocalTransport(),
        logger=logger or _default_logger(),
    )


def _default_logger() -> structlog.typing.FilteringBoundLogger:
    """The app's structlog configuration if it made one (its level applies), else its
    standard logging's ``aimcluster`` logger if that has a handler, else nothing: a library
    does not print unasked. Asked at each event, not once (see :mod:`aimcluster._logging`)."""
    return library_logger("aimcluster")
