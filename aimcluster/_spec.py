"""ToolSpec: everything aimcluster needs to know to run one kind of interactive tool."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _valid_regex(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    try:
        compiled = re.compile(value)
    except re.error as exc:
        raise ValueError(f"{attribute.name} is not a valid regex: {value!r} ({exc})") from None
    if compiled.match(""):
        raise ValueError(f"{attribute.name} must not match the empty string, got {value!r}")


def _argv_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _non_empty_argv(instance: Any, attribute: attrs.Attribute[Any], value: Sequence[str]) -> None:
    if not value or not all(isinstance(arg, str) for arg in value):
        raise ValueError(f"argv must be a non-empty sequence of strings, got {value!r}")


@attrs.frozen(kw_only=True)
class ToolSpec:
    """How to start one interactive tool and how to tell when it waits for input.

    Instances are immutable; derive variants with :func:`attrs.evolve`.
    """

    #: A short name used in logs, metrics and error messages.
    name: str
    #: The command line; ``argv[0]`` is looked up on ``PATH``. Never run through a shell.
    argv: Sequence[str] = attrs.field(converter=_argv_tuple, validator=_non_empty_argv)
    #: A regex that matches at the *end* of the output when the tool waits for input.
    ready: str = attrs.field(validator=_valid_regex)
    #: Give the tool a pseudo-terminal (a real controlling tty) instead of pipes.
    pty: bool = False
    #: Send stderr into the same stream as stdout, in order, at the OS level.
    merge_stderr: bool = True
    #: Variables added to (or overriding) the parent's environment.
    env: Mapping[str, str] | None = None
    #: The working directory, or ``None`` for the parent's.
    cwd: str | Path | None = None
    #: Seconds the tool may take to show its first ready prompt.
    startup_timeout: float = attrs.field(default=30.0, validator=_positive)
    #: Default per-prompt timeout in seconds (``None``: wait for as long as it takes).
    reply_timeout: float | None = attrs.field(default=None, validator=_positive)
    #: A command sent first on graceful shutdown (for example ``"/exit"``).
    exit_command: str | None = None
    #: Seconds to wait for the tool to exit after ``exit_command`` and again after SIGTERM.
    shutdown_grace: float = attrs.field(default=3.0, validator=_positive)
    #: What ends a prompt on the tool's input.
    newline: str = "\n"
    #: The largest reply, in bytes, that is buffered before the instance is declared flooding.
    max_reply_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=_positive)
    #: How many trailing characters of output are searched for the ready regex.
    ready_window: int = attrs.field(default=4096, validator=_positive)
    #: No output for this many seconds while a prompt is in flight means the tool is stuck:
    #: it is killed and restarted (``None`` disables the watchdog).
    stall_timeout: float | None = attrs.field(default=None, validator=_positive)
    #: Text encoding of the tool's input and output; undecodable bytes become U+FFFD.
    encoding: str = "utf-8"

    @property
    def executable(self) -> str:
        """The program that is started, as given in ``argv``."""
        return self.argv[0]
