"""The exceptions aimcluster raises. Every one of them subclasses :class:`AimclusterError`."""

from __future__ import annotations

from typing import Any

import anyio


class AimclusterError(Exception):
    """Base class of every error aimcluster raises on purpose."""


class ToolNotFoundError(AimclusterError):
    """The tool's executable does not exist; raised before any process is started."""

    def __init__(self, tool: str, executable: str) -> None:
        super().__init__(
            f"tool {tool!r}: executable {executable!r} was not found on PATH "
            "or is not an executable file"
        )
        self.tool = tool
        self.executable = executable


class StartupError(AimclusterError):
    """An instance did not show its ready prompt in time, or exited before it did."""

    def __init__(
        self,
        message: str,
        *,
        instance: int,
        output: str,
        exit_code: int | None = None,
    ) -> None:
        tail = output[-2000:]
        detail = f"\n--- output so far ---\n{tail}" if tail else "\n(no output)"
        super().__init__(f"instance {instance}: {message}{detail}")
        self.instance = instance
        #: Everything the instance printed before it failed to start.
        self.output = output
        #: The exit code if the process exited, else ``None``.
        self.exit_code = exit_code


class ReplyTimeoutError(AimclusterError):
    """No complete reply arrived in time. The instance is restarted if it was replying.

    Deliberately not a :class:`TimeoutError`: ``read_any(timeout=...)`` raises the built-in
    one when *nothing* completed, and re-raises this one for a submitted prompt that timed out;
    the two must not be confused.
    """

    def __init__(
        self,
        message: str,
        *,
        prompt: str,
        instance: int | None,
        partial_output: str = "",
    ) -> None:
        super().__init__(message)
        self.prompt = prompt
        #: The instance that held the prompt, or ``None`` if it was still queued.
        self.instance = instance
        self.partial_output = partial_output


class InstanceCrashedError(AimclusterError):
    """The instance exited (or was killed as stuck) while it was handling the prompt."""

    def __init__(
        self,
        message: str,
        *,
        instance: int,
        exit_code: int | None,
        partial_output: str,
        prompt: str | None = None,
    ) -> None:
        super().__init__(message)
        self.instance = instance
        #: The process's exit code; negative for a signal, as in :mod:`subprocess`.
        self.exit_code = exit_code
        #: What the instance printed for this prompt before it went away.
        self.partial_output = partial_output
        self.prompt = prompt


class InstanceStalledError(InstanceCrashedError):
    """The instance printed nothing for ``stall_timeout`` seconds mid-reply and was restarted."""


class ReplyTooLargeError(InstanceCrashedError):
    """The tool printed more than ``ToolSpec.max_reply_bytes`` without a ready prompt.

    The instance is killed and restarted, since the rest of its output cannot be framed.
    """


class AutoAnswerLimitError(InstanceCrashedError):
    """The tool asked more questions during one prompt than ``ToolSpec.max_auto_answers``
    allows (a question loop); the instance is restarted."""


class DesyncError(InstanceCrashedError):
    """The tool's output no longer lines up with the prompts written to it: a ready prompt
    that cannot end the reply in flight (one that names another input, or one while no
    prompt is in flight), or input the tool did not read as one prompt.

    The prompt in flight fails with this error rather than take output that may belong to
    another prompt, and the instance is restarted, so that no later prompt is answered with
    what was meant for an earlier one.
    """


class ClusterClosedError(AimclusterError):
    """The cluster was shut down before (or while) the prompt could be handled."""


class NoHealthyInstancesError(AimclusterError):
    """No instance that could take the prompt is left: each has spent its restart budget."""


class RateLimitedError(AimclusterError):
    """The provider rate-limited a prompt sent through a lease, in a cluster with a failover
    order (``launch_cluster(fallback=...)``): a lease's prompt needs the state its instance
    built up, so it cannot move to another pool by itself. The lease's work moves as a whole
    instead (:func:`run_jobs` starts the job again, from its first step, on the next pool).
    """

    def __init__(self, message: str, *, tool: str, instance: int, prompt: str) -> None:
        super().__init__(message)
        #: The pool that was rate-limited, the instance and the prompt.
        self.tool = tool
        self.instance = instance
        self.prompt = prompt


class PromptCancelledError(AimclusterError):
    """The prompt was withdrawn (``Ticket.cancel()`` or a cancelled ``send``) before its reply."""


class ToolError(AimclusterError):
    """The tool answered, but reported that the turn failed: an error event, ``is_error``,
    ``turn.failed``, or a one-shot process that exited with a non-zero code.

    The instance is fine and keeps serving; the prompt is not retried.
    """

    def __init__(
        self,
        message: str,
        *,
        instance: int,
        prompt: str,
        exit_code: int | None = None,
        output: str = "",
        events: tuple[dict[str, Any], ...] = (),
    ) -> None:
        super().__init__(message)
        self.instance = instance
        self.prompt = prompt
        #: The one-shot process's exit code, or ``None`` for a long-lived tool.
        self.exit_code = exit_code
        #: What the tool printed for the prompt (its raw output).
        self.output = output
        #: The turn's JSON events, the failing one last (JSONL framings only).
        self.events = events

    @property
    def event(self) -> dict[str, Any] | None:
        """The event that reported the failure, if the tool writes events."""
        return self.events[-1] if self.events else None


class ReplyFailedError(AimclusterError):
    """A job's step got a reply that says the step failed: it matches a failure pattern
    (the job's ``fail_on``, else the tool's ``ToolSpec.failure_replies``)."""

    def __init__(self, *, step: int, prompt: str, pattern: str, reply: str, line: str) -> None:
        super().__init__(
            f"the reply to step {step} reports a failure (it matches {pattern!r}): {line!r}"
        )
        #: The step's number, from 1.
        self.step = step
        self.prompt = prompt
        #: The pattern that matched, and the whole reply.
        self.pattern = pattern
        self.reply = reply


class VerifyFailedError(AimclusterError):
    """A job's verify command exited non-zero, did not finish in time, or did not start."""

    def __init__(
        self, message: str, *, argv: tuple[str, ...], exit_code: int | None, output: str
    ) -> None:
        super().__init__(message)
        #: The command line, as run.
        self.argv = argv
        #: Its exit code (negative: killed by that signal); ``None`` if it did not run to its end.
        self.exit_code = exit_code
        #: The end of its output, stdout and stderr together.
        self.output = output


def single_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error a task group collected, to raise as itself at a public boundary: the first
    leaf that is not a cancellation (nested groups flattened), else the first leaf."""
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                collect(inner)
        else:
            leaves.append(exc)

    collect(group)
    cancelled = anyio.get_cancelled_exc_class()
    for leaf in leaves:
        if not isinstance(leaf, cancelled):
            return leaf
    return leaves[0] if leaves else group
