"""The exceptions aimcluster raises. Every one of them subclasses :class:`AimclusterError`."""

from __future__ import annotations


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


class ReplyTooLargeError(InstanceCrashedError):
    """The tool printed more than ``ToolSpec.max_reply_bytes`` without a ready prompt.

    The instance is killed and restarted, since the rest of its output cannot be framed.
    """


class ClusterClosedError(AimclusterError):
    """The cluster was shut down before (or while) the prompt could be handled."""


class NoHealthyInstancesError(AimclusterError):
    """No instance that could take the prompt is left: each has spent its restart budget."""


class PromptCancelledError(AimclusterError):
    """The prompt was withdrawn (``Ticket.cancel()`` or a cancelled ``send``) before its reply."""
