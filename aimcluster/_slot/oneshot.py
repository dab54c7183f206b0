"""The exchange of a one-shot tool: one process per prompt, its whole output the reply.

A :class:`OneshotExchange` keeps what the process prints (the raw output, or the last event
of a JSON-lines one) and judges the reply only when the process is gone
(:meth:`OneshotExchange.conclude`): a clean exit is a reply, a non-zero one a
:class:`ToolError` carrying its stderr, a kill for a flood, a stall or the deadline a failure
of the prompt. The slot runs the process through the same reader and exit watcher as a
lasting one's (:class:`~.process.Process`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs

from .exchange import Exchange
from .framer import Frame, FrameDesync, FrameOverflow, JsonlFramer
from .outcomes import Desync, Failure, Outcome, Overflow, overflow_error

if TYPE_CHECKING:
    import structlog

    from .._base.errors import AimclusterError
    from .._base.request import Request

__all__ = ["OneshotExchange"]

_NOTHING: Sequence[Outcome] = ()


@attrs.define(eq=False)
class OneshotExchange(Exchange):
    """One prompt per process; the reply is judged at the exit (see the module docstring)."""

    #: The whole output, and the last frame of a JSON-lines one.
    _raw: bytearray = attrs.field(init=False, factory=bytearray)
    _last: Frame | None = attrs.field(init=False, default=None)

    def reset(self, log: structlog.typing.FilteringBoundLogger) -> None:
        super().reset(log)
        self._raw.clear()
        self._last = None

    def partial(self) -> str:
        return self._raw.decode(self.spec.encoding, "replace")

    def feed(self, data: bytes) -> Sequence[Outcome]:
        """Keep *data*; it means something now only if there is too much of it."""
        framer = self._framer
        try:
            if isinstance(framer, JsonlFramer):
                frames = framer.feed(data)
                if frames:
                    self._last = frames[-1]
            elif len(self._raw) + len(data) > self.spec.max_reply_bytes:
                size = len(self._raw) + len(data)
                return (Overflow(size, self._raw.decode(self.spec.encoding, "replace")),)
        except FrameOverflow as exc:
            return (self._break(Overflow(exc.size, exc.partial)),)
        except FrameDesync as exc:
            return (self._break(Desync(exc.why, exc.partial)),)
        self._raw += data
        return _NOTHING

    def eof(self) -> Sequence[Outcome]:
        """The output ended: a last JSON line without a newline is complete."""
        framer = self._framer
        if isinstance(framer, JsonlFramer):
            frames = framer.finish()
            if frames:
                self._last = frames[-1]
        return _NOTHING

    def refused(self, request: Request, error: AimclusterError, *, counted: bool) -> None:
        """*request*'s process could not be started: it fails with *error*."""
        if counted:
            self.sent += 1
            self.failed += 1
        request.resolve(error)

    def conclude(
        self, exit_code: int | None, *, stderr: str, overflow: Overflow | None
    ) -> Failure | None:
        """The process is gone: its output is the reply of the prompt in flight, or tells
        why there is none. *exit_code* is ``None`` if it was killed for running out of time
        or printing too much (*overflow*); *stderr* is the tail of a separate stderr."""
        request = self._current
        assert request is not None
        output = self._raw.decode(self.spec.encoding, "replace")
        frame = self._judge(output, exit_code, stderr)
        if frame is not None:
            self.complete(frame, exit_code=exit_code)
            return None
        self._current = None
        counted = int(self._counted)
        self.failed += counted
        elapsed = self.clock() - self._started
        retry = bool(counted)
        if overflow is not None:
            error = overflow_error(self.spec, self.index, request, overflow)
            return Failure(request, error, retry=False)
        if exit_code is None and self.clock() < self._reply_deadline:
            return Failure(request, self._stalled(request, output, "killed it"), retry=retry)
        if exit_code is None:
            timeout = self._timed_out(request, output, counted, elapsed, "killed it")
            return Failure(request, timeout, retry=False)
        # Killed by a signal, or no terminal event before the exit: it crashed mid-turn.
        crash = self.crash_error(request, "exited", exit_code, output)
        return Failure(request, crash, retry=retry, exited=True)

    def _judge(self, output: str, exit_code: int | None, stderr: str) -> Frame | None:
        """The frame an exit makes of the output, if it makes a reply (or a tool's failure)."""
        last = self._last
        if exit_code is None:
            return None  # killed: no verdict of the tool's own
        if last is not None and (exit_code == 0 or last.failure is not None):
            # A tool that reports its failure in an event (and exits non-zero) gets a ToolError
            # carrying the event; one that exits without its terminal event crashed.
            return last
        if exit_code < 0 or self._jsonl:
            return None
        if exit_code > 0:
            output += stderr
            return Frame(output, failure=f"exit code {exit_code}: {output.strip()[-500:]}")
        return Frame(output)
