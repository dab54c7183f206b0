"""One supervised tool instance: a slot that keeps a process alive and feeds it prompts.

The data path of a prompt, in order: the dispatcher hands it to the instance's task
(:meth:`Instance._serve`), which writes it to the process; the process's reader task
(:meth:`Instance._pump`) feeds output to the instance's :class:`~._exchange.Exchange`, which
resolves the request the moment its reply is complete, and tells the instance's task through
the frame queue; the task, in :meth:`Instance._send_prompt`, goes on to the next prompt or
deals with what went wrong.

A plain prompt (no deadline, no stall watchdog, no lease) takes two short cuts past the task
(:meth:`Instance._try_begin`): a put that finds the instance idle writes it at once, and the
reader, having completed a reply, writes the next queued prompt itself or leaves the instance
idle with its task still asleep (:meth:`Instance._carry_on`). The task wakes only for what
needs it.
"""

from __future__ import annotations

import enum
import math
import random
import re
import signal
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import anyio.lowlevel
import attrs
from anyio.abc import TaskStatus

from .._base.channel import Channel
from .._base.errors import (
    AimclusterError,
    ClusterClosedError,
    InstanceCrashedError,
    ReplyTimeoutError,
    StartupError,
)
from .._base.framing import Frame, clean_reply
from .._base.metrics import InstanceMetrics, percentile
from .._base.policy import RestartBudget, RestartPolicy
from .._base.ratelimit import RateLimiter
from .._base.redact import redact_argv
from .._base.request import Request, RequestState
from .exchange import (
    BREAKDOWNS,
    Answer,
    Breakdown,
    Exchange,
    Outcome,
    Overflow,
    Unsolicited,
)
from .exchange import InstanceStalledError as InstanceStalledError

if TYPE_CHECKING:
    import structlog

    from .._base.dispatch import Dispatcher, Queued
    from .._base.lease import LeaseRequest
    from .._base.spec import ToolSpec
    from ..abc import ProcessHandle, Transport

__all__ = ["Instance", "InstanceStalledError", "InstanceState"]

# After the process exits, how long its output may take to reach EOF. Only a grandchild that left
# our process group (setsid) can hold the stream open past the group SIGKILL.
_EOF_GRACE = 1.0


async def _wait_all(events: Iterable[anyio.Event], *, timeout: float) -> None:
    with anyio.move_on_after(timeout):
        for event in events:
            await event.wait()


# Events the reader may queue for the instance's task. Frames a tool prints at start-up,
# before its first input, are dropped past that; later ones restart it (Exchange.feed).
_FRAME_BUFFER = 16


class InstanceState(enum.StrEnum):
    """A slot's life cycle: ``starting -> ready <-> busy -> restarting -> failed | stopped``."""

    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


class _Signal(enum.Enum):
    #: Put on the frame queue by the exit watcher, after every frame read before EOF.
    EXITED = "exited"
    #: Put there for the dispatcher when the reader had parked the instance as idle while its
    #: task still waited for a reply (see _carry_on): there is work, or an interrupt, for it.
    WAKE = "wake"


_EXITED, _WAKE = _Signal.EXITED, _Signal.WAKE
_Event = Frame | Breakdown | _Signal


class _Ended(enum.Enum):
    """Why a process's service ended."""

    EXITED = "exited"  # it went away by itself
    KILL = "kill"  # it is alive but unusable (timed out, stalled, flooded, failed a probe)
    RECYCLE = "recycle"  # stop it gracefully and start a fresh one (no budget, no backoff)
    RETIRE = "retire"  # stop it gracefully for good (the cluster shrank)


