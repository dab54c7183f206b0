"""The prompt-to-reply state machine of one instance: bytes and a clock in, outcomes out.

An :class:`Exchange` does no I/O and never awaits. The instance feeds it what the process
prints (:meth:`Exchange.feed`, :meth:`Exchange.quiet`, :meth:`Exchange.eof`), tells it what it
writes (:meth:`Exchange.wire`, :meth:`Exchange.begin_input`, :meth:`Exchange.written`) and asks it
what an ending means (:meth:`Exchange.give_up`; for a one-shot tool,
:meth:`~.oneshot.OneshotExchange.conclude`). It acts on the outcomes (:mod:`.outcomes`): it
writes an :class:`Answer`, hands a reply's :class:`Frame` to whoever waits, and restarts the
process after a :class:`Failure` or a breakdown (:class:`Overflow`, :class:`TooManyQuestions`,
:class:`Desync`).

Everything about the prompt in flight lives here: the framer (one interface for the prompt,
JSON-lines and one-shot framings), the request, when it was written and its deadline, the
numbering of the inputs and what their output must start with, the questions answered
automatically, the prompt to send again after a rate limit, and the counters the instance's
metrics report. A reply is resolved here, the moment the framer completes it, so that the
caller wakes without waiting for the instance's task.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

import attrs

from .._base.errors import (
    ClusterClosedError,
    InstanceCrashedError,
    InstanceStalledError,
    ReplyTimeoutError,
)
from .._base.framing import PromptFraming, compile_ready
from .._base.request import QUEUED, SENT, Reply, Request
from .._base.usage import Usage
from .framer import Frame, FrameDesync, FrameOverflow, Framer, JsonlFramer, clean_reply
from .outcomes import (
    Answer,
    Breakdown,
    Desync,
    Failure,
    Outcome,
    Overflow,
    TooManyQuestions,
    Unsolicited,
    breakdown_error,
    crash_error,
    rate_limit_match,
    read_usage,
    stalled_error,
    timeout_error,
    tool_error,
)

if TYPE_CHECKING:
    import structlog

    from .._base.ratelimit import RateLimiter
    from .._base.spec import ToolSpec

# The outcomes are re-exported: this module is where a reader of the exchange looks for them.
__all__ = [
    "Answer",
    "Breakdown",
    "Desync",
    "Exchange",
    "Failure",
    "InstanceStalledError",
    "Outcome",
    "Overflow",
    "TooManyQuestions",
    "Unsolicited",
]

_LATENCY_SAMPLES = 1024


_NOTHING: Final[Sequence[Outcome]] = ()


@attrs.define(eq=False)
class Exchange:
    """One instance's prompts and replies, across its processes (see the module docstring).

    The counters (:attr:`sent`, :attr:`completed`, ...) are the instance's metrics; the rest
    is reset for each process by :meth:`reset`.

    About the 450-line guide, and its module past 500, on purpose: every verdict on the prompt
    in flight is reached here, from one set of fields (the request, its deadline, the framer,
    the input numbering, the resend). Split by verdict, those fields would be shared between
    classes again, which is what this class exists to end. The framers and the outcome types
    live apart already (:mod:`.framer`, :mod:`.outcomes`).
    """

    spec: ToolSpec
    #: The instance's index, for replies and errors.
    index: int
    #: The pool's name (:attr:`Reply.tool`).
    tool: str
    clock: Callable[[], float]
    #: The pool's rate-limit pause.
    limiter: RateLimiter
    log: structlog.typing.FilteringBoundLogger
    #: With a failover order: called with a rate-limited prompt, returns whether it took it
    #: over (then it is no longer this instance's, whatever its retries left).
    failover: Callable[[Request], bool] | None = None

    sent: int = attrs.field(init=False, default=0)
    completed: int = attrs.field(init=False, default=0)
    failed: int = attrs.field(init=False, default=0)
    timeouts: int = attrs.field(init=False, default=0)
    rate_limited: int = attrs.field(init=False, default=0)
    #: Tokens and cost of every turn, and model requests the tool retried on its own.
    usage: Usage = attrs.field(init=False, factory=Usage)
    tool_retries: int = attrs.field(init=False, default=0)
    latencies: deque[float] = attrs.field(
        init=False, factory=lambda: deque(maxlen=_LATENCY_SAMPLES)
    )

    # Per process, reset by reset().
    _framer: Framer | JsonlFramer | None = attrs.field(init=False, default=None)
    _jsonl: bool = attrs.field(init=False, default=False)
    #: The framer gave up while no prompt was in flight: no prompt is to blame, and the
    #: process must be restarted before anything else is written to it.
    _broken: InstanceCrashedError | None = attrs.field(init=False, default=None)
    #: The request whose reply is awaited, when it was written, whether it is counted, and
    #: its deadline.
    _current: Request | None = attrs.field(init=False, default=None)
    _started: float = attrs.field(init=False, default=0.0)
    _counted: bool = attrs.field(init=False, default=True)
    _reply_deadline: float = attrs.field(init=False, default=math.inf)
    #: Questions answered automatically since the prompt was written (or the process started).
    _answers: int = attrs.field(init=False, default=0)
    #: A request that was rate-limited: send it again once the pause is over.
    _resend: Request | None = attrs.field(init=False, default=None)
    #: Inputs written to this process: the number its next ready prompt must show, where the
    #: profile numbers them (PromptFraming.encode).
    _inputs: int = attrs.field(init=False, default=0)
    #: A prompt is written as it is: a line-reading tool whose prompt names no input and
    #: echoes nothing to skip (the prompt was checked for line breaks when it was sent).
    _plain_input: bool = attrs.field(init=False, default=False)
    #: What the input wire() made tells the framer once it is written: its echo, and how many
    #: times the tool repeats its prompt for it.
    _expected: tuple[str, int] | None = attrs.field(init=False, default=None)
    #: Whether a reply may carry usage or retry events to count, or say it was rate-limited:
    #: else a plain reply skips those readers (every reply asks).
    _accounted: bool = attrs.field(init=False, default=True)
    _limited: bool = attrs.field(init=False, default=True)

    def __attrs_post_init__(self) -> None:
        spec, framing = self.spec, self.spec.framing
        self._jsonl = spec.events is not None
        self._accounted = spec.usage is not None or spec.retry_event is not None
        self._limited = spec.rate_limit is not None
        self._plain_input = (
            isinstance(framing, PromptFraming)
            and framing.encode is None
            and not framing.prompt_per_line
            and not (spec.pty and spec.echo)
            and spec.ready is not None
            and "seq" not in compile_ready(spec.ready).groupindex
        )

    # -- a new process -------------------------------------------------------------------------

    def reset(self, log: structlog.typing.FilteringBoundLogger) -> None:
        """A new process starts (its events are logged to *log*): nothing of the last one's
        output, inputs or questions carries over."""
        self.log = log
        self._framer = self._new_framer()
        self._broken = None
        self._resend = None
        self._answers = 0
        self._inputs = 0
        self._expected = None

    def _new_framer(self) -> Framer | JsonlFramer | None:
        spec = self.spec
        events = spec.events
        if events is not None:
            return JsonlFramer(
                events,
                max_bytes=spec.max_reply_bytes,
                encoding=spec.encoding,
                on_junk=self._log_junk,
            )
        if spec.oneshot:
            return None  # the whole output, up to the exit, is the reply
        assert spec.ready is not None  # ToolSpec insists on it with the prompt framing
        framing = spec.framing
        return Framer(
            spec.ready,
            window=spec.ready_window,
            max_bytes=spec.max_reply_bytes,
            encoding=spec.encoding,
            settle=isinstance(framing, PromptFraming) and framing.settle is not None,
            responders=spec.responders,
        )

    def _log_junk(self, line: str) -> None:
        self.log.info("output_not_json", line=line[:500])

    # -- what the instance asks -----------------------------------------------------------------

    @property
    def current(self) -> Request | None:
        """The request whose reply is awaited."""
        return self._current

    @property
    def in_flight(self) -> int:
        return 0 if self._current is None else 1

    @property
    def broken(self) -> InstanceCrashedError | None:
        """Why the process must be restarted before anything else is written to it: its
        output broke down while no prompt was in flight."""
        return self._broken

    @property
    def resend(self) -> Request | None:
        """A rate-limited request to send again once the pause is over."""
        return self._resend

    def take_resend(self) -> Request | None:
        resend, self._resend = self._resend, None
        return resend

    def drop_resend(self, request: Request) -> None:
        """*request* is being sent (again): it is no longer waiting to be."""
        if self._resend is request:
            self._resend = None

    @property
    def settle(self) -> float | None:
        """How long output must stay quiet after a ready prompt before the reply counts as
        complete (see :meth:`quiet`), for a framing with ``settle``."""
        framing = self.spec.framing
        return framing.settle if isinstance(framing, PromptFraming) else None

    @property
    def pending(self) -> bool:
        """Whether the output ends with a ready prompt that :meth:`quiet` would commit."""
        framer = self._framer
        return isinstance(framer, Framer) and framer.pending

    def idle(self) -> bool:
        """Whether a prompt may be written with nothing to sort out first: none in flight or
        to be sent again, no breakdown, no output nobody claimed."""
        framer = self._framer
        return (
            self._current is None
            and self._resend is None
            and self._broken is None
            and (framer is None or not framer.buffered_bytes)
        )

    def partial(self) -> str:
        """The output since the last reply (for error reports)."""
        return "" if self._framer is None else self._framer.partial()

    def wake_at(self) -> float:
        """When the reply wait must wake without a reply: the deadline or the stall watchdog."""
        stall = self.spec.stall_timeout
        if stall is None:
            return self._reply_deadline
        return min(self._started + stall, self._reply_deadline)

    def watchdog(self) -> float:
        """The stall watchdog pushed back by output just read, never past the deadline."""
        stall = self.spec.stall_timeout
        assert stall is not None
        return min(self.clock() + stall, self._reply_deadline)

    # -- what the instance writes ---------------------------------------------------------------

    def wire(self, request: Request) -> bytes:
        """The bytes that send *request*'s prompt as this process's next input (see
        ToolSpec.input_for), with the newline, encoded. Nothing changes until
        :meth:`begin_input` says they are being written."""
        spec = self.spec
        if self._plain_input:
            return (request.prompt + spec.newline).encode(spec.encoding)
        line = spec.input_for(request.prompt, self._inputs + 1)
        text = line + spec.newline
        framing = spec.framing
        if isinstance(self._framer, Framer):
            assert isinstance(framing, PromptFraming)
            echo = text if spec.pty and spec.echo else ""
            self._expected = (echo, line.count("\n") if framing.prompt_per_line else 0)
        return text.encode(spec.encoding)

    def begin_input(self) -> None:
        """The input :meth:`wire` made is being written, before any of its output can be
        read: count it, and tell the framer what its reply starts with and which number the
        ready prompt after it must show."""
        self._inputs += 1
        expected, self._expected = self._expected, None
        if expected is not None:
            assert isinstance(self._framer, Framer)
            self._framer.begin(seq=self._inputs, echo=expected[0], repeats=expected[1])

    def written(self, request: Request, *, counted: bool) -> None:
        """*request* was written: its reply is awaited from now on. Not *counted*: an internal
        prompt (a probe), left out of the metrics and never attempted again."""
        request.state = SENT
        request.attempts += 1
        if counted:
            self.sent += 1
        self._answers = 0
        self._current, self._counted = request, counted
        self.log.debug("prompt_sent", key=request.key, attempt=request.attempts)
        self._started = self.clock()
        self._reply_deadline = math.inf if request.deadline is None else request.deadline

    def discard_stray(self, frames: int) -> InstanceCrashedError | None:
        """Drop what the process printed while idle (*frames* frames the instance dropped,
        and what is buffered): it belongs to no prompt. Returns :attr:`broken`."""
        framer = self._framer
        if self._broken is None and framer is not None and (frames or framer.buffered_bytes):
            self.log.debug("unsolicited_output", frames=frames, text=framer.partial()[-200:])
            framer.discard()
        return self._broken

    # -- what the process prints ----------------------------------------------------------------

    def feed(self, data: bytes) -> Sequence[Outcome]:
        """What *data*, output just read, means: usually nothing, or the reply of the prompt
        in flight (resolved already)."""
        framer = self._framer
        try:
            if isinstance(framer, JsonlFramer):
                return self._replies(framer.feed(data))
            assert framer is not None
            text = framer.feed(data)
            if text is not None:
                return self._replies([Frame(text)])
            question = framer.take_question()
            if question is None:
                return _NOTHING
            return (self._answer(framer, *question),)
        except FrameOverflow as exc:
            return (self._break(Overflow(exc.size, exc.partial)),)
        except FrameDesync as exc:
            return (self._break(Desync(exc.why, exc.partial)),)

    def quiet(self) -> Sequence[Outcome]:
        """No output came for :attr:`settle` seconds after a ready prompt: the reply is
        complete."""
        framer = self._framer
        assert isinstance(framer, Framer)
        text = framer.commit()
        return _NOTHING if text is None else self._replies([Frame(text)])

    def eof(self) -> Sequence[Outcome]:
        """The output ended: a last JSON line without a newline is complete."""
        framer = self._framer
        if not isinstance(framer, JsonlFramer):
            return _NOTHING
        frames = framer.finish()
        return self._replies(frames)

    def _replies(self, done: list[Frame]) -> Sequence[Outcome]:
        if not done or self._broken is not None:
            return _NOTHING  # whatever it prints now is garbage, until the process is replaced
        if len(done) == 1 and self._current is not None:
            self.complete(done[0])  # the usual case
            return done
        outcomes: list[Outcome] = []
        for frame in done:
            if self._current is not None:
                self.complete(frame)
                outcomes.append(frame)
            elif self._inputs:
                # A reply nobody asked for: the tool answered one input twice, or showed a
                # prompt inside a reply. Whatever it prints next may end a later prompt's
                # reply, so the process is replaced before anything else is written to it.
                why = "a reply ended while no prompt was in flight"
                outcomes.append(self._break(Desync(why, frame.raw or frame.text)))
                break
            else:
                # Start-up (nothing written to it yet): a banner, or a tool that shows its
                # prompt twice.
                outcomes.append(Unsolicited(frame))
        return outcomes

    def _answer(self, framer: Framer, pattern: str, answer: str) -> Outcome:
        """A question the tool asked on its own (a ``responders`` match)."""
        self._answers += 1
        if self._answers > self.spec.max_auto_answers:
            partial = framer.partial()
            framer.discard()
            self.log.warning(
                "auto_answers_exhausted", pattern=pattern, limit=self.spec.max_auto_answers
            )
            return self._break(TooManyQuestions(pattern, partial))
        self.log.info("prompt_answered", pattern=pattern, answer=answer, count=self._answers)
        return Answer((answer + self.spec.newline).encode(self.spec.encoding))

    def _break(self, event: Breakdown) -> Breakdown:
        """The framer gave up. With a prompt in flight, that prompt fails (see give_up). With
        none, no prompt is to blame: the process is :attr:`broken`, and the event says so
        (``idle``) the first time."""
        if self._current is not None or self._broken is not None:
            return event
        self._broken = self.breakdown_error(event, None)
        if isinstance(event, Overflow):
            self.log.warning("output_overflow_while_idle", size=event.size)
        elif isinstance(event, TooManyQuestions):
            self.log.warning("auto_answers_exhausted_while_idle", pattern=event.pattern)
        else:
            self.log.warning("output_desynchronised", why=event.why)
        return attrs.evolve(event, idle=True)

    # -- replies --------------------------------------------------------------------------------

    def complete(self, frame: Frame, *, exit_code: int | None = None) -> None:
        """Turn a framed reply into the in-flight request's Reply (or its ToolError, or a
        resend after a rate limit)."""
        request = self._current
        assert request is not None
        self._current = None
        elapsed = self.clock() - self._started
        # Before the outcome is judged: a failed or rate-limited turn was paid for too.
        usage = self._account(frame) if self._accounted else None
        if self._limited and self._rate_limited(request, frame):
            return
        if frame.failure is not None:
            if self._counted:
                self.failed += 1
            self.log.info("tool_failed", error=frame.failure[:500], key=request.key)
            request.resolve(tool_error(self.spec, self.index, request, frame, exit_code))
            return
        text = frame.text
        if not self._jsonl:
            text = clean_reply(text)
        reply = Reply(
            text=text,
            instance=self.index,
            prompt=request.prompt,
            key=request.key,
            elapsed=elapsed,
            attempts=request.attempts,
            events=frame.events,
            usage=usage,
            tool=self.tool,
            failovers=request.failovers,
        )
        if self._counted:
            self.completed += 1
            self.latencies.append(elapsed)
        if self.limiter.streak:
            self.limiter.succeeded()
        self.log.debug("reply_received", elapsed=elapsed, key=request.key)
        request.resolve(reply)

    def _account(self, frame: Frame) -> Usage | None:
        """Count the turn's retry events and add up what it cost; return its usage."""
        try:
            retries, usage = read_usage(self.spec, frame)
        except Exception as exc:  # a broken reader costs the count, not the reply
            self.log.warning("usage_not_read", error=repr(exc))
            return None
        if retries:
            self.tool_retries += retries
            self.log.info("tool_retried", retries=retries, total=self.tool_retries)
        if usage is not None:
            self.usage += usage
        return usage

    def _rate_limited(self, request: Request, frame: Frame) -> bool:
        """Whether the reply says the provider rate-limited the prompt; if so, pause the
        pool and have the prompt sent again (not a failure), here or by the failover."""
        match = rate_limit_match(self.spec, frame) if self._counted else None
        if match is None:
            return False
        # With a failover order the prompt leaves this pool, whatever its retries left.
        moving = self.failover is not None
        if not moving and request.rate_limited >= self.spec.rate_limit_retries:
            return False
        request.rate_limited += 1
        self.rate_limited += 1
        pause = self.limiter.pause(
            base=self.spec.rate_limit_backoff, cap=self.spec.rate_limit_max_backoff
        )
        self.log.warning(
            "rate_limited",
            pause=round(pause, 3),
            streak=self.limiter.streak,
            match=match.group()[:200],
            key=request.key,
        )
        request.state = QUEUED
        if self.failover is not None and self.failover(request):
            return True
        if request.rate_limited > self.spec.rate_limit_retries:
            request.state = SENT
            return False
        self._resend = request
        return True

    # -- endings --------------------------------------------------------------------------------

    def abandon(self, *, counted: int) -> None:
        """The instance is leaving (cancelled) with a prompt in flight: that prompt fails."""
        current, self._current = self._current, None
        if current is not None:
            self.failed += counted
            current.resolve(
                ClusterClosedError("the cluster was shut down while the prompt was in flight")
            )

    def give_up(
        self,
        request: Request,
        breakdown: Breakdown | None,
        *,
        exit_code: int | None,
        counted: int,
    ) -> Failure:
        """The wait for *request*'s reply ended without one: because of *breakdown*, because
        the process exited (*exit_code*), or because the wait timed out (a stall before the
        deadline). An uncounted (internal) prompt is never attempted again."""
        if self._current is not None:
            request = self._current  # the reader wrote it after the one we were given
        self._current = None
        elapsed = self.clock() - self._started
        self.failed += counted
        partial = self.partial()
        retry = bool(counted)
        if self._broken is not None:
            # It broke down before the prompt was all written: the prompt is not to blame.
            return Failure(request, self._broken, retry=retry, unsent=True)
        if breakdown is not None:
            return Failure(request, self.breakdown_error(breakdown, request), retry=False)
        if exit_code is not None:
            crash = self.crash_error(request, "exited", exit_code, partial)
            return Failure(request, crash, retry=retry, exited=True)
        if self.clock() < self._reply_deadline:  # woken before the deadline: a stall
            return Failure(request, self._stalled(request, partial, "restarting it"), retry=retry)
        timeout = self._timed_out(request, partial, counted, elapsed, "restarting it")
        return Failure(request, timeout, retry=False)

    # -- errors ---------------------------------------------------------------------------------

    def breakdown_error(self, event: Breakdown, request: Request | None) -> InstanceCrashedError:
        """The error for a breakdown: the process must be restarted."""
        return breakdown_error(self.spec, self.index, event, request)

    def crash_error(
        self, request: Request | None, what: str, exit_code: int | None, partial: str = ""
    ) -> InstanceCrashedError:
        return crash_error(self.spec, self.index, request, what, exit_code, partial)

    def _stalled(self, request: Request, partial: str, then: str) -> InstanceStalledError:
        self.log.warning("instance_stalled", stall_timeout=self.spec.stall_timeout)
        return stalled_error(self.spec, self.index, request, partial, then)

    def _timed_out(
        self, request: Request, partial: str, counted: int, elapsed: float, then: str
    ) -> ReplyTimeoutError:
        self.timeouts += counted
        self.log.warning("reply_timed_out", elapsed=elapsed)
        return timeout_error(self.index, request, partial, then)
