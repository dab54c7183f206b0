"""One live tool process: its handle, the reader, the stderr tail and the exit watcher.

A :class:`Process` owns everything that lives and dies with one process: the handle, its exit
code, the tail of a separate stderr, the lock that makes writers take turns, the end of a prompt
still to be written, and the three tasks that watch it (run by :meth:`Process.watched`). It
knows nothing of prompts, leases or the dispatcher: the reader feeds the output to the
instance's :class:`~.exchange.Exchange` and hands what it means to the instance's task through
an event queue (:meth:`Process.next_event`), and tells its owner two things through callbacks:

* *carry_on*, when the reader has completed the last reply of a read: "a reply completed; may
  I go on without waking the task?" The owner may write its next prompt from there (the
  reader's fast path), and returns False if its task must see the reply;
* *interrupt*, when the owner's task must wake wherever it waits: the process exited, or its
  output broke down while no prompt was in flight.

While more than one instance of the cluster is busy, the reader deals with each chunk where
it is read (:meth:`Process._take`, through :meth:`ProcessHandle.receive_into`): on asyncio in
the event loop's callback, with the reader's task asleep. The reply goes to its caller and
the owner carries on from there, as the task would have done it, and the task wakes only
for what needs a wait: an answer to write, a breakdown, a queue of events that is full.

A one-shot tool's prompt runs one process through the same reader and exit watcher: the
exchange keeps its output, and the exit (or an overflow, or the reply's deadline) ends it.

The module is a little past the 500-line guide, on purpose: the reader's two ways of reading
(in its task, and where output is read) share its state and its hand-over to the owner, and
split apart they would reach into each other's fields.
"""

from __future__ import annotations

import contextlib
import enum
import signal
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from .._base.channel import Channel
from .._base.errors import StartupError
from .._base.natives import loop_natives
from .._base.redact import redact_argv
from .framer import Frame
from .outcomes import BREAKDOWNS, Answer, Breakdown, Outcome, Unsolicited

if TYPE_CHECKING:
    import structlog

    from .._base.spec import ToolSpec
    from ..abc import ProcessHandle, Transport
    from .exchange import Exchange

__all__ = ["EXITED", "WAKE", "Busy", "Event", "Process", "Signal"]

# After the process exits, how long its output may take to reach EOF. Only a grandchild that left
# our process group (setsid) can hold the stream open past the group SIGKILL.
EOF_GRACE = 1.0

# Events the reader may queue for the owner's task. Frames a tool prints at start-up, before
# its first input, are dropped past that; later ones restart it (Exchange.feed).
_FRAME_BUFFER = 16

# What a read of the output raises once it is over.
_ENDED = (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError)


class Signal(enum.Enum):
    #: Queued by the exit watcher, after every frame read before EOF.
    EXITED = "exited"
    #: Queued by the owner (:meth:`Process.wake`) for its task, parked on the queue while the
    #: reader carries on: there is work, or an interrupt, for it.
    WAKE = "wake"


EXITED, WAKE = Signal.EXITED, Signal.WAKE
#: What the owner's task reads from the queue: a reply (resolved already), a breakdown, or a
#: signal.
Event = Frame | Breakdown | Signal


async def _wait_all(events: Iterable[anyio.Event], *, timeout: float) -> None:
    with anyio.move_on_after(timeout):
        for event in events:
            await event.wait()


def _never() -> bool:
    return False


@attrs.define(eq=False)
class Busy:
    """How many instances of a cluster are busy (a prompt in flight, or leased), shared by
    them: kept by :meth:`Instance._set_state`, read by the readers. Only how a reader reads
    depends on it (:meth:`ProcessHandle.receive_joined`, and a pass after a reply, at one at
    most), never what it reads: a count that drifted would cost speed, not a reply.
    """

    count: int = 0
    #: Whether the cluster wants to hear of the per-prompt flips between ready and busy (a
    #: ``wait_for`` waits for a state change). Without it an instance tells the cluster only
    #: of its other changes, the ones that can change which instances are healthy.
    watched: bool = False


def _nothing() -> None:
    pass


