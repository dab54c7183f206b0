"""ToolSpec: everything aimcluster needs to know to run one kind of interactive tool."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ._framing import compile_ready


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _valid_regex(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    try:
        compiled = re.compile(value)
        compile_ready(value)  # the form the framer really uses must compile too
    except re.error as exc:
        raise ValueError(f"{attribute.name} is not a valid regex: {value!r} ({exc})") from None
    if compiled.match(""):
        raise ValueError(f"{attribute.name} must not match the empty string, got {value!r}")


def _argv_tuple(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        # A str is a sequence of one-character strings; it would "work" as argv ('p','y',...).
        raise ValueError(f"argv must be a sequence of strings, not a string: {value!r}")
    return tuple(value)


def _non_empty_argv(instance: Any, attribute: attrs.Attribute[Any], value: Sequence[str]) -> None:
    if not value or not all(isinstance(arg, str) for arg in value):
        raise ValueError(f"argv must be a non-empty sequence of strings, got {value!r}")


def _fraction(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"{attribute.name} must be in [0, 1), got {value!r}")


@attrs.frozen(kw_only=True)
class Probe:
    """A health check run on idle instances: a command and the reply it must produce."""

    #: What to send, for example ``"1+1"`` or ``"/ls"``.
    command: str
    #: A regex that must be found in the reply text.
    expect: str = attrs.field(validator=_valid_regex)
    #: Seconds an instance must have been idle before it is probed (and between probes).
    interval: float = attrs.field(default=30.0, validator=_positive)
    #: Seconds the probe's reply may take.
    timeout: float = attrs.field(default=10.0, validator=_positive)


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
    #: An idle health check; an instance that fails it is restarted.
    probe: Probe | None = None
    #: Restart an instance gracefully after this many prompts (long-lived agents bloat).
    max_prompts: int | None = attrs.field(default=None, validator=_positive)
    #: Restart an instance gracefully once its process is this many seconds old (when idle).
    max_age: float | None = attrs.field(default=None, validator=_positive)
    #: Random spread of ``max_prompts`` and ``max_age`` (0.1: +-10 %), so that instances
    #: started together are not all recycled at once.
    recycle_jitter: float = attrs.field(default=0.1, validator=_fraction)

    @property
    def executable(self) -> str:
        """The program that is started, as given in ``argv``."""
        return self.argv[0]
