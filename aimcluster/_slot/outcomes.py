"""What an :class:`~.exchange.Exchange` tells its instance, and the verdicts it builds.

The outcomes of output (:class:`Answer`, :class:`Unsolicited`, the breakdowns
:class:`Overflow`, :class:`TooManyQuestions` and :class:`Desync`), the :class:`Failure` of a
prompt that got no reply, and the functions that read a turn (its usage, a rate limit) and
build the error a failed prompt carries: plain values and functions, no state and no I/O.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

import attrs

from .._base.errors import (
    AimclusterError,
    AutoAnswerLimitError,
    DesyncError,
    InstanceCrashedError,
    InstanceStalledError,
    ReplyTimeoutError,
    ReplyTooLargeError,
    ToolError,
)
from .._base.usage import Usage
from .framer import Frame

if TYPE_CHECKING:
    from .._base.request import Request
    from .._base.spec import ToolSpec

__all__ = [
    "BREAKDOWNS",
    "Answer",
    "Breakdown",
    "Desync",
    "Failure",
    "Outcome",
    "Overflow",
    "TooManyQuestions",
    "Unsolicited",
    "breakdown_error",
    "crash_error",
    "overflow_error",
    "rate_limit_match",
    "read_usage",
    "stalled_error",
    "timeout_error",
    "tool_error",
]


@attrs.frozen
class Overflow:
    """More than ``max_reply_bytes`` of output without the end of a reply."""

    size: int
    partial: str
    #: No prompt was in flight: the process is :attr:`Exchange.broken` from now on.
    idle: bool = False


@attrs.frozen
class TooManyQuestions:
    """The tool asked one question more than ``max_auto_answers`` for one prompt."""

    pattern: str
    partial: str
    idle: bool = False


@attrs.frozen
class Desync:
    """The output stopped lining up with the prompts: a ready prompt that cannot end the
    reply in flight (see :class:`FrameDesync`), or a reply while no prompt is in flight."""

    why: str
    partial: str
    idle: bool = False


#: The framer gave up: the process must be restarted.
Breakdown = Overflow | TooManyQuestions | Desync
BREAKDOWNS: Final = (Overflow, TooManyQuestions, Desync)


@attrs.frozen
class Answer:
    """Write :attr:`data` to the process: the answer to a question it asked (``responders``)."""

    data: bytes


@attrs.frozen
class Unsolicited:
    """A frame while nothing was ever written to the process (a start-up banner, a ready
    event): for the instance waiting for its process to be ready."""

    frame: Frame


#: What output means. A :class:`Frame` is the reply of the prompt in flight, already
#: resolved (or marked to be sent again, see :attr:`Exchange.resend`).
Outcome = Frame | Answer | Unsolicited | Overflow | TooManyQuestions | Desync


@attrs.frozen
class Failure:
    """The prompt in flight got no reply: what to do with it and with the process."""

    request: Request
    error: AimclusterError
    #: It may be attempted again (requeued within its retries): nothing says it is to blame.
    retry: bool
    #: The process had broken down before the prompt got through: the prompt is not lost
    #: but requeued (see :attr:`Exchange.broken`).
    unsent: bool = False
    #: The process exited (else it is alive and must be killed).
    exited: bool = False


# -- verdicts on a turn ------------------------------------------------------------------------


def read_usage(spec: ToolSpec, frame: Frame) -> tuple[int, Usage | None]:
    """How many model requests the tool retried on its own in this turn, and what it cost.

    :raises Exception: whatever the spec's readers raise; TypeError for a usage that is not one
    """
    retried, extract = spec.retry_event, spec.usage
    retries = 0 if retried is None else sum(1 for e in frame.events if retried(e))
    usage = None if extract is None else extract(frame.text, frame.events)
    if usage is not None and not isinstance(usage, Usage):
        raise TypeError(f"ToolSpec.usage returned {usage!r}, not a Usage or None")
    return retries, usage


def rate_limit_match(spec: ToolSpec, frame: Frame) -> re.Match[str] | None:
    """Where the turn says the provider rate-limited it: in a failed turn's message, or in a
    reply's text for tools without events (a JSON tool's successful answer may well talk
    about rate limits)."""
    if spec.rate_limit is None:
        return None
    if frame.failure is not None:
        text = frame.failure
    elif spec.events is None:
        text = frame.text
    else:
        return None
    return re.search(spec.rate_limit, text)


def tool_error(
    spec: ToolSpec, index: int, request: Request, frame: Frame, exit_code: int | None
) -> ToolError:
    """The tool reported a failed turn (an error event, or a one-shot's non-zero exit)."""
    assert frame.failure is not None
    return ToolError(
        f"instance {index} ({spec.name}) reported a failed turn for "
        f"{request.prompt[:60]!r}: {frame.failure}",
        instance=index,
        prompt=request.prompt,
        exit_code=exit_code,
        output=frame.raw or frame.text,
        events=frame.events,
    )


# -- errors -----------------------------------------------------------------------------------


def breakdown_error(
    spec: ToolSpec, index: int, event: Breakdown, request: Request | None
) -> InstanceCrashedError:
    """The error for a breakdown: the process must be restarted."""
    error: type[InstanceCrashedError]
    if isinstance(event, Overflow):
        error = ReplyTooLargeError
        what = f"printed more than {spec.max_reply_bytes} bytes without a ready prompt"
    elif isinstance(event, TooManyQuestions):
        error = AutoAnswerLimitError
        what = (
            f"({spec.name}) asked more than {spec.max_auto_answers} questions "
            f"matching {event.pattern!r}"
        )
    else:
        error = DesyncError
        what = f"({spec.name}) lost track of its prompts: {event.why}"
    return error(
        f"instance {index} {what}; restarting it",
        instance=index,
        exit_code=None,
        partial_output=event.partial[-65536:],
        prompt=None if request is None else request.prompt,
    )


def crash_error(
    spec: ToolSpec,
    index: int,
    request: Request | None,
    what: str,
    exit_code: int | None,
    partial: str = "",
) -> InstanceCrashedError:
    about = f" while replying to {request.prompt[:60]!r}" if request is not None else ""
    return InstanceCrashedError(
        f"instance {index} ({spec.name}) {what} with code {exit_code}{about}",
        instance=index,
        exit_code=exit_code,
        partial_output=partial,
        prompt=request.prompt if request is not None else None,
    )


def overflow_error(
    spec: ToolSpec, index: int, request: Request, overflow: Overflow
) -> ReplyTooLargeError:
    """A one-shot process printed too much for one prompt."""
    return ReplyTooLargeError(
        f"instance {index} ({spec.name}) printed more than "
        f"{spec.max_reply_bytes} bytes for one prompt; killed it",
        instance=index,
        exit_code=None,
        partial_output=overflow.partial[-65536:],
        prompt=request.prompt,
    )


def stalled_error(
    spec: ToolSpec, index: int, request: Request, partial: str, then: str
) -> InstanceStalledError:
    return InstanceStalledError(
        f"instance {index} printed nothing for {spec.stall_timeout} s while replying to "
        f"{request.prompt[:60]!r}; {then}",
        instance=index,
        exit_code=None,
        partial_output=partial,
        prompt=request.prompt,
    )


def timeout_error(index: int, request: Request, partial: str, then: str) -> ReplyTimeoutError:
    return ReplyTimeoutError(
        f"instance {index} did not finish replying to {request.prompt[:60]!r} in time; {then}",
        prompt=request.prompt,
        instance=index,
        partial_output=partial,
    )