@attrs.define(eq=False)
class Process:
    """One process of an instance (see the module docstring). Start it with :meth:`spawn`."""

    handle: ProcessHandle
    spec: ToolSpec
    exchange: Exchange
    #: Bound to the instance and the process's pid.
    log: structlog.typing.FilteringBoundLogger
    #: A reply completed, the last of a read: True if the owner's task need not wake.
    carry_on: Callable[[], bool] = _never
    #: The owner's task must wake wherever it waits (an exit, a breakdown while idle).
    interrupt: Callable[[], None] = _nothing
    #: The cluster's busy instances: at one at most, the reader reads joined and gives the
    #: loop a pass after a reply.
    busy: Busy = attrs.field(factory=Busy)

    #: Set by the exit watcher once the process is gone and its output read (or by terminate).
    exit_code: int | None = attrs.field(init=False, default=None)
    _stderr_tail: bytearray = attrs.field(init=False, factory=bytearray)
    #: Held while a task waits to write: one waiter per fd at a time.
    _write_lock: anyio.Lock = attrs.field(init=False, factory=lambda: anyio.Lock(fast_acquire=True))
    # Tasks in write(), holding the lock or waiting for it: what writable_now asks before
    # every prompt, kept as a number (the lock's locked() is a call, two on trio).
    _writers: int = attrs.field(init=False, default=0)
    #: The end of a prompt :meth:`try_write` could not write at once: the owner sends it.
    _unsent: bytes = attrs.field(init=False, default=b"")
    #: From the reader and the exit watcher to the owner's task.
    _events: Channel[Event] = attrs.field(
        init=False, factory=lambda: Channel[Event](_FRAME_BUFFER, senders=2)
    )
    #: What :meth:`_take` left for the reader's task to act on.
    _taken: Sequence[Outcome] = attrs.field(init=False, default=())
    #: The owner's wait for a reply with a deadline or stall watchdog; output pushes it back.
    _reply_scope: anyio.CancelScope | None = attrs.field(init=False, default=None)
    #: Waits the exit watcher ends (see :meth:`until_exit`).
    _exit_scopes: set[anyio.CancelScope] = attrs.field(init=False, factory=set)

    @classmethod
    async def spawn(
        cls,
        transport: Transport,
        spec: ToolSpec,
        *,
        index: int,
        exchange: Exchange,
        log: structlog.typing.FilteringBoundLogger,
        carry_on: Callable[[], bool] = _never,
        interrupt: Callable[[], None] = _nothing,
        busy: Busy | None = None,
    ) -> Process:
        """Start *spec*'s process for instance *index*; the exchange starts over with it.

        :raises StartupError: if the transport could not start it
        """
        try:
            # Shielded: a cancellation landing between the fork and our holding the handle
            # would leave a child nobody kills. Spawning itself is quick.
            with anyio.CancelScope(shield=True):
                handle = await transport.spawn(spec, instance=index)
        except OSError as exc:
            raise StartupError(
                f"could not start {redact_argv(spec.argv)!r}: {exc}", instance=index, output=""
            ) from exc
        plog = log.bind(instance=index, pid=handle.pid)
        exchange.reset(plog)
        plog.info("instance_started", argv=redact_argv(spec.argv), node=handle.node)
        return cls(handle, spec, exchange, plog, carry_on, interrupt, busy or Busy())

    @property
    def pid(self) -> int | None:
        return self.handle.pid

    @property
    def node(self) -> str | None:
        return self.handle.node

    def stderr_tail(self) -> str:
        """The last 8 KiB of a separate stderr (for error reports)."""
        return self._stderr_tail.decode(self.spec.encoding, "replace")

    # -- the tasks -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def watched(self) -> AsyncIterator[None]:
        """Run the reader, the stderr reader and the exit watcher for the body's duration."""
        async with anyio.create_task_group() as tg:
            eof, stderr_eof = anyio.Event(), anyio.Event()
            if self.spec.merge_stderr or self.spec.pty:
                stderr_eof.set()
            else:
                tg.start_soon(self._read_stderr, stderr_eof)
            tg.start_soon(self._read, eof)
            tg.start_soon(self._watch_exit, (eof, stderr_eof))
            yield
            tg.cancel_scope.cancel()

    async def _read(self, eof: anyio.Event) -> None:
        """The reader: output -> exchange -> event queue. Waits for the owner only with the
        queue full and a reply or a breakdown to hand over."""
        exchange, handle, busy = self.exchange, self.handle, self.busy
        stall = self.spec.stall_timeout
        settle = exchange.settle
        checkpoint = loop_natives(anyio.lowlevel.current_token()).checkpoint
        # Whether output can be dealt with where it is read (_take): not with a timer to keep.
        takeable = stall is None and settle is None
        try:
            while True:
                if takeable and busy.count > 1:
                    try:
                        await handle.receive_into(self._take)
                    except _ENDED:
                        await self._hand_over(exchange.eof())
                        return
                    taken, self._taken = self._taken, ()
                    if taken:
                        await self._hand_over(taken)
                    continue
                data = b""
                # With one instance of the cluster busy at most, the event loop has a pass to
                # spare, and a reply read with its echo saves a wake-up; with more, read as
                # soon as output is readable (see ProcessHandle.receive_joined).
                receive = handle.receive_joined if busy.count <= 1 else handle.receive
                try:
                    if settle is not None and exchange.pending:
                        # The output ends with the prompt: the reply is complete unless more
                        # output arrives within `settle` (each chunk starts the timer over).
                        # Silence is judged by the event loop's clock: a loop that lags by more
                        # than `settle` can end the reply before output that is already waiting
                        # is read (receive() yields first). A heuristic framing's limit.
                        with anyio.move_on_after(settle):
                            data = await receive()
                    else:
                        data = await receive()
                except _ENDED:
                    await self._hand_over(exchange.eof())
                    return
                if not data:
                    await self._hand_over(exchange.quiet())
                    continue
                scope = self._reply_scope
                if stall is not None and scope is not None:
                    # Output is a sign of life: push the watchdog back, never past the deadline.
                    scope.deadline = exchange.watchdog()
                if not self._take(data):
                    continue  # nothing left for this task (see _take)
                taken, self._taken = self._taken, ()
                # Nothing left to act on: _take handed a reply over, with one busy at most.
                replied = await self._hand_over(taken) if taken else True
                if replied and busy.count <= 1:
                    # Let whoever a reply went to run before this waits for more output: the
                    # caller writes its next prompt first. One pass per reply, no polling.
                    # Measured: waiting at once instead makes a single caller's round trip
                    # 1.2-1.6x slower on asyncio. Not with other instances busy, where the
                    # pass is a step for nothing: in turns on one cluster, 8 and 64 callers,
                    # every loop, pipes and PTYs, 5-12% less CPU per call without it, and p50
                    # 0.92-1.00x.
                    await checkpoint()
        finally:
            eof.set()
            self._events.close_sender()

    def _take(self, data: bytes) -> bool:
        """Deal with *data*, output just read, as far as that takes no wait; return True if
        the reader's task must act: on what it left in ``_taken``, or to read joined again
        (one instance busy at most). On asyncio this runs in the event loop's callback, with
        the task asleep (:meth:`ProcessHandle.receive_into`): a stream of plain prompts, each
        answered by the reply that completes the last, wakes no task of the slot's."""
        outcomes = self.exchange.feed(data)
        if not outcomes:
            return False
        if len(outcomes) == 1 and type(outcomes[0]) is Frame:
            if not self.carry_on():
                try:
                    self._events.send_nowait(outcomes[0])
                except anyio.WouldBlock:
                    # The task waits for room. carry_on said no and changed nothing, so
                    # _hand_over may ask it again.
                    self._taken = outcomes
                    return True
            return self.busy.count <= 1
        self._taken = outcomes
        return True

    async def _hand_over(self, outcomes: Sequence[Outcome]) -> bool:
        """Act on what the output meant; return whether it completed a reply."""
        events = self._events
        replied = False
        for outcome in outcomes:
            if type(outcome) is Frame:
                # The exchange resolved the request already: the caller is awake.
                replied = True
                if outcome is outcomes[-1] and self.carry_on():
                    continue  # the owner's task does not need to wake
                await self._to_owner(outcome)
            elif isinstance(outcome, Answer):
                try:
                    await self.write(outcome.data)
                except anyio.BrokenResourceError:
                    pass  # it exited; the exit watcher reports that
            elif isinstance(outcome, Unsolicited):
                # Start-up: for the wait for the ready prompt. With the queue full, drop it
                # rather than stop reading (the owner discards it before the first prompt).
                try:
                    events.send_nowait(outcome.frame)
                except anyio.WouldBlock:
                    self.log.debug("unsolicited_output_dropped", text=outcome.frame.text[-200:])
            else:
                assert isinstance(outcome, BREAKDOWNS)
                # The framer gave up: with a prompt in flight, that prompt fails. With none
                # (idle), no prompt is to blame and the owner's task is woken wherever it
                # waits, to restart the process; also through the queue, for a reply wait.
                if outcome.idle:
                    self.interrupt()
                await events.send(outcome)
        return replied

    async def _to_owner(self, frame: Frame) -> None:
        """The owner's task learns from the queue that the exchange is over. Without a
        checkpoint when there is room."""
        try:
            self._events.send_nowait(frame)
        except anyio.WouldBlock:
            await self._events.send(frame)

    async def _read_stderr(self, eof: anyio.Event) -> None:
        """Keep the tail of a separate stderr for error reports, and log it."""
        try:
            while True:
                try:
                    data = await self.handle.receive_stderr()
                except _ENDED:
                    return
                self._stderr_tail += data
                del self._stderr_tail[:-8192]
                self.log.debug("instance_stderr", data=data.decode(self.spec.encoding, "replace"))
        finally:
            eof.set()

    async def _watch_exit(self, eofs: tuple[anyio.Event, anyio.Event]) -> None:
        """Exit detection: the transport's wait() (pidfd or waitpid), never polling."""
        try:
            code = await self.handle.wait()
            # Grandchildren left behind would hold the output open, and must die anyway.
            self.handle.kill_all()
            # The last of stdout and of a separate stderr come before the exit is reported: a
            # startup error or a crash must show what the tool said as it died.
            await _wait_all(eofs, timeout=EOF_GRACE)
            self.exit_code = code
            self.log.info("instance_exited", exit_code=code)
            # Wake whoever waits: the owner wherever it is idle, a reply wait on the queue
            # (behind every frame read before EOF), or a wait in until_exit.
            self.interrupt()
            try:
                self._events.send_nowait(EXITED)
            except (anyio.WouldBlock, anyio.BrokenResourceError):
                pass
            for scope in self._exit_scopes:
                scope.cancel()
        finally:
            self._events.close_sender()

    # -- the owner's waits -----------------------------------------------------------------------

    async def next_event(self) -> Event:
        """The next reply, breakdown or signal; :data:`EXITED` once the queue is closed."""
        try:
            return await self._events.receive()
        except anyio.EndOfStream:
            return EXITED

    def poll_event(self) -> Event | None:
        """The next event if one is queued, without waiting."""
        try:
            return self._events.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream):
            return None

    @property
    def events_pending(self) -> bool:
        return self._events.pending

    def wake(self) -> None:
        """Wake the owner's task, parked on the queue while the reader carries on."""
        try:
            self._events.send_nowait(WAKE)
        except (anyio.WouldBlock, anyio.BrokenResourceError):
            pass  # it has events to wake it already, or it is gone

    @contextlib.contextmanager
    def reply_wait(self, deadline: float) -> Iterator[anyio.CancelScope]:
        """A scope for a reply wait until *deadline*, which output pushes back when the spec
        has a stall watchdog (see :meth:`Exchange.watchdog`)."""
        with anyio.CancelScope(deadline=deadline) as scope:
            self._reply_scope = scope
            try:
                yield scope
            finally:
                self._reply_scope = None

    @contextlib.contextmanager
    def until_exit(self) -> Iterator[anyio.CancelScope]:
        """A scope that the exit watcher cancels when the process exits (at once if it has)."""
        with anyio.CancelScope() as scope:
            if self.exit_code is not None:
                scope.cancel()
            self._exit_scopes.add(scope)
            try:
                yield scope
            finally:
                self._exit_scopes.discard(scope)

    async def wait_exited(self) -> None:
        """Wait until the exit watcher has seen the process go."""
        with self.until_exit():
            await anyio.sleep_forever()

    # -- writing -----------------------------------------------------------------------------

    @property
    def writable_now(self) -> bool:
        """Whether :meth:`try_write` may write a prompt: it runs, nothing is left to send, no
        task waits to write (the owner's, or the reader answering a question), and no event
        waits for the owner (output it must look at before the next prompt)."""
        return (
            self.exit_code is None
            and not self._unsent
            and not self._writers
            and not self._events.pending
        )

    def try_write(self, data: bytes) -> int:
        """Write what can be written of *data* without waiting; return how much. The rest,
        if any, waits for :meth:`send_unsent`."""
        written = self.handle.try_send(data)
        if written and written < len(data):
            self._unsent = data[written:]
        return written

    async def send_unsent(self) -> None:
        # _unsent stays set until it is all out, so that try_write writes nothing in between.
        if self._unsent:
            try:
                await self.write(self._unsent)
            except anyio.BrokenResourceError:
                pass  # it exited: the exit watcher reports that, failing the prompt
        self._unsent = b""

    async def write(self, data: bytes) -> None:
        """Write *data*, waiting for room; the reader's answers and the owner's prompts take
        turns (two tasks must not wait on one fd at once).

        :raises anyio.BrokenResourceError: if the process no longer reads its input
        """
        self._writers += 1
        try:
            async with self._write_lock:
                await self.handle.send(data)
        finally:
            self._writers -= 1

    # -- the end -------------------------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL the process group (the exit watcher reports the exit)."""
        if self.exit_code is None:
            self.handle.signal_group(signal.SIGKILL)

    async def terminate(self, *, graceful: bool) -> tuple[int, str]:
        """Stop the process group: exit_command, grace, SIGTERM, grace, SIGKILL; then reap.
        Returns the exit code and how it ended (``exited``, ``exit_command``, ``sigterm``,
        ``sigkill``)."""
        how = "exited"
        handle = self.handle
        if self.exit_code is None:
            how = "sigkill"
            if graceful:
                how = await self._stop_gracefully()
            else:
                handle.signal_group(signal.SIGKILL)
        try:
            code = await handle.wait()
        finally:
            # Whatever the tool left behind, also when the caller's time for the stop ran
            # out before the process could be reaped (stuck in the kernel, say).
            handle.kill_all()
        if self.exit_code is None:  # the exit watcher was cancelled before it could say so
            self.exit_code = code
            self.log.info("instance_exited", exit_code=code)
        await handle.aclose()
        self._events.close()
        return code, how

    async def _stop_gracefully(self) -> str:
        grace, handle = self.spec.shutdown_grace, self.handle
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
