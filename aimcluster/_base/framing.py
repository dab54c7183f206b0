"""How a tool's output is cut into replies: the framings a :class:`~aimcluster.ToolSpec`
chooses from with its ``framing`` field.

- :class:`PromptFraming` (the default): a reply ends where the output ends with the ready
  prompt.
- :class:`JsonlFraming`: the tool reads one JSON object a line and writes JSON events; a reply
  is the events up to a terminal one.
- :class:`OneshotFraming`: one process per prompt; a reply is its whole output, optionally
  read as JSON events too.

What carries them out, the framers that turn output into replies, belong to the slot
(:mod:`aimcluster._slot.framer`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import attrs

__all__ = [
    "Event",
    "Framing",
    "JsonlFraming",
    "OneshotFraming",
    "PromptFraming",
    "compile_ready",
]

#: One JSON event a tool wrote, as parsed.
Event = dict[str, Any]


def _positive_or_none(instance: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _no_failure(events: Sequence[Event]) -> str | None:
    return None


def _json_prompt(prompt: str) -> str:
    return json.dumps({"prompt": prompt})


@attrs.frozen(kw_only=True)
class PromptFraming:
    """A reply ends where the output ends with the ToolSpec's ``ready`` regex.

    Such a tool reads one line per prompt, so a prompt with a line break would reach it as
    several inputs, each answered with a ready prompt of its own, and every later reply would
    go to the prompt before it. A prompt therefore reaches the tool as exactly one input: as
    *encode* writes it (the built-in ``python`` and ``bash`` profiles wrap every prompt into
    one line), as a block the tool reads as one (*prompt_per_line*: aider's ``{``...``}``),
    or not at all: a prompt whose input would span lines is refused with :class:`ValueError`
    before a byte is written.

    Where the profile chooses the tool's prompt, it makes the prompt name the input it
    follows: a ``ready`` regex with a group named ``seq`` must match the number *encode* was
    given for the prompt in flight. A ready prompt with another number, or one while no prompt
    is in flight, fails the prompt with :class:`~aimcluster.DesyncError` and restarts the
    instance. Then no reply can be taken for another prompt's.
    """

    #: After the ready regex matched, the reply is complete only if no more output arrives
    #: within this many seconds; for tools whose prompt text can also appear inside a reply.
    #: ``None``: complete at once.
    settle: float | None = attrs.field(default=None, validator=_positive_or_none)
    #: The input for a prompt, without the final newline: ``encode(prompt, seq)``, where *seq*
    #: is the number the tool's next ready prompt must show (group ``seq`` of the ``ready``
    #: regex), counted from 1 for each process. ``None``: the prompt as it is.
    encode: Callable[[str, int], str] | None = None
    #: The tool shows its ready prompt again before it reads each further line of one input
    #: (aider reading a ``{``...``}`` block). Then *encode* may return several lines: the
    #: framer skips one such prompt a line before it looks for the reply's end. Otherwise an
    #: input that spans lines is refused.
    prompt_per_line: bool = False


@attrs.frozen(kw_only=True)
class JsonlFraming:
    """The tool reads one JSON object a line and writes one JSON event a line.

    A reply is every event up to and including the first one *terminal* accepts.
    """

    #: Whether an event ends the reply (Claude Code's ``result``, Codex's ``turn.completed``).
    terminal: Callable[[Event], bool]
    #: The reply's text, from its events (for example the ``result`` event's ``result``).
    answer: Callable[[Sequence[Event]], str]
    #: The input line for a prompt, without the newline.
    encode: Callable[[str], str] = _json_prompt
    #: A failure message when the events report the turn failed (``is_error``,
    #: ``turn.failed``), else ``None``; a failed turn raises :class:`~aimcluster.ToolError`.
    failure: Callable[[Sequence[Event]], str | None] = _no_failure
    #: An event that says the tool is ready after start-up; ``None``: ready once spawned (for
    #: tools that print nothing until their first input).
    ready: Callable[[Event], bool] | None = None


@attrs.frozen(kw_only=True)
class OneshotFraming:
    """One process per prompt: ``{prompt}`` in ``argv`` is replaced by the prompt (as part of one
    argument, never through a shell), stdin is closed, and the reply is the output up to the
    process's exit. A non-zero exit is a :class:`~aimcluster.ToolError`.
    """

    #: Read the output as JSON events; the reply's text and failures come from them.
    events: JsonlFraming | None = None


#: How a tool's output is cut into replies.
Framing = PromptFraming | JsonlFraming | OneshotFraming


_INLINE_FLAGS = re.compile(r"^\(\?[aiLmsux]+\)")


def compile_ready(ready: str, *, anchored: bool = True) -> re.Pattern[str]:
    r"""The ready regex as the framer uses it: anchored at the end of the output (``\Z``), with
    MULTILINE so that ``^`` means "at the start of a line". Not *anchored*: found anywhere.

    A leading inline flag group such as ``(?i)`` stays in front of the wrapper, where Python
    requires it to be.
    """
    flags = _INLINE_FLAGS.match(ready)
    prefix = flags.group() if flags else ""
    end = "\\Z" if anchored else ""
    return re.compile(f"{prefix}(?:{ready[len(prefix) :]}){end}", re.MULTILINE)