@attrs.define(eq=False)
class Instance:
    """A slot in the cluster. Its index is stable; the process behind it comes and goes."""

    #: The instance's index in the cluster, unique across its pools.
    index: int
    #: Its index in its pool's dispatcher.
    slot: int
    #: The name of its pool (:attr:`Reply.tool`).
    tool: str
    spec: ToolSpec
    transport: Transport
    dispatcher: Dispatcher
    policy: RestartPolicy | None
    log: structlog.typing.FilteringBoundLogger
    #: Called (synchronously) whenever the state changes.
    on_state: Callable[[Instance], None]
    #: Called with a request whose attempt failed but which may be retried.
    requeue: Callable[[Request], None]
    clock: Callable[[], float] = anyio.current_time
    #: The pool's rate-limit pause, shared by every instance of the pool.
    limiter: RateLimiter = attrs.field(factory=RateLimiter)
    #: With a failover order: called with a prompt that its pool cannot serve now (rate
    #: limited), and whether it is held in a lease; returns whether it took the prompt over
    #: (moved it to another pool, or failed it so that its job can move).
    failover: Callable[[Request, bool], bool] | None = None

    state: InstanceState = attrs.field(init=False, default=InstanceState.STARTING)
    pid: int | None = attrs.field(init=False, default=None)
    node: str | None = attrs.field(init=False, default=None)
    restarts: int = attrs.field(init=False, default=0)
    stopped: anyio.Event = attrs.field(init=False, factory=anyio.Event)

    #: The prompt in flight and what the output means for it; the reply counters.
    _exchange: Exchange = attrs.field(init=False)
    _budget: RestartBudget | None = attrs.field(init=False, default=None)
    _life_scope: anyio.CancelScope = attrs.field(init=False, factory=anyio.CancelScope)
    _stopping: bool = attrs.field(init=False, default=False)
    _retiring: bool = attrs.field(init=False, default=False)
    _restart_requested: bool = attrs.field(init=False, default=False)
    _plog: structlog.typing.FilteringBoundLogger = attrs.field(init=False)
    # Per-process state, reset by _spawn.
    _handle: ProcessHandle | None = attrs.field(init=False, default=None)
    _exit_code: int | None = attrs.field(init=False, default=None)
    _wait_scope: anyio.CancelScope | None = attrs.field(init=False, default=None)
    #: Set while a lease holds the instance: its prompts are never requeued, as they need the
    #: state built up in this process. The scope is its wait for the next prompt.
    _leased: bool = attrs.field(init=False, default=False)
    _lease_wait: anyio.CancelScope | None = attrs.field(init=False, default=None)
    #: The scope of the reply being awaited, when it has a deadline or a watchdog (see
    #: _send_prompt).
    _reply_scope: anyio.CancelScope | None = attrs.field(init=False, default=None)
    _stderr_tail: bytearray = attrs.field(init=False, factory=bytearray)
    #: The reader's frames to this instance's task (None between processes).
    _frames: Channel[_Event] | None = attrs.field(init=False, default=None)
    #: The task waits for a plain reply (no deadline, no watchdog, no lease, not a probe): the
    #: reader may write the next queued prompt as soon as it completes this one.
    _pipeline: bool = attrs.field(init=False, default=False)
    #: The end of a prompt _try_begin could not write at once: the task sends it.
    _unsent: bytes = attrs.field(init=False, default=b"")
    #: What an offer took and wrote while the task waited in the dispatcher's get.
    _offered: Request | None = attrs.field(init=False, default=None)
    #: Held while the task or the reader waits to write: one waiter per fd at a time.
    _write_lock: anyio.Lock | None = attrs.field(init=False, default=None)
    _served: int = attrs.field(init=False, default=0)
    _recycle_after: int | None = attrs.field(init=False, default=None)
    _recycle_at: float = attrs.field(init=False, default=math.inf)
    _next_probe_at: float = attrs.field(init=False, default=math.inf)

    def __attrs_post_init__(self) -> None:
        self._plog = self.log.bind(instance=self.index, pid=None)
        if self.policy is not None:
            self._budget = RestartBudget(self.policy)
        self._exchange = Exchange(
            spec=self.spec,
            index=self.index,
            tool=self.tool,
            clock=self.clock,
            limiter=self.limiter,
            log=self._plog,
            failover=None if self.failover is None else self._fail_over,
        )

    # -- public surface for the cluster -----------------------------------------------------

    def stop(self) -> None:
        """Stop for good, gracefully (``exit_command``, SIGTERM, SIGKILL). Returns at once;
        wait on :attr:`stopped`."""
        self._stopping = True
        self._life_scope.cancel()

    def restart_now(self) -> None:
        """Kill the current process so that the supervisor starts a new one."""
        if self._handle is not None and self._exit_code is None:
            self._handle.signal_group(signal.SIGKILL)

    def request_restart(self) -> None:
        """Restart gracefully once the current prompt or lease is done."""
        self._restart_requested = True
        self._wake_idle()

    def retire(self) -> None:
        """Take no new work, finish the current prompt or lease, then stop gracefully."""
        self._retiring = True
        self._wake_idle()

    def _wake_idle(self) -> None:
        self.dispatcher.interrupt(self.slot)

    @property
    def healthy(self) -> bool:
        """Whether the slot can still take work (possibly after a restart)."""
        return not self._retiring and self.state not in (
            InstanceState.FAILED,
            InstanceState.STOPPED,
        )

    def metrics(self) -> InstanceMetrics:
        exchange = self._exchange
        return InstanceMetrics(
            index=self.index,
            pid=self.pid,
            state=self.state.value,
            node=self.node,
            sent=exchange.sent,
            completed=exchange.completed,
            failed=exchange.failed,
            timeouts=exchange.timeouts,
            restarts=self.restarts,
            in_flight=exchange.in_flight,
            queued=self.dispatcher.queued(self.slot),
            latency_p50=percentile(exchange.latencies, 50),
            latency_p95=percentile(exchange.latencies, 95),
            rate_limited=exchange.rate_limited,
            usage=exchange.usage,
            tool_retries=exchange.tool_retries,
            tool=self.tool,
        )

    # -- supervision --------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The slot's whole life: start, serve, restart within budget, until stopped.

        Reports readiness through *task_status* once the first process showed its prompt; a
        first start that fails raises :class:`StartupError` instead.
        """
        try:
            with self._life_scope:
                await self._supervise(task_status)
        finally:
            if self.state is not InstanceState.FAILED:
                self._set_state(InstanceState.STOPPED)
            self.stopped.set()

    async def _supervise(self, task_status: TaskStatus[None]) -> None:
        started = False
        while True:
            try:
                ended = await self._run_process(task_status if not started else None)
                started = True
            except StartupError as exc:
                if not started:
                    raise
                self._plog.warning("instance_start_failed", error=str(exc).splitlines()[0])
                ended = _Ended.EXITED
            if ended is _Ended.RETIRE:
                return
            if ended is _Ended.RECYCLE:
                self.restarts += 1
                continue
            if self.policy is None or self._budget is None:
                self._set_state(InstanceState.FAILED)
                return
            if not self._budget.try_spend(self.clock()):
                self._set_state(InstanceState.FAILED)
                self._plog.error(
                    "instance_failed",
                    reason="restart budget spent",
                    max_restarts=self.policy.max_restarts,
                    window=self.policy.window,
                )
                if self.policy.quarantine is None:
                    return
                await anyio.sleep(self.policy.quarantine)
                self._budget.reset()
                self._plog.info("instance_quarantine_over")
                continue
            delay = self.policy.delay(self._budget.streak)
            self._set_state(InstanceState.RESTARTING)
            self._plog.info("instance_restarting", attempt=self._budget.streak, delay=delay)
            await anyio.sleep(delay)
            self.restarts += 1

    def _set_state(self, state: InstanceState) -> None:
        if state is not self.state:
            self.state = state
            self.on_state(self)

    # -- one process ----------------------------------------------------------------------

    async def _run_process(self, task_status: TaskStatus[None] | None) -> _Ended:
        """Start a process, wait for its prompt, serve until it ends; always leave it dead."""
        if self.spec.oneshot:
            return await self._run_slot(task_status)
        self._set_state(InstanceState.STARTING)
        handle = await self._spawn()
        # From the reader and the exit watcher.
        frames = self._frames = Channel[_Event](_FRAME_BUFFER, senders=2)
        ended = _Ended.EXITED
        startup_error: StartupError | None = None
        try:
            async with anyio.create_task_group() as tg:
                eof, stderr_eof = anyio.Event(), self._start_stderr_pump(tg, handle)
                tg.start_soon(self._pump, handle, frames, eof)
                tg.start_soon(self._watch_exit, handle, (eof, stderr_eof), frames)
                try:
                    await self._await_ready(frames)
                except StartupError as exc:
                    # Raised outside the task group, which would wrap it in an ExceptionGroup.
                    startup_error = exc
                else:
                    if task_status is not None:
                        task_status.started()
                    ended = await self._serve(handle, frames)
                tg.cancel_scope.cancel()
            if startup_error is not None:
                raise startup_error
        finally:
            graceful = ended in (_Ended.RECYCLE, _Ended.RETIRE) or (
                self._stopping and ended is _Ended.EXITED
            )
            with anyio.move_on_after(self.spec.shutdown_grace * 2 + _EOF_GRACE, shield=True):
                await self._terminate(handle, graceful=graceful, reason=ended)
            frames.close()
            self._frames = None
            self.pid = None
        return ended

    async def _run_slot(self, task_status: TaskStatus[None] | None) -> _Ended:
        """A one-shot tool's slot: no process between prompts, one process per prompt."""
        self._exit_code = None
        self._exchange.reset(self._plog)
        self._served = 0
        self._recycle_after, self._recycle_at = None, math.inf
        self._next_probe_at = (
            math.inf if self.spec.probe is None else self.clock() + self.spec.probe.interval
        )
        self._set_state(InstanceState.READY)
        self._plog.info("instance_ready", banner="", oneshot=True)
        if task_status is not None:
            task_status.started()
        ended = await self._serve(None, Channel[_Event](0, senders=0))
        return _Ended.RETIRE if ended is _Ended.RETIRE else _Ended.RECYCLE

    def _fail_over(self, request: Request) -> bool:
        """Hand a prompt that this pool cannot serve now (rate-limited) to the cluster's
        failover; return whether it took it (then it is no longer this instance's)."""
        if self.failover is None or (request.pinned and not self._leased):
            return False
        return self.failover(request, self._leased)

    async def _wait_out_rate_limit(self, request: Request) -> None:
        """Hold the prompt back while the cluster pauses for a rate limit (until its deadline
        at most; the caller then finds it expired)."""
        if not self.limiter.paused:
            return
        self._plog.debug("prompt_held", reason="rate limit pause")
        with anyio.move_on_at(math.inf if request.deadline is None else request.deadline):
            await self.limiter.wait()

    async def _exchange_oneshot(self, request: Request, *, internal: bool) -> _Ended | None:
        """Run one process for one prompt; its output up to its exit is the reply."""
        if self._expired_in_queue(request):
            return None
        spec = self.spec.for_prompt(request.prompt)
        exchange = self._exchange
        try:
            handle = await self._spawn(spec)
        except StartupError as exc:
            self._plog.warning("instance_start_failed", error=str(exc).splitlines()[0])
            exchange.refused(request, exc, counted=not internal)
            return None
        counted = self._mark_sent(request, internal=internal)
        stall = self.spec.stall_timeout
        overflow: Overflow | None = None
        code: int | None = None
        eof = anyio.Event()

        async def watch_exit(tg: anyio.abc.TaskGroup, stderr_eof: anyio.Event) -> None:
            nonlocal code
            exit_code = await handle.wait()
            # Whatever it left behind would hold the output open (and must die anyway).
            handle.kill_all()
            await _wait_all((eof, stderr_eof), timeout=_EOF_GRACE)
            code = exit_code
            tg.cancel_scope.cancel()

        try:
            with anyio.CancelScope(deadline=exchange.wake_at()) as scope:
                self._reply_scope = scope
                async with anyio.create_task_group() as tg:
                    tg.start_soon(watch_exit, tg, self._start_stderr_pump(tg, handle))
                    while True:
                        try:
                            data = await handle.receive()
                        except (
                            anyio.EndOfStream,
                            anyio.ClosedResourceError,
                            anyio.BrokenResourceError,
                        ):
                            break
                        if stall is not None:
                            scope.deadline = exchange.watchdog()
                        # The reply is judged at the exit: output means something only if
                        # there is too much of it.
                        for outcome in exchange.feed(data):
                            assert isinstance(outcome, Overflow)
                            overflow = outcome
                        if overflow is not None:
                            break
                    eof.set()
                    if overflow is not None:
                        tg.cancel_scope.cancel()
                    else:
                        exchange.eof()
                    # Otherwise the exit watcher ends the task group once the process is gone.
            self._reply_scope = None
            self._exit_code = code
            with anyio.move_on_after(self.spec.shutdown_grace + _EOF_GRACE, shield=True):
                await self._terminate(handle, graceful=False, reason=_Ended.EXITED)
        except BaseException:
            self._reply_scope = None
            with anyio.move_on_after(self.spec.shutdown_grace + _EOF_GRACE, shield=True):
                await self._terminate(handle, graceful=False, reason=_Ended.EXITED)
            exchange.abandon(counted=counted)
            request.resolve(
                ClusterClosedError("the cluster was shut down while the prompt was in flight")
            )
            raise
        finally:
            self._exit_code = None
            self.pid = None
        if code is not None:
            self._plog.debug("oneshot_exited", exit_code=code)
        stderr = self._stderr_tail.decode(spec.encoding, "replace")
        failure = exchange.conclude(code, stderr=stderr, overflow=overflow)
        if failure is not None:
            self._fail(failure.request, failure.error, retry=failure.retry)
            return None
        resend = exchange.take_resend()
        if resend is not None and resend.live:  # not withdrawn meanwhile
            await self._wait_out_rate_limit(resend)
            return await self._exchange_oneshot(resend, internal=internal)
        return None

    async def _spawn(self, spec: ToolSpec | None = None) -> ProcessHandle:
        spec = self.spec if spec is None else spec
        try:
            # Shielded: a cancellation landing between the fork and our holding the handle
            # would leave a child nobody kills. Spawning itself is quick.
            with anyio.CancelScope(shield=True):
                handle = await self.transport.spawn(spec, instance=self.index)
        except OSError as exc:
            raise StartupError(
                f"could not start {redact_argv(spec.argv)!r}: {exc}", instance=self.index, output=""
            ) from exc
        self._handle = handle
        self._exit_code = None
        self._unsent = b""
        self._write_lock = anyio.Lock(fast_acquire=True)  # no pass of the loop when free
        self._stderr_tail.clear()
        self.pid = handle.pid
        self.node = handle.node
        self._plog = self.log.bind(instance=self.index, pid=handle.pid)
        self._exchange.reset(self._plog)
        self._plog.info("instance_started", argv=redact_argv(spec.argv), node=handle.node)
        if spec is not self.spec:
            return handle  # one process for one prompt: the slot's counters carry on
        self._served = 0
        now = self.clock()
        spread = self.spec.recycle_jitter
        rng = random.Random()
        self._recycle_after = (
            None
            if self.spec.max_prompts is None
            else max(1, round(self.spec.max_prompts * rng.uniform(1 - spread, 1 + spread)))
        )
        self._recycle_at = (
            math.inf
            if self.spec.max_age is None
            else now + self.spec.max_age * rng.uniform(1 - spread, 1 + spread)
        )
        self._next_probe_at = (
            math.inf if self.spec.probe is None else now + self.spec.probe.interval
        )
        return handle

    async def _pump(
        self,
        handle: ProcessHandle,
        frames: Channel[_Event],
        eof: anyio.Event,
    ) -> None:
        """The reader: output -> exchange -> frame queue. Waits for the consumer only with the
        queue full and a reply or a breakdown to hand over."""
        exchange = self._exchange
        stall = self.spec.stall_timeout
        settle = exchange.settle
        try:
            while True:
                data = b""
                try:
                    if settle is not None and exchange.pending:
                        # The output ends with the prompt: the reply is complete unless more
                        # output arrives within `settle` (each chunk starts the timer over).
                        with anyio.move_on_after(settle):
                            data = await handle.receive()
                    else:
                        data = await handle.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                    await self._hand_over(handle, frames, exchange.eof())
                    return
                if not data:
                    await self._hand_over(handle, frames, exchange.quiet())
                    continue
                scope = self._reply_scope
                if stall is not None and scope is not None:
                    # Output is a sign of life: push the watchdog back, never past the deadline.
                    scope.deadline = exchange.watchdog()
                outcomes = exchange.feed(data)
                if outcomes and await self._hand_over(handle, frames, outcomes):
                    # Let whoever a reply went to run before this looks for more output (as
                    # trio's own pipe streams do before every read): the caller sends its next
                    # prompt, the other readers do their work, and by then the next reply is
                    # often in, read without waking up for it. One pass per reply, no polling.
                    await anyio.lowlevel.checkpoint()
        finally:
            eof.set()
            frames.close_sender()

    async def _hand_over(
        self, handle: ProcessHandle, frames: Channel[_Event], outcomes: Sequence[Outcome]
    ) -> bool:
        """Act on what the output meant; return whether it completed a reply."""
        replied = False
        for outcome in outcomes:
            if type(outcome) is Frame:
                # The exchange resolved the request already: the caller is awake.
                replied = True
                if self._pipeline and outcome is outcomes[-1] and self._carry_on(frames):
                    continue  # the task does not need to wake
                # The instance's task learns from the queue that the exchange is over.
                # Hand over without a checkpoint when there is room.
                try:
                    frames.send_nowait(outcome)
                except anyio.WouldBlock:
                    await frames.send(outcome)
            elif isinstance(outcome, Answer):
                try:
                    await self._write(handle, outcome.data)
                except anyio.BrokenResourceError:
                    pass  # it exited; the exit watcher reports that
            elif isinstance(outcome, Unsolicited):
                # Start-up: for _await_ready. With the queue full, drop it rather than stop
                # reading (the task discards it before the first prompt).
                try:
                    frames.send_nowait(outcome.frame)
                except anyio.WouldBlock:
                    self._plog.debug("unsolicited_output_dropped", text=outcome.frame.text[-200:])
            else:
                assert isinstance(outcome, BREAKDOWNS)
                await self._break_down(frames, outcome)
        return replied

    async def _break_down(self, frames: Channel[_Event], event: Breakdown) -> None:
        """The framer gave up: a flood past the reply cap, more questions than allowed, or
        output that no longer lines up with the prompts.

        With a prompt in flight, that prompt fails (see _await_reply). With none (``idle``),
        no prompt is to blame: the exchange is broken, and the process is restarted at once.
        The task is woken wherever it waits.
        """
        if event.idle:
            # For work, for a lease's next prompt, or parked on the frame queue (the
            # dispatcher wakes it with _WAKE). If it waits elsewhere (writing a prompt, say),
            # the interrupt stays pending for this slot's next get, which then returns None
            # once: harmless, as the exit watcher's.
            self.dispatcher.interrupt(self.slot)
            if self._lease_wait is not None:
                self._lease_wait.cancel()
        # Also through the queue, for a task waiting on it for a reply.
        await frames.send(event)

    def _carry_on(self, frames: Channel[_Event]) -> bool:
        """Having just completed the reply the task waits for, write the next queued prompt
        or, with none queued, leave the instance idle, in the dispatcher's books, with the task
        still parked: a put then writes its prompt itself (the offer), or wakes the task with
        ``_WAKE``. Either way the task sleeps through a stream of plain prompts. False if the
        task has something to do first."""
        item = self.dispatcher.peek(self.slot)
        if item is not None:
            if not self._try_begin(item):
                return False
            self.dispatcher.remove(self.slot, item)
            return True
        if (
            self._exchange.resend is not None
            or self._exit_code is not None
            or frames.pending
            or min(self._recycle_at, self._next_probe_at) != math.inf  # waits with a timer
            or self._replacement_due()
        ):
            return False
        if not self.dispatcher.park(self.slot, self._try_begin, self._wake_task):
            return False
        self._set_state(InstanceState.READY)
        return True

    def _wake_task(self) -> None:
        """Wake the task parked by _carry_on: there is work it must take itself, or an
        interrupt."""
        if self._frames is not None:
            try:
                self._frames.send_nowait(_WAKE)
            except (anyio.WouldBlock, anyio.BrokenResourceError):
                pass  # it has frames to wake it already, or it is gone

    def _start_stderr_pump(self, tg: anyio.abc.TaskGroup, handle: ProcessHandle) -> anyio.Event:
        """Read a separate stderr, if the spec has one; the event is set at its EOF."""
        eof = anyio.Event()
        if self.spec.merge_stderr or self.spec.pty:
            eof.set()
        else:
            tg.start_soon(self._pump_stderr, handle, eof)
        return eof

    async def _pump_stderr(self, handle: ProcessHandle, eof: anyio.Event) -> None:
        """Keep the tail of a separate stderr for error reports, and log it."""
        try:
            while True:
                try:
                    data = await handle.receive_stderr()
                except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return
                self._stderr_tail += data
                del self._stderr_tail[:-8192]
                self._plog.debug("instance_stderr", data=data.decode(self.spec.encoding, "replace"))
        finally:
            eof.set()

    async def _watch_exit(
        self,
        handle: ProcessHandle,
        eofs: tuple[anyio.Event, anyio.Event],
        frames: Channel[_Event],
    ) -> None:
        """Exit detection: the transport's wait() (pidfd or waitpid), never polling."""
        try:
            code = await handle.wait()
            # Grandchildren left behind would hold the output open, and must die anyway.
            handle.kill_all()
            # The last of stdout and of a separate stderr come before the exit is reported: a
            # startup error or a crash must show what the tool said as it died.
            await _wait_all(eofs, timeout=_EOF_GRACE)
            self._exit_code = code
            self._plog.info("instance_exited", exit_code=code)
            # Wake whoever waits: an idle instance in the dispatcher, a reply wait on the
            # frame queue (behind every frame read before EOF), or any other wait.
            self.dispatcher.interrupt(self.slot)
            try:
                frames.send_nowait(_EXITED)
            except (anyio.WouldBlock, anyio.BrokenResourceError):
                pass
            if self._wait_scope is not None:
                self._wait_scope.cancel()
        finally:
            frames.close_sender()

    async def _await_ready(self, frames: Channel[_Event]) -> None:
        events = self.spec.events
        if events is not None and events.ready is None:
            # It prints nothing until its first input: ready as soon as it runs.
            self._set_state(InstanceState.READY)
            self._plog.info("instance_ready", banner="")
            return
        event: _Event | None = None
        with anyio.move_on_after(self.spec.startup_timeout), anyio.CancelScope() as scope:
            self._wait_scope = scope
            try:
                event = await frames.receive()
            except anyio.EndOfStream:
                await anyio.sleep_forever()  # output closed: the exit watcher will cancel us
        self._wait_scope = None
        if isinstance(event, Frame):
            self._set_state(InstanceState.READY)
            self._plog.info("instance_ready", banner=clean_reply(event.text)[-200:])
            return
        output = self._exchange.partial() + self._stderr_tail.decode(self.spec.encoding, "replace")
        if isinstance(event, Overflow):
            message = (
                f"printed more than {self.spec.max_reply_bytes} bytes without a ready prompt "
                f"matching {self.spec.ready!r}"
            )
            output = event.partial
        elif isinstance(event, BREAKDOWNS):
            message = str(self._exchange.breakdown_error(event, None))
            output = event.partial
        elif self._exit_code is not None:
            message = (
                f"{self.spec.name!r} exited with code {self._exit_code} before showing a ready "
                f"prompt matching {self.spec.ready!r}"
            )
        else:
            message = (
                f"{self.spec.name!r} showed no ready prompt matching {self.spec.ready!r} "
                f"within {self.spec.startup_timeout} s"
            )
        raise StartupError(message, instance=self.index, output=output, exit_code=self._exit_code)

    async def _serve(self, handle: ProcessHandle | None, frames: Channel[_Event]) -> _Ended:
        """Take work from the dispatcher until the process ends or must be replaced."""
        from .._base.lease import LeaseRequest

        while True:
            if self._exit_code is not None:
                return _Ended.EXITED
            due = self._due()
            if due is not None:
                return due
            if self._exchange.broken is not None:
                return _Ended.KILL
            item = None
            wake_at = min(self._next_probe_at, self._recycle_at)
            if wake_at == math.inf:
                # A prompt put while we wait may be written by the putter (_try_begin).
                try:
                    item = await self.dispatcher.get(self.slot, offer=self._take_offer)
                except BaseException:
                    self._offered = None
                    self._abandon_in_flight(counted=1)
                    raise
            else:
                with anyio.move_on_at(wake_at):
                    item = await self.dispatcher.get(self.slot)
            if item is None:
                # Woken without work: the process exited, a restart or retire was asked for,
                # it is time to recycle, the tool broke down (all checked at the top), or it
                # is time for a probe.
                if self._exit_code is None and self.clock() >= self._next_probe_at:
                    ended = await self._probe(handle, frames)
                    if ended is not None:
                        return ended
                continue
            if isinstance(item, LeaseRequest):
                ended = await self._serve_lease(item, handle, frames)
            else:
                assert isinstance(item, Request)
                begun, self._offered = item is self._offered, None
                ended = await self._send_prompt(item, handle, frames, pipeline=True, begun=begun)
            if ended is not None:
                return ended
            self._set_state(InstanceState.READY)
            if self.spec.probe is not None:
                self._next_probe_at = self.clock() + self.spec.probe.interval

    def _due(self) -> _Ended | None:
        """Whether the process should be replaced (or retired) now that it is idle."""
        if self._retiring:
            return _Ended.RETIRE
        if self._restart_requested:
            self._restart_requested = False
            self._plog.info("instance_recycling", reason="restart requested")
            return _Ended.RECYCLE
        if self._recycle_after is not None and self._served >= self._recycle_after:
            self._plog.info("instance_recycling", reason="max_prompts", prompts=self._served)
            return _Ended.RECYCLE
        if self.clock() >= self._recycle_at:
            self._plog.info("instance_recycling", reason="max_age")
            return _Ended.RECYCLE
        return None

    async def _probe(self, handle: ProcessHandle | None, frames: Channel[_Event]) -> _Ended | None:
        """Run the idle health check; a wrong or missing answer means restart."""
        probe = self.spec.probe
        assert probe is not None
        request = Request(
            prompt=probe.command,
            key=None,
            target=self.slot,
            pinned=True,
            deadline=self.clock() + probe.timeout,
        )
        ended = await self._send_prompt(request, handle, frames, internal=True)
        self._next_probe_at = self.clock() + probe.interval
        self._set_state(InstanceState.READY)
        if ended is not None:
            self._plog.warning("probe_failed", error=str(request.exception()))
            return ended
        error = request.exception()
        if error is not None:
            self._plog.warning("probe_failed", error=str(error))
            return _Ended.KILL
        text = request.result().text
        if re.search(probe.expect, text) is None:
            self._plog.warning("probe_failed", expected=probe.expect, reply=text[-200:])
            return _Ended.KILL
        self._plog.debug("probe_passed")
        return None

    async def _serve_lease(
        self,
        lease: LeaseRequest,
        handle: ProcessHandle | None,
        frames: Channel[_Event],
    ) -> _Ended | None:
        self._set_state(InstanceState.BUSY)
        lease.grant(self.index)
        self._leased = True
        try:
            while True:
                request = None
                broken = self._exchange.broken
                if self._exit_code is None and broken is None:
                    with anyio.CancelScope() as scope:
                        self._wait_scope = self._lease_wait = scope
                        request = await lease.next()
                    self._wait_scope = self._lease_wait = None
                    if request is None and not scope.cancelled_caught:
                        return None  # released: back to the pool
                if request is None:
                    # Woken by the exit watcher, or by the reader: the tool broke down.
                    broken = self._exchange.broken
                    if broken is not None:
                        lease.lose(broken)
                        return _Ended.KILL
                    lease.lose(self._crash_error(None, "exited while leased"))
                    return _Ended.EXITED
                ended = await self._send_prompt(request, handle, frames)
                if ended is not None:
                    lease.lose(request.exception() or self._crash_error(None, "was restarted"))
                    return ended
        except BaseException:
            lease.lose(ClusterClosedError("the cluster was shut down during the lease"))
            raise
        finally:
            self._leased = False
            lease.finish()

    async def _send_prompt(
        self,
        request: Request,
        handle: ProcessHandle | None,
        frames: Channel[_Event],
        *,
        internal: bool = False,
        pipeline: bool = False,
        begun: bool = False,
    ) -> _Ended | None:
        """Send one prompt and wait for its reply. Returns how the process ended, if it did.

        *internal* prompts (probes) are not counted in the metrics and never requeued. Without
        a *handle* (a one-shot tool) the prompt runs a process of its own. With *pipeline*,
        the reader may write the prompts queued behind this one as it completes each reply
        (see _try_begin); then this returns once the last of them is over. *begun*: an offer
        wrote it already (and it may even be answered already: then its frame is queued).
        """
        if begun:
            try:
                await self._send_unsent()
            except BaseException:
                self._abandon_in_flight(counted=1)
                raise
            return await self._await_reply(
                request, frames, counted=1, internal=False, pipeline=True
            )
        if not request.live:
            return None  # withdrawn (a lease's prompt cancelled before we got to it): unsent
        self._exchange.drop_resend(request)
        if self.limiter.paused and not internal and self._fail_over(request):
            return None
        await self._wait_out_rate_limit(request)
        if handle is None:
            return await self._exchange_oneshot(request, internal=internal)
        error = self._clear_stray(frames)
        if error is not None:
            # The prompt was not sent, and this process is done for.
            self._not_sent(request, error, internal=internal)
            return _Ended.KILL
        if self._expired_in_queue(request):
            return None
        data = self._exchange.wire(request)
        delivered = False
        if self._exit_code is None:
            self._exchange.begin_input()
            try:
                await self._write(handle, data)
                delivered = True
            except anyio.BrokenResourceError:
                await self._wait_exited()
        if not delivered:
            # The process was gone before it could read the prompt.
            self._not_sent(request, self._crash_error(request, "exited"), internal=internal)
            return _Ended.EXITED

        counted = self._mark_sent(request, internal=internal)
        return await self._await_reply(
            request, frames, counted=counted, internal=internal, pipeline=pipeline
        )

    def _not_sent(self, request: Request, error: InstanceCrashedError, *, internal: bool) -> None:
        """*request* could not be written, because the process is going: it is not lost, but
        requeued for the next instance free. A probe or a lease's prompt is for this process
        only: it fails with *error*."""
        if internal or self._leased:
            request.resolve(error)
        elif not request.done:  # not withdrawn meanwhile
            request.state = RequestState.QUEUED  # it may have been booked as sent
            self.requeue(request)

    async def _await_reply(
        self,
        request: Request,
        frames: Channel[_Event],
        *,
        counted: int,
        internal: bool,
        pipeline: bool,
    ) -> _Ended | None:
        exchange = self._exchange
        # The exit watcher wakes this wait through the frame queue. A cancel scope is needed
        # only for a deadline or the stall watchdog (the reader pushes the scope's deadline
        # back on output); which of the two fired is sorted out below.
        wake_at = exchange.wake_at()
        event: _Event | None = None
        try:
            if self._exit_code is not None:
                pass  # it exited while we were writing
            elif wake_at == math.inf:
                self._pipeline = pipeline and not internal
                try:
                    event = await self._next_event(frames)
                    while event is _WAKE and exchange.current is not None:
                        # A prompt went out since, maybe not all of it.
                        await self._send_unsent()
                        event = await self._next_event(frames)
                finally:
                    self._pipeline = False
                    self.dispatcher.unpark(self.slot)
            else:
                with anyio.CancelScope(deadline=wake_at) as scope:
                    self._reply_scope = scope
                    event = await self._next_event(frames)
                self._reply_scope = None
            if event is None or event is _EXITED:
                # The process exited, stalled or ran out of time. An exiting process may
                # still have completed the reply: frames read before EOF count.
                try:
                    event = frames.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    event = None
                if event is _WAKE:
                    event = None
        except BaseException:
            self._reply_scope = None
            exchange.abandon(counted=counted)
            request.resolve(
                ClusterClosedError("the cluster was shut down while the prompt was in flight")
            )
            raise
        if exchange.current is None and event is not _WAKE and not isinstance(event, Frame):
            # Every prompt of ours is answered (the reader completed them and parked the
            # instance): what woke us happened while it was idle, and no prompt is charged.
            if exchange.broken is not None:
                return _Ended.KILL
            if self._exit_code is not None:
                return _Ended.EXITED
        if isinstance(event, Frame) or (event is _WAKE and exchange.current is None):
            if exchange.current is not None:  # normally the reader completed it already
                assert isinstance(event, Frame)
                exchange.complete(event)
            # Answered before all of it was written (a multi-line prompt to a REPL): the rest
            # still goes, as a blocking write would have sent it.
            await self._send_unsent()
            resend = exchange.take_resend()
            if resend is not None and resend.live:  # not withdrawn meanwhile
                return await self._send_prompt(
                    resend, self._handle, frames, internal=internal, pipeline=pipeline
                )
            return None
        breakdown = event if isinstance(event, BREAKDOWNS) else None
        failure = exchange.give_up(request, breakdown, exit_code=self._exit_code, counted=counted)
        if failure.unsent:
            assert isinstance(failure.error, InstanceCrashedError)
            self._not_sent(failure.request, failure.error, internal=internal)
            return _Ended.KILL
        self._fail(failure.request, failure.error, retry=failure.retry)
        return _Ended.EXITED if failure.exited else _Ended.KILL

    @staticmethod
    async def _next_event(frames: Channel[_Event]) -> _Event:
        try:
            return await frames.receive()
        except anyio.EndOfStream:
            return _EXITED

    def _expired_in_queue(self, request: Request) -> bool:
        """Fail (and do not send) a prompt whose deadline passed while it was queued."""
        if request.deadline is None or self.clock() < request.deadline:
            return False
        request.resolve(
            ReplyTimeoutError(
                f"no instance took the prompt {request.prompt[:60]!r} before its deadline",
                prompt=request.prompt,
                instance=None,
            )
        )
        return True

    def _try_begin(self, item: Queued) -> bool:
        """Write *item* now, from the task at hand, if nothing needs this instance's task first.

        Called by a put while the task waits idle for work (the dispatcher's offer), and by
        the reader as it completes a reply the task waits for with ``_pipeline`` set. Either
        way the prompt goes out without a pass of the event loop; the task learns of it when
        it next looks (``_current``). Anything out of the ordinary is left to the task: a
        deadline or watchdog (a cancel scope of its own), a lease, a rate-limit pause, a
        recycle or probe that is due, output nobody has claimed, a write that would wait.
        """
        if (
            not isinstance(item, Request)
            or item.deadline is not None
            or not item.live
            or not self._exchange.idle()
            or self._exit_code is not None
            or self._frames is None
            or self._frames.pending
            or self.spec.stall_timeout is not None
        ):
            return False
        handle = self._handle
        if handle is None or self._replacement_due():
            return False
        if self._unsent or self.limiter.paused:
            return False
        if self._write_lock is None or self._write_lock.locked():
            return False  # someone waits to write (the task, or the reader answering)
        data = self._exchange.wire(item)
        written = handle.try_send(data)
        if not written:
            return False
        self._exchange.begin_input()
        self._mark_sent(item, internal=False)
        if written < len(data):
            # The rest waits for room: the task writes it, woken here if it is parked.
            self._unsent = data[written:]
            self._wake_task()
        return True

    def _take_offer(self, item: Queued) -> bool:
        """The dispatcher's offer while the task waits in get: see _try_begin."""
        if not self._try_begin(item):
            return False
        assert isinstance(item, Request)
        self._offered = item
        return True

    async def _send_unsent(self) -> None:
        # _unsent stays set until it is all out, so that _try_begin writes nothing in between.
        if self._unsent and self._handle is not None:
            try:
                await self._write(self._handle, self._unsent)
            except anyio.BrokenResourceError:
                pass  # it exited: the exit watcher reports that, failing the prompt
        self._unsent = b""

    async def _write(self, handle: ProcessHandle, data: bytes) -> None:
        """Write *data*, waiting for room; the reader's answers and the task's prompts take
        turns (two tasks must not wait on one fd at once)."""
        assert self._write_lock is not None
        async with self._write_lock:
            await handle.send(data)

    def _clear_stray(self, frames: Channel[_Event]) -> InstanceCrashedError | None:
        """Drop what the tool printed while idle (stray prompts, notices): it belongs to no
        prompt. Returns why the process must be restarted if it broke down meanwhile."""
        stray_frames = 0
        while True:
            try:
                stray = frames.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
            stray_frames += isinstance(stray, Frame)
        return self._exchange.discard_stray(stray_frames)

    def _replacement_due(self) -> bool:
        """Whether the task has something to do before the next prompt (see _due)."""
        return (
            self._retiring
            or self._restart_requested
            or (self._recycle_after is not None and self._served >= self._recycle_after)
            or (
                min(self._recycle_at, self._next_probe_at) != math.inf
                and self.clock() >= min(self._recycle_at, self._next_probe_at)
            )
        )

    def _abandon_in_flight(self, *, counted: int) -> None:
        """The task is leaving (cancelled) with a prompt in flight: that prompt fails."""
        self._exchange.abandon(counted=counted)

    def _mark_sent(self, request: Request, *, internal: bool) -> int:
        """Book *request* as written and in flight; returns 1 if it counts in the metrics
        (0 for internal prompts such as probes)."""
        counted = 0 if internal else 1
        self._served += counted
        self._exchange.written(request, counted=not internal)
        self._set_state(InstanceState.BUSY)
        return counted

    async def _wait_exited(self) -> None:
        """Wait until the exit watcher has seen the process go."""
        with anyio.CancelScope() as scope:
            self._wait_scope = scope
            if self._exit_code is None:
                await anyio.sleep_forever()
        self._wait_scope = None

    def _crash_error(self, request: Request | None, what: str) -> InstanceCrashedError:
        return self._exchange.crash_error(request, what, self._exit_code)

    def _fail(self, request: Request, error: AimclusterError, *, retry: bool) -> None:
        if retry and not request.done and request.attempts <= request.retries:
            self._plog.info("prompt_retried", attempt=request.attempts, error=type(error).__name__)
            request.state = RequestState.QUEUED
            self.requeue(request)
        else:
            request.resolve(error)

    async def _terminate(self, handle: ProcessHandle, *, graceful: bool, reason: _Ended) -> None:
        """Stop the process group: exit_command, grace, SIGTERM, grace, SIGKILL; then reap."""
        how = "exited"
        if self._exit_code is None:
            how = "sigkill"
            if graceful:
                how = await self._stop_gracefully(handle)
            else:
                handle.signal_group(signal.SIGKILL)
        code = await handle.wait()
        handle.kill_all()  # whatever the tool left behind
        if self._exit_code is None:  # the exit watcher was cancelled before it could say so
            self._exit_code = code
            self._plog.info("instance_exited", exit_code=code)
        await handle.aclose()
        self._handle = None
        if self._stopping:
            self._plog.info("cluster_shutdown", exit_code=code, how=how)
        elif reason in (_Ended.RECYCLE, _Ended.RETIRE):
            self._plog.info(f"instance_{reason.value}d", exit_code=code, how=how)

    async def _stop_gracefully(self, handle: ProcessHandle) -> str:
        grace = self.spec.shutdown_grace
        if self.spec.exit_command is not None:
            try:
                await handle.send((self.spec.exit_command + self.spec.newline).encode())
            except anyio.BrokenResourceError:
                pass
            with anyio.move_on_after(grace):
                await handle.wait()
                return "exit_command"
        handle.signal_group(signal.SIGTERM)
        with anyio.move_on_after(grace):
            await handle.wait()
            return "sigterm"
        handle.signal_group(signal.SIGKILL)
        return "sigkill"
