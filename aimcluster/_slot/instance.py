"""A slot: one supervised tool instance that keeps a process alive and feeds it prompts.

Theory of operation
-------------------

A slot is four owners. Its :class:`~.exchange.Exchange` (sans-IO; a
:class:`~.oneshot.OneshotExchange` for a one-shot tool) knows the prompt in flight and what
output means for it; its :class:`~.process.Process` (one per process, replaced on restart) owns
the handle, the reader, the stderr tail, the exit watcher and the writes; its
:class:`~.upkeep.Upkeep` says when the process is due to be recycled or probed; the
:class:`Instance` itself owns supervision (restarts under the policy), the serve loop, leases,
probes and the two fast paths. Each reaches the others' state only through their methods. The
process calls the slot back twice, and only through the callbacks it was given: a reply
completed (:meth:`Instance._replied`), and wake up (:meth:`Instance._interrupt`).

The data path of a prompt, in order: the dispatcher hands it to the slot's task
(:meth:`Instance._serve`), which writes it through the process (:meth:`Instance._send_prompt`);
the process's reader feeds the output to the exchange, which resolves the request the moment
its reply is complete, and tells the slot's task through the process's event queue; the task,
in :meth:`Instance._await_reply`, goes on to the next prompt or deals with what went wrong (a
crash or breakdown fails or requeues the prompt and ends the process: the supervisor restarts
it within the :class:`RestartPolicy`'s budget).

The two fast paths. A plain prompt (no deadline, no stall watchdog, no lease, not a probe)
goes out past the slot's task, from the task at hand (:meth:`Instance._try_begin`):

* *the offer*: a put that finds the slot idle, its task asleep in the dispatcher's ``get``,
  writes the prompt at once and records it in ``_offered``; the task, when ``get`` returns
  that very request, knows it is written already (``begun``) and only waits for its reply.
* *the reader's next write*: while the task waits for a plain reply (``_pipeline`` set), or
  has yet to take an offer's prompt from ``get`` (``_offered`` set: it then goes straight to
  that wait), the reader, having completed the reply, calls back (:meth:`Instance._replied`):
  it writes the next queued prompt itself or, with none queued, leaves the slot idle in the
  dispatcher's books (``park``) with its task still asleep on the event queue. A put then
  writes its prompt itself (the offer again), or wakes the task with ``WAKE`` when the task
  must act.

Invariants:

* ``_pipeline`` is True only while the task waits, with no cancel scope of its own, on the
  event queue for a plain reply; it is cleared (and the slot unparked) as that wait ends, so
  the reader never writes for a task that is about to do something else.
* ``_offered`` is not None only between an offer's write and the task taking the item from
  ``get``; the task's next wait is then the plain reply wait, whatever is in flight by then
  (:meth:`Exchange.give_up` charges what is in flight, not the request it was given).
* A fast path books the prompt it writes (``_mark_sent``) before any await, so the exchange
  has one prompt in flight at a time and its output cannot be read before it is booked. The
  task books a prompt once its write is over (``_send_prompt``); a reply that arrived before
  that would be taken for one while nothing is in flight (a desync), and the prompt, counted
  as not sent, would go to the next process. A tool that reads whole lines cannot answer one
  before it has read it all, so only a tool that answers a line's start could, and then
  failing safe is the point.
* A fast path writes only what goes out without waiting (``try_write``); the rest of a long
  prompt is sent by the task (``send_unsent``), and nothing else is written in between.
* Nothing out of the ordinary takes a fast path: a deadline, a watchdog, a lease, a rate-limit
  pause, a recycle or probe that is due, output nobody claimed, a process that exited. Those
  are the task's, so that every wait with a cancel scope has its task awake.
* ``_lease_wait`` is set only while a lease waits for its next prompt; an exit or a breakdown
  while idle cancels it (:meth:`Instance._interrupt`), and the lease is lost with the process.
  A lease's prompts are never sent to another process (written by the task, retries 0, a
  prompt not sent fails): they need the state built up in this one.

The fast paths add no await, task switch or cancel scope to a plain prompt
(``tests/test_task_steps.py`` counts them). A one-shot tool has no process between prompts:
each prompt runs one through the same reader and exit watcher (:meth:`_exchange_oneshot`).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
import attrs
from anyio.abc import TaskStatus

from .._base.dispatch import Parking
from .._base.errors import (
    AimclusterError,
    ClusterClosedError,
    InstanceCrashedError,
    StartupError,
)
from .._base.errors import InstanceStalledError as InstanceStalledError
from .._base.metrics import InstanceMetrics, percentile
from .._base.policy import RestartBudget, RestartPolicy
from .._base.ratelimit import RateLimiter
from .._base.request import Request, RequestState
from .exchange import Exchange
from .framer import Frame, clean_reply
from .oneshot import OneshotExchange
from .outcomes import BREAKDOWNS, Overflow
from .process import EOF_GRACE, EXITED, WAKE, Busy, Event, Process
from .upkeep import Upkeep

if TYPE_CHECKING:
    import structlog

    from .._base.dispatch import Dispatcher, Queued
    from .._base.lease import LeaseRequest
    from .._base.spec import ToolSpec
    from ..abc import Transport

__all__ = ["Instance", "InstanceStalledError", "InstanceState"]


class InstanceState(enum.StrEnum):
    """A slot's life cycle: ``starting -> ready <-> busy -> restarting -> failed | stopped``."""

    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


