"""ToolSpec: everything aimcluster needs to know to run one kind of interactive tool."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from .framing import (
    Event,
    Framing,
    JsonlFraming,
    OneshotFraming,
    PromptFraming,
    compile_ready,
)
from .redact import Environment, redact_argv
from .usage import Usage


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _valid_regex(instance: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is None:
        return
    try:
        compiled = re.compile(value)
        compile_ready(value)  # the form the framer really uses must compile too
    except re.error as exc:
        raise ValueError(f"{attribute.name} is not a valid regex: {value!r} ({exc})") from None
    if compiled.match(""):
        raise ValueError(f"{attribute.name} must not match the empty string, got {value!r}")


def _pairs(value: Iterable[Sequence[str]]) -> tuple[tuple[str, str], ...]:
    return tuple(tuple(pair) for pair in value)  # type: ignore[misc]


def _valid_responders(
    instance: Any, attribute: attrs.Attribute[Any], value: Sequence[tuple[str, str]]
) -> None:
    for pair in value:
        if not (
            isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
        ):
            raise ValueError(f"responders must be (regex, answer) pairs, got {pair!r}")
        _valid_regex(instance, attribute, pair[0])


def _str_patterns(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise ValueError(f"expected a sequence of regexes, got the string {value!r}")
    return tuple(value)


def _valid_patterns(instance: Any, attribute: attrs.Attribute[Any], value: Sequence[str]) -> None:
    for pattern in value:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise ValueError(f"{attribute.name}: not a valid regex: {pattern!r} ({exc})") from None


def _argv_tuple(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        # A str is a sequence of one-character strings; it would "work" as argv ('p','y',...).
        shown = " ".join(redact_argv(value.split(" ")))
        raise ValueError(f"argv must be a sequence of strings, not a string: {shown!r}")
    return tuple(value)


def _env_mapping(value: Mapping[str, str] | None) -> Environment | None:
    # Stored as an Environment, whose repr redacts secret-looking variables (API keys): a spec
    # is printed, logged and shown among a traceback's locals.
    if value is None or isinstance(value, Environment):
        return value
    return Environment(value)


class Files(Mapping[str, str]):
    """A tool's files, ``{path: content}``: a read-only, hashable mapping whose repr shows
    each file's size, not its content (a configuration file may hold a key)."""

    __slots__ = ("_files",)

    def __init__(self, files: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        checked: dict[str, str] = {}
        for path, content in dict(files).items():
            if not isinstance(path, str) or not path:
                raise ValueError(f"files: a path must be a non-empty str, got {path!r}")
            if not isinstance(content, str):
                raise ValueError(
                    f"files: the content of {path!r} must be a str, got {type(content).__name__}"
                )
            checked[path] = content
        self._files = checked

    def __getitem__(self, path: str) -> str:
        return self._files[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._files == dict(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._files.items()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{path!r}: <{len(text)} chars>" for path, text in self._files.items())
        return f"Files({{{shown}}})"


def _files_mapping(value: Mapping[str, str] | None) -> Files | None:
    if value is None or isinstance(value, Files):
        return value
    return Files(value)


def _argv_repr(argv: Sequence[str]) -> str:
    return repr(tuple(redact_argv(argv)))


def _non_empty_argv(instance: Any, attribute: attrs.Attribute[Any], value: Sequence[str]) -> None:
    if not value or not all(isinstance(arg, str) for arg in value):
        shown = _argv_repr(value) if all(isinstance(arg, str) for arg in value) else repr(value)
        raise ValueError(f"argv must be a non-empty sequence of strings, got {shown}")


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


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
    argv: Sequence[str] = attrs.field(
        converter=_argv_tuple, validator=_non_empty_argv, repr=_argv_repr
    )
    #: A regex that matches at the *end* of the output when the tool waits for input. Required
    #: with the (default) prompt framing, unused by the others.
    ready: str | None = attrs.field(default=None, validator=_valid_regex)
    #: How the output is cut into replies: :class:`~aimcluster.PromptFraming` (the ``ready``
    #: regex), :class:`~aimcluster.JsonlFraming` (JSON events up to a terminal one) or
    #: :class:`~aimcluster.OneshotFraming` (one process per prompt).
    framing: Framing = attrs.field(factory=PromptFraming)
    #: Give the tool a pseudo-terminal (a real controlling tty) instead of pipes.
    pty: bool = False
    #: Send stderr into the same stream as stdout, in order, at the OS level.
    merge_stderr: bool = True
    #: Variables added to (or overriding) the parent's environment. Kept as a read-only
    #: mapping whose repr shows ``<redacted>`` for each variable whose name looks secret
    #: (contains ``KEY``, ``TOKEN``, ``SECRET``, ``PASSWORD``, ``AUTH``...); the tool gets the
    #: real values.
    env: Mapping[str, str] | None = attrs.field(default=None, converter=_env_mapping)
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
    #: A regex searched in each reply's text and in a failed turn's message (for example
    #: ``429|rate limit``): a match means the provider is rate limiting. The prompt is put back
    #: in the queue (not failed) and the whole cluster pauses, with jittered exponential
    #: backoff, before taking new prompts. ``None``: no detection.
    rate_limit: str | None = attrs.field(default=None, validator=_valid_regex)
    #: The first rate-limit pause in seconds; it doubles with each rate limit in a row.
    rate_limit_backoff: float = attrs.field(default=1.0, validator=_positive)
    #: The longest rate-limit pause in seconds.
    rate_limit_max_backoff: float = attrs.field(default=60.0, validator=_positive)
    #: How many times one prompt is held back for a rate limit before the tool's error is
    #: raised after all (as :class:`~aimcluster.ToolError`, or the reply if it was one).
    rate_limit_retries: int = attrs.field(default=8, validator=_non_negative)
    #: Questions the tool asks on its own, answered automatically: ``(regex, answer)`` pairs.
    #: When the output ends with a match (searched like ``ready``), ``answer`` and ``newline``
    #: are written; the question never ends a reply.
    responders: Sequence[tuple[str, str]] = attrs.field(
        default=(), converter=_pairs, validator=_valid_responders
    )
    #: The most questions answered automatically during one prompt (or the start-up); one more
    #: fails the prompt with :class:`~aimcluster.AutoAnswerLimitError` and restarts the instance.
    max_auto_answers: int = attrs.field(default=10, validator=_positive)
    #: With ``pty``: whether the terminal echoes what is written to it. ``False`` turns echo
    #: off before the tool starts (a tool that reads its input itself, such as one using
    #: readline, may still echo). Echoed input is skipped before the ready regex is looked for.
    echo: bool = True
    #: Regexes searched in each reply of a job (:func:`~aimcluster.run_jobs`): a match means the
    #: tool reports that the step failed (aider's ``Can't edit``), and fails the job.
    failure_replies: Sequence[str] = attrs.field(
        default=(), converter=_str_patterns, validator=_valid_patterns
    )
    #: Files written before each process of an instance starts, ``{path: content}``, their
    #: directories created as needed (files mode 0600, directories 0700; a relative path is
    #: taken from ``cwd``): a tool's own configuration, for example. ``{instance}`` and
    #: ``{state}`` are replaced in paths and contents. ``{state}`` (also replaced in ``argv``,
    #: ``env`` values and ``cwd``) is the instance's private directory, which the cluster
    #: creates when it starts and removes when it stops: ``env={"HOME": "{state}/home"}``
    #: gives every instance a home of its own, and the user's own configuration is never
    #: read or changed. The local transport writes them (and a Ray actor, on its node).
    files: Mapping[str, str] | None = attrs.field(default=None, converter=_files_mapping)
    #: What a reply cost, as the tool reports it: called with each reply's text and JSON
    #: events (also a failed or rate-limited turn's, which cost too), it returns a
    #: :class:`~aimcluster.Usage` or ``None``. The result is :attr:`Reply.usage
    #: <aimcluster.Reply.usage>` and is summed in :meth:`~aimcluster.Cluster.metrics`.
    usage: Callable[[str, Sequence[Event]], Usage | None] | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.is_callable())
    )
    #: Whether a JSON event says that the tool retried a model request on its own (Claude
    #: Code's ``system``/``api_retry``): counted as ``tool_retries`` in the metrics and logged
    #: ``tool_retried``, so that a provider throttling the fleet shows even while every prompt
    #: succeeds.
    retry_event: Callable[[Event], bool] | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.is_callable())
    )

    def __attrs_post_init__(self) -> None:
        if isinstance(self.framing, PromptFraming) and self.ready is None:
            raise ValueError(f"tool {self.name!r}: the prompt framing needs a ready regex")
        if self.probe is not None and not self.oneshot:
            # Probes are written as prompts are, without a send() to refuse them first.
            try:
                self.input_for(self.probe.command, 1)
            except ValueError as exc:
                raise ValueError(f"the probe's command cannot be sent: {exc}") from None
        if isinstance(self.framing, OneshotFraming) and not any(
            "{prompt}" in arg for arg in self.argv
        ):
            raise ValueError(
                f"tool {self.name!r}: a one-shot argv must contain {{prompt}}, "
                f"got {_argv_repr(self.argv)}"
            )

    @property
    def oneshot(self) -> bool:
        """Whether each prompt runs a process of its own (:class:`~aimcluster.OneshotFraming`)."""
        return isinstance(self.framing, OneshotFraming)

    @property
    def events(self) -> JsonlFraming | None:
        """How to read the tool's JSON events, if it writes them."""
        if isinstance(self.framing, JsonlFraming):
            return self.framing
        if isinstance(self.framing, OneshotFraming):
            return self.framing.events
        return None

    def for_prompt(self, prompt: str) -> ToolSpec:
        """The spec of the one-shot process that answers *prompt*: ``{prompt}`` replaced in
        each argument (the prompt stays inside the one argument it was put in)."""
        spawned = copy.copy(self)
        # Not attrs.evolve: its validation would insist that the new argv contain {prompt}.
        object.__setattr__(spawned, "argv", tuple(a.replace("{prompt}", prompt) for a in self.argv))
        return spawned

    def input_for(self, prompt: str, seq: int) -> str:
        """The text written to send *prompt*, without ``newline``: the JSON line of a JSONL
        framing, or what the prompt framing's ``encode`` makes of it. *seq* numbers the
        process's inputs from 1 (see :attr:`PromptFraming.encode`).

        :raises ValueError: if the tool would not read it as one input: a line break in a
            prompt for a tool that reads one line per prompt
        """
        framing = self.framing
        if isinstance(framing, JsonlFraming):
            return framing.encode(prompt)
        if not isinstance(framing, PromptFraming):
            return prompt  # a one-shot tool takes it as an argument
        text = prompt if framing.encode is None else framing.encode(prompt, seq)
        if "\r" in text or ("\n" in text and not framing.prompt_per_line):
            breaks = [i for i in (prompt.find("\n"), prompt.find("\r")) if i >= 0]
            at = f" at position {min(breaks)}" if breaks else ""
            raise ValueError(
                f"tool {self.name!r} reads one line per prompt, and this prompt has a line "
                f"break{at}: it would reach the tool as several prompts. Send it as one line, "
                f"or describe how the tool reads several lines as one input "
                f"(PromptFraming(encode=..., prompt_per_line=...))"
            )
        return text

    @property
    def executable(self) -> str:
        """The program that is started, as given in ``argv``."""
        return self.argv[0]