# The two states of every prompt's flips, as module constants (see request.py's QUEUED):
# a prompt reads them seven times.
_READY, _BUSY = InstanceState.READY, InstanceState.BUSY


class _Ended(enum.Enum):
    """Why a process's service ended."""

    EXITED = "exited"  # it went away by itself
    KILL = "kill"  # it is alive but unusable (timed out, stalled, flooded, failed a probe)
    RECYCLE = "recycle"  # stop it gracefully and start a fresh one (no budget, no backoff)
    RETIRE = "retire"  # stop it gracefully for good (the cluster shrank)


@attrs.define(eq=False)
class Instance:
    """A slot in the cluster. Its index is stable; the process behind it comes and goes.

    Over the 450-line guide, as is this module over 500, on purpose: supervision, the serve
    loop, leases, probes and both fast paths share the fields the module docstring lists with
    their invariants (``_pipeline``, ``_offered``, ``_lease_wait``, ``_leased``), and the fast
    paths must see the serve loop's state without a hop; split in two classes, those fields
    would be written from both. What has an owner of its own moved out: the process, the
    exchange, the upkeep schedule.
    """

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
    #: The cluster's count of busy instances, which this one's state changes keep.
    busy: Busy = attrs.field(factory=Busy)

    state: InstanceState = attrs.field(init=False, default=InstanceState.STARTING)
    pid: int | None = attrs.field(init=False, default=None)
    node: str | None = attrs.field(init=False, default=None)
    restarts: int = attrs.field(init=False, default=0)
    stopped: anyio.Event = attrs.field(init=False, factory=anyio.Event)

    #: The prompt in flight and what the output means for it; the reply counters.
    _exchange: Exchange = attrs.field(init=False)
    #: The live process (None between processes, and between a one-shot tool's prompts).
    _process: Process | None = attrs.field(init=False, default=None)
    _budget: RestartBudget | None = attrs.field(init=False, default=None)
    _life_scope: anyio.CancelScope = attrs.field(init=False, factory=anyio.CancelScope)
    _stopping: bool = attrs.field(init=False, default=False)
    _plog: structlog.typing.FilteringBoundLogger = attrs.field(init=False)
    #: Set while a lease holds the instance: its prompts are never requeued, as they need the
    #: state built up in this process. The scope is its wait for the next prompt.
    _leased: bool = attrs.field(init=False, default=False)
    _lease_wait: anyio.CancelScope | None = attrs.field(init=False, default=None)
    #: The task waits for a plain reply: the reader may write the next queued prompt as soon
    #: as it completes this one (see the module docstring).
    _pipeline: bool = attrs.field(init=False, default=False)
    #: What an offer took and wrote while the task waited in the dispatcher's get.
    _offered: Request | None = attrs.field(init=False, default=None)
    #: When the process is due to be recycled or probed.
    _upkeep: Upkeep = attrs.field(init=False)
    #: What the dispatcher records while the reader leaves the instance idle (see _replied).
    _parking: Parking = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._plog = self.log.bind(instance=self.index, pid=None)
        if self.policy is not None:
            self._budget = RestartBudget(self.policy)
        self._upkeep = Upkeep(self.spec, self.clock)
        self._parking = Parking(self._try_begin, self._wake_task)
        self._exchange = (OneshotExchange if self.spec.oneshot else Exchange)(
            spec=self.spec,
            index=self.index,
            tool=self.tool,
            clock=self.clock,
            limiter=self.limiter,
            log=self._plog,
            failover=None if self.failover is None else self._fail_over,
        )

    @property
    def _exit_code(self) -> int | None:
        """The live process's exit code, once the exit watcher has seen it go."""
        return None if self._process is None else self._process.exit_code

    # -- public surface for the cluster -----------------------------------------------------

    def stop(self) -> None:
        """Stop for good, gracefully (``exit_command``, SIGTERM, SIGKILL). Returns at once;
        wait on :attr:`stopped`."""
        self._stopping = True
        self._life_scope.cancel()

    def restart_now(self) -> None:
        """Kill the current process so that the supervisor starts a new one."""
        if self._process is not None:
            self._process.kill()

    def request_restart(self) -> None:
        """Restart gracefully once the current prompt or lease is done."""
        self._upkeep.request_restart()
        self._wake_idle()

    def retire(self) -> None:
        """Take no new work, finish the current prompt or lease, then stop gracefully."""
        self._upkeep.retire()
        self._wake_idle()

    def _wake_idle(self) -> None:
        self.dispatcher.interrupt(self.slot)

    @property
    def healthy(self) -> bool:
        """Whether the slot can still take work (possibly after a restart)."""
        return not self._upkeep.retiring and self.state not in (
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
        old = self.state
        if state is old:
            return
        self.state = state
        busy = self.busy
        if state is _BUSY:
            busy.count += 1
            if old is _READY and not busy.watched:
                return  # the per-prompt flip, which nobody watches now
        elif old is _BUSY:
            busy.count -= 1
            if state is _READY and not busy.watched:
                return
        self.on_state(self)

    # -- one process ----------------------------------------------------------------------

    async def _run_process(self, task_status: TaskStatus[None] | None) -> _Ended:
        """Start a process, wait for its prompt, serve until it ends; always leave it dead."""
        if self.spec.oneshot:
            return await self._run_slot(task_status)
        self._set_state(InstanceState.STARTING)
        process = await self._spawn()
        ended = _Ended.EXITED
        startup_error: StartupError | None = None
        try:
            async with process.watched():
                try:
                    await self._await_ready(process)
                except StartupError as exc:
                    # Raised outside the task group, which would wrap it in an ExceptionGroup.
                    startup_error = exc
                else:
                    if task_status is not None:
                        task_status.started()
                    ended = await self._serve()
            if startup_error is not None:
                raise startup_error
        finally:
            graceful = ended in (_Ended.RECYCLE, _Ended.RETIRE) or (
                self._stopping and ended is _Ended.EXITED
            )
            with anyio.move_on_after(self.spec.shutdown_grace * 2 + EOF_GRACE, shield=True):
                await self._terminate(process, graceful=graceful, reason=ended)
            self._process = None
            self.pid = None
        return ended

    async def _run_slot(self, task_status: TaskStatus[None] | None) -> _Ended:
        """A one-shot tool's slot: no process between prompts, one process per prompt."""
        self._exchange.reset(self._plog)
        self._upkeep.start(recycle=False)
        self._set_state(InstanceState.READY)
        self._plog.info("instance_ready", banner="", oneshot=True)
        if task_status is not None:
            task_status.started()
        ended = await self._serve()
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
        """Run one process for one prompt; its output up to its exit is the reply. The same
        reader and exit watcher as a lasting process's: the exit (or an overflow, or the
        reply's deadline) ends it, and the exchange concludes."""
        if request.expired(self.clock()):
            return None
        spec = self.spec.for_prompt(request.prompt)
        exchange = self._exchange
        assert isinstance(exchange, OneshotExchange)
        try:
            process = await Process.spawn(
                self.transport, spec, index=self.index, exchange=exchange, log=self.log
            )
        except StartupError as exc:
            self._plog.warning("instance_start_failed", error=str(exc).splitlines()[0])
            exchange.refused(request, exc, counted=not internal)
            return None
        self._adopt(process)
        counted = self._mark_sent(request, internal=internal)
        overflow: Overflow | None = None
        code: int | None = None
        try:
            event: Event | None = None
            async with process.watched():
                with process.reply_wait(exchange.wake_at()):
                    event = await process.next_event()
            # The reply is judged at the exit: output means something only if there is too
            # much of it. A deadline or a stall leaves no event (and no exit code).
            if isinstance(event, Overflow):
                overflow = event
            elif event is EXITED:
                code = process.exit_code
            with anyio.move_on_after(self.spec.shutdown_grace + EOF_GRACE, shield=True):
                await process.terminate(graceful=False)
        except BaseException:
            with anyio.move_on_after(self.spec.shutdown_grace + EOF_GRACE, shield=True):
                await process.terminate(graceful=False)
            exchange.abandon(counted=counted)
            request.resolve(
                ClusterClosedError("the cluster was shut down while the prompt was in flight")
            )
            raise
        finally:
            self._process = None
            self.pid = None
        if code is not None:
            self._plog.debug("oneshot_exited", exit_code=code)
        failure = exchange.conclude(code, stderr=process.stderr_tail(), overflow=overflow)
        if failure is not None:
            self._fail(failure.request, failure.error, retry=failure.retry)
            return None
        resend = exchange.take_resend()
        if resend is not None and resend.live:  # not withdrawn meanwhile
            await self._wait_out_rate_limit(resend)
            return await self._exchange_oneshot(resend, internal=internal)
        return None

    async def _spawn(self) -> Process:
        process = await Process.spawn(
            self.transport,
            self.spec,
            index=self.index,
            exchange=self._exchange,
            log=self.log,
            carry_on=self._replied,
            interrupt=self._interrupt,
            busy=self.busy,
        )
        self._adopt(process)
        self._upkeep.start()
        return process

    def _adopt(self, process: Process) -> None:
        self._process = process
        self.pid = process.pid
        self.node = process.node
        self._plog = process.log

    async def _terminate(self, process: Process, *, graceful: bool, reason: _Ended) -> None:
        code, how = await process.terminate(graceful=graceful)
        if self._stopping:
            self._plog.info("cluster_shutdown", exit_code=code, how=how)
        elif reason in (_Ended.RECYCLE, _Ended.RETIRE):
            self._plog.info(f"instance_{reason.value}d", exit_code=code, how=how)

    # -- what the process tells the slot ------------------------------------------------------

    def _replied(self) -> bool:
        """The reader completed the last reply of a read: True if the task need not wake.

        The task waits for a plain reply (``_pipeline``), or is on its way to: an offer's
        prompt answered before the task took it from ``get``. That task goes straight to the
        wait for whatever is in flight then (``begun``), so the reader may carry on for it:
        write the next queued prompt or, with none queued, leave the instance idle, in the
        dispatcher's books, with the task still parked. A put then writes its prompt itself
        (the offer), or wakes the task with ``WAKE``. Either way the task sleeps through a
        stream of plain prompts. False if the task waits elsewhere, or has something to do
        first."""
        if not self._pipeline and self._offered is None:
            return False
        item = self.dispatcher.peek(self.slot)
        if item is not None:
            if not self._try_begin(item):
                return False
            self.dispatcher.remove(self.slot, item)
            return True
        process = self._process
        if (
            process is None
            or self._exchange.resend is not None
            or process.exit_code is not None
            or process.events_pending
            or self._upkeep.wake_at != math.inf  # the task waits with a timer
            or self._upkeep.due()
        ):
            return False
        if not self.dispatcher.park(self.slot, self._parking, peeked=True):
            return False
        self._set_state(_READY)
        return True

    def _interrupt(self) -> None:
        """The process exited, or its output broke down while idle: wake the task wherever it
        waits. If it waits elsewhere (writing a prompt, say), the dispatcher's interrupt stays
        pending for this slot's next get, which then returns None once: harmless."""
        self.dispatcher.interrupt(self.slot)
        if self._lease_wait is not None:
            self._lease_wait.cancel()

    def _wake_task(self) -> None:
        """Wake the task parked by _replied: there is work it must take itself, or an
        interrupt."""
        if self._process is not None:
            self._process.wake()

    async def _await_ready(self, process: Process) -> None:
        events = self.spec.events
        if events is not None and events.ready is None:
            # It prints nothing until its first input: ready as soon as it runs.
            self._set_state(InstanceState.READY)
            self._plog.info("instance_ready", banner="")
            return
        event: Event | None = None
        with anyio.move_on_after(self.spec.startup_timeout), process.until_exit():
            event = await process.next_event()
        if isinstance(event, Frame):
            self._set_state(InstanceState.READY)
            self._plog.info("instance_ready", banner=clean_reply(event.text)[-200:])
            return
        output = self._exchange.partial() + process.stderr_tail()
        code = process.exit_code
        if isinstance(event, Overflow):
            message = (
                f"printed more than {self.spec.max_reply_bytes} bytes without a ready prompt "
                f"matching {self.spec.ready!r}"
            )
            output = event.partial
        elif isinstance(event, BREAKDOWNS):
            message = str(self._exchange.breakdown_error(event, None))
            output = event.partial
        elif code is not None:
            message = (
                f"{self.spec.name!r} exited with code {code} before showing a ready "
                f"prompt matching {self.spec.ready!r}"
            )
        else:
            message = (
                f"{self.spec.name!r} showed no ready prompt matching {self.spec.ready!r} "
                f"within {self.spec.startup_timeout} s"
            )
        raise StartupError(message, instance=self.index, output=output, exit_code=code)

    # -- serving ------------------------------------------------------------------------------

    async def _serve(self) -> _Ended:
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
            wake_at = self._upkeep.wake_at
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
                if self._exit_code is None and self._upkeep.probe_due():
                    ended = await self._probe()
                    if ended is not None:
                        return ended
                continue
            if isinstance(item, LeaseRequest):
                ended = await self._serve_lease(item)
            else:
                assert isinstance(item, Request)
                begun, self._offered = item is self._offered, None
                ended = await self._send_prompt(item, pipeline=True, begun=begun)
            if ended is not None:
                return ended
            self._set_state(InstanceState.READY)
            self._upkeep.idle_from_now()

    def _due(self) -> _Ended | None:
        """Whether the process should be replaced (or retired) now that it is idle."""
        if self._upkeep.retiring:
            return _Ended.RETIRE
        if self._upkeep.take_restart_request():
            self._plog.info("instance_recycling", reason="restart requested")
            return _Ended.RECYCLE
        reason = self._upkeep.recycle_reason()
        if reason == "max_prompts":
            self._plog.info("instance_recycling", reason=reason, prompts=self._upkeep.served)
        elif reason is not None:
            self._plog.info("instance_recycling", reason=reason)
        return None if reason is None else _Ended.RECYCLE

    async def _probe(self) -> _Ended | None:
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
        ended = await self._send_prompt(request, internal=True)
        self._upkeep.idle_from_now()
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

    async def _serve_lease(self, lease: LeaseRequest) -> _Ended | None:
        self._set_state(InstanceState.BUSY)
        lease.grant(self.index)
        self._leased = True
        try:
            while True:
                request = None
                broken = self._exchange.broken
                if self._exit_code is None and broken is None:
                    # An exit or a breakdown cancels this wait (_interrupt).
                    with anyio.CancelScope() as scope:
                        self._lease_wait = scope
                        try:
                            request = await lease.next()
                        finally:
                            self._lease_wait = None
                    if request is None and not scope.cancelled_caught:
                        return None  # released: back to the pool
                if request is None:
                    broken = self._exchange.broken
                    if broken is not None:
                        lease.lose(broken)
                        return _Ended.KILL
                    lease.lose(self._crash_error(None, "exited while leased"))
                    return _Ended.EXITED
                ended = await self._send_prompt(request)
                if ended is not None:
                    lease.lose(request.exception() or self._crash_error(None, "was restarted"))
                    return ended
        except BaseException:
            lease.lose(ClusterClosedError("the cluster was shut down during the lease"))
            raise
        finally:
            self._leased = False
            lease.finish()

    # -- one prompt ---------------------------------------------------------------------------

    async def _send_prompt(
        self,
        request: Request,
        *,
        internal: bool = False,
        pipeline: bool = False,
        begun: bool = False,
    ) -> _Ended | None:
        """Send one prompt and wait for its reply. Returns how the process ended, if it did.

        *internal* prompts (probes) are not counted in the metrics and never requeued. A
        one-shot tool's prompt runs a process of its own. With *pipeline*, the reader may
        write the prompts queued behind this one as it completes each reply (see the module
        docstring); then this returns once the last of them is over. *begun*: an offer wrote
        it already (and it may even be answered already: then its frame is queued).
        """
        if begun:
            assert self._process is not None
            try:
                await self._process.send_unsent()
            except BaseException:
                self._abandon_in_flight(counted=1)
                raise
            return await self._await_reply(request, counted=1, internal=False, pipeline=True)
        if not request.live:
            return None  # withdrawn (a lease's prompt cancelled before we got to it): unsent
        self._exchange.drop_resend(request)
        if self.limiter.paused and not internal and self._fail_over(request):
            return None
        await self._wait_out_rate_limit(request)
        if self.spec.oneshot:
            return await self._exchange_oneshot(request, internal=internal)
        process = self._process
        assert process is not None
        error = self._clear_stray(process)
        if error is not None:
            # The prompt was not sent, and this process is done for.
            self._not_sent(request, error, internal=internal)
            return _Ended.KILL
        if request.expired(self.clock()):
            return None
        data = self._exchange.wire(request)
        delivered = False
        if process.exit_code is None:
            self._exchange.begin_input()
            try:
                await process.write(data)
                delivered = True
            except anyio.BrokenResourceError:
                await process.wait_exited()
        if not delivered:
            # The process was gone before it could read the prompt.
            self._not_sent(request, self._crash_error(request, "exited"), internal=internal)
            return _Ended.EXITED

        counted = self._mark_sent(request, internal=internal)
        return await self._await_reply(
            request, counted=counted, internal=internal, pipeline=pipeline
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
        self, request: Request, *, counted: int, internal: bool, pipeline: bool
    ) -> _Ended | None:
        exchange, process = self._exchange, self._process
        assert process is not None
        # The exit watcher wakes this wait through the event queue. A cancel scope is needed
        # only for a deadline or the stall watchdog (the reader pushes the scope's deadline
        # back on output); which of the two fired is sorted out below.
        wake_at = exchange.wake_at()
        event: Event | None = None
        try:
            if process.exit_code is not None:
                pass  # it exited while we were writing
            elif wake_at == math.inf:
                self._pipeline = pipeline and not internal
                try:
                    event = await process.next_event()
                    while event is WAKE and exchange.current is not None:
                        # A prompt went out since, maybe not all of it.
                        await process.send_unsent()
                        event = await process.next_event()
                finally:
                    self._pipeline = False
                    self.dispatcher.unpark(self.slot)
            else:
                with process.reply_wait(wake_at):
                    event = await process.next_event()
            if event is None or event is EXITED:
                # The process exited, stalled or ran out of time. An exiting process may
                # still have completed the reply: frames read before EOF count.
                event = process.poll_event()
                if event is WAKE:
                    event = None
        except BaseException:
            exchange.abandon(counted=counted)
            request.resolve(
                ClusterClosedError("the cluster was shut down while the prompt was in flight")
            )
            raise
        if exchange.current is None and event is not WAKE and not isinstance(event, Frame):
            # Every prompt of ours is answered (the reader completed them and parked the
            # instance): what woke us happened while it was idle, and no prompt is charged.
            if exchange.broken is not None:
                return _Ended.KILL
            if process.exit_code is not None:
                return _Ended.EXITED
        if isinstance(event, Frame) or (event is WAKE and exchange.current is None):
            if exchange.current is not None:  # normally the reader completed it already
                assert isinstance(event, Frame)
                exchange.complete(event)
            # Answered before all of it was written (a multi-line prompt to a REPL): the rest
            # still goes, as a blocking write would have sent it.
            await process.send_unsent()
            resend = exchange.take_resend()
            if resend is not None and resend.live:  # not withdrawn meanwhile
                return await self._send_prompt(resend, internal=internal, pipeline=pipeline)
            return None
        breakdown = event if isinstance(event, BREAKDOWNS) else None
        failure = exchange.give_up(request, breakdown, exit_code=process.exit_code, counted=counted)
        if failure.unsent:
            assert isinstance(failure.error, InstanceCrashedError)
            self._not_sent(failure.request, failure.error, internal=internal)
            return _Ended.KILL
        self._fail(failure.request, failure.error, retry=failure.retry)
        return _Ended.EXITED if failure.exited else _Ended.KILL

    def _try_begin(self, item: Queued) -> bool:
        """Write *item* now, from the task at hand, if nothing needs this instance's task first.

        Called by a put while the task waits idle for work (the offer), and by the reader as
        it completes a reply the task waits for with ``_pipeline`` set (see the module
        docstring). Either way the prompt goes out without a pass of the event loop; the task
        learns of it when it next looks (``Exchange.current``).
        """
        if (
            not isinstance(item, Request)
            or item.deadline is not None
            or not item.live
            or not self._exchange.idle()
            or self.spec.stall_timeout is not None
        ):
            return False
        process = self._process
        if process is None or not process.writable_now:
            return False  # gone, or someone waits to write, or output waits to be looked at
        if self.limiter.paused or self._upkeep.due():
            return False
        data = self._exchange.wire(item)
        written = process.try_write(data)
        if not written:
            return False
        self._exchange.begin_input()
        self._mark_sent(item, internal=False)
        if written < len(data):
            # The rest waits for room: the task writes it, woken here if it is parked.
            self._wake_task()
        return True

    def _take_offer(self, item: Queued) -> bool:
        """The dispatcher's offer while the task waits in get: see _try_begin."""
        if not self._try_begin(item):
            return False
        assert isinstance(item, Request)
        self._offered = item
        return True

    def _clear_stray(self, process: Process) -> InstanceCrashedError | None:
        """Drop what the tool printed while idle (stray prompts, notices): it belongs to no
        prompt. Returns why the process must be restarted if it broke down meanwhile."""
        stray_frames = 0
        while (stray := process.poll_event()) is not None:
            stray_frames += isinstance(stray, Frame)
        return self._exchange.discard_stray(stray_frames)

    def _abandon_in_flight(self, *, counted: int) -> None:
        """The task is leaving (cancelled) with a prompt in flight: that prompt fails."""
        self._exchange.abandon(counted=counted)

    def _mark_sent(self, request: Request, *, internal: bool) -> int:
        """Book *request* as written and in flight; returns 1 if it counts in the metrics
        (0 for internal prompts such as probes)."""
        counted = 0 if internal else 1
        self._upkeep.count(counted)
        self._exchange.written(request, counted=not internal)
        self._set_state(_BUSY)
        return counted

    def _crash_error(self, request: Request | None, what: str) -> InstanceCrashedError:
        return self._exchange.crash_error(request, what, self._exit_code)

    def _fail(self, request: Request, error: AimclusterError, *, retry: bool) -> None:
        if retry and not request.done and request.attempts <= request.retries:
            self._plog.info("prompt_retried", attempt=request.attempts, error=type(error).__name__)
            request.state = RequestState.QUEUED
            self.requeue(request)
        else:
            request.resolve(error)
