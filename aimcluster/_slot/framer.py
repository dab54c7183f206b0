"""The framers: a tool's output, chunk by chunk, into replies. Sans-IO: bytes go in, frames
come out, and the :class:`~.exchange.Exchange` that owns one decides what they mean.

- :class:`Framer` (:class:`~aimcluster.PromptFraming`) is fed raw chunks in arrival order. It
  decodes them incrementally (a multi-byte character split across reads is decoded once whole;
  invalid bytes become U+FFFD) and searches only the last ``window`` characters for the ready
  regex, so a big reply costs O(size), not O(size^2), however it is chunked.
- :class:`JsonlFramer` (:class:`~aimcluster.JsonlFraming`, and a one-shot tool's events) cuts
  JSON lines into replies, each ending with a terminal event.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Sequence
from typing import NoReturn

import attrs

from .._base.framing import Event, JsonlFraming, compile_ready

__all__ = [
    "Frame",
    "FrameDesync",
    "FrameOverflow",
    "Framer",
    "JsonlFramer",
    "clean_reply",
]


@attrs.frozen(slots=False)  # one a reply: built faster with a __dict__ (see Reply)
class Frame:
    """One framed reply, before it becomes a :class:`~aimcluster.Reply`."""

    #: The reply's raw text (prompt framing), or the answer extracted from the events.
    text: str
    #: The reply's JSON events (JSONL framings only).
    events: tuple[Event, ...] = ()
    #: Why the turn failed, if the events say it did.
    failure: str | None = None
    #: The lines the reply was read from (JSONL framings; for error reports).
    raw: str = ""


class FrameOverflow(Exception):
    """More than ``max_bytes`` of output arrived without a ready prompt."""

    def __init__(self, size: int, partial: str) -> None:
        super().__init__(size)
        self.size = size
        self.partial = partial


class FrameDesync(Exception):
    """The output stopped lining up with the input: a ready prompt that names another input,
    or a tool that did not show its prompt again for each line of a block."""

    def __init__(self, why: str, partial: str) -> None:
        super().__init__(why)
        self.why = why
        self.partial = partial


class _CappedFramer:
    """What both framers share: incremental decoding, and the cap on one reply's bytes."""

    __slots__ = ("_dead", "_decoder", "_max_bytes", "buffered_bytes")

    def __init__(self, *, max_bytes: int, encoding: str) -> None:
        self._max_bytes = max_bytes
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        #: Bytes of the reply buffered so far; only the framer sets it. An attribute, not a
        #: property: the slot's fast path reads it before every prompt.
        self.buffered_bytes = 0
        self._dead = False

    def _take(self, data: bytes) -> str | None:
        """*data* decoded; ``None`` once past the cap.

        :raises FrameOverflow: when *data* takes the reply past the cap (what was buffered
            is discarded, and so is everything after it)
        """
        if self._dead:
            return None
        self.buffered_bytes += len(data)
        if self.buffered_bytes > self._max_bytes:
            self._dead = True
            size, partial = self.buffered_bytes, self.partial()
            self.discard()
            raise FrameOverflow(size, partial)
        return self._decoder.decode(data)

    def partial(self) -> str:
        raise NotImplementedError

    def discard(self) -> None:
        raise NotImplementedError


class Framer(_CappedFramer):
    """Accumulates output until it ends with the ready prompt.

    :meth:`feed` returns the raw text before the prompt when the output ends with it, else
    ``None``. Once it has raised :class:`FrameOverflow` or :class:`FrameDesync`, the framer
    discards everything, since the rest of the stream cannot be framed reliably.

    :meth:`begin` tells it, as each prompt is written, what the output must start with (the
    terminal's echo, the prompts the tool repeats for a block's lines) and which number the
    ready prompt must show; those checks cost the plain path nothing.
    """

    __slots__ = (
        "_anywhere",
        "_candidate",
        "_candidate_prompt",
        "_chunks",
        "_echo",
        "_echo_at",
        "_echo_seen",
        "_echo_tty",
        "_expect",
        "_expecting",
        "_held",
        "_last_prompt",
        "_pattern",
        "_question",
        "_repeats",
        "_responders",
        "_sequenced",
        "_settle",
        "_tail",
        "_window",
    )

    # Set by discard(), which __init__ calls.
    _expect: int | None
    _tail: str

    def __init__(
        self,
        ready: str,
        *,
        window: int,
        max_bytes: int,
        encoding: str,
        settle: bool = False,
        responders: Sequence[tuple[str, str]] = (),
    ) -> None:
        """With *settle*, a match is only a candidate (see :attr:`pending`): :meth:`feed`
        returns ``None`` and the caller decides with :meth:`commit` once output went quiet.

        *responders* are ``(regex, answer)`` pairs: output that ends with a match is a question
        the tool asks (see :meth:`take_question`), never the end of a reply.
        """
        self._pattern = compile_ready(ready)
        self._sequenced = "seq" in self._pattern.groupindex
        # A numbered prompt anywhere but at the very end of the output is a desync: a reply
        # that shows one ended early, or a tool that answered twice in one read.
        self._anywhere = compile_ready(ready, anchored=False) if self._sequenced else None
        self._responders = [(compile_ready(rx), rx, answer) for rx, answer in responders]
        self._question: tuple[str, str] | None = None
        self._settle = settle
        self._candidate: int | None = None
        self._candidate_prompt = ""
        self._window = window
        super().__init__(max_bytes=max_bytes, encoding=encoding)
        self._chunks: list[str] = []
        self._last_prompt = ""
        self.discard()

    def begin(self, *, seq: int | None = None, echo: str = "", repeats: int = 0) -> None:
        """A prompt's input is about to be written; call before writing it.

        *seq*: the number the ready prompt that ends its reply must show (group ``seq`` of
        the ready regex). *echo*: the input as a terminal echoes it back; the output's start
        is skipped while it matches (with the carriage returns a terminal adds), so that the input
        is never searched for the ready prompt. Output that differs from the echo ends the
        skipping: a tool that echoes nothing loses nothing. *repeats*: how many times the tool
        shows its last ready prompt again before the reply, one for each further line of the
        input (see :attr:`PromptFraming.prompt_per_line`).
        """
        self._expect = seq
        self._echo, self._echo_at, self._echo_seen = echo, 0, ""
        # The echo as a terminal writes it (ONLCR: "\n" as "\r\n"), to skip in one go.
        self._echo_tty = echo.replace("\n", "\r\n")
        self._repeats = repeats
        self._held = ""
        self._expecting = bool(echo or repeats)

    def feed(self, data: bytes) -> str | None:
        text = self._take(data)
        if not text:
            return None
        if self._expecting:
            text = self._skip_expected(text)
            if not text:
                return None
        self._candidate = None  # more output: the earlier prompt was inside the reply
        self._chunks.append(text)
        tail = self._tail + text
        start = 0
        if len(tail) > self._window:
            # Keep one character before the window, so that ^ matches at the window's edge
            # only where a line really starts there.
            tail = tail[-self._window - 1 :]
            start = 1
        for question, regex, answer in self._responders:
            if question.search(tail, start) is not None:
                self._tail = tail
                self._question = (regex, answer)
                return None
        match = self._pattern.search(tail, start)
        if self._anywhere is not None:
            self._check_seq(tail, start, match)
        if match is None:
            self._tail = tail
            return None
        prompt_len = len(tail) - match.start()
        whole = text if len(self._chunks) == 1 else "".join(self._chunks)
        if self._settle:
            self._chunks[:] = [whole]
            self._tail = tail
            self._candidate = len(whole) - prompt_len
            self._candidate_prompt = match.group()
            return None
        self._last_prompt = match.group()
        self.discard()
        return whole[: len(whole) - prompt_len]

    def _check_seq(self, tail: str, start: int, match: re.Match[str] | None) -> None:
        """A numbered prompt must end the output, and name the input in flight."""
        assert self._anywhere is not None
        inside = self._anywhere.search(tail, start, len(tail) if match is None else match.start())
        if inside is not None:
            self._desync(f"the ready prompt {inside.group()!r} came before the output ended")
        expect = self._expect
        if match is not None and expect is not None and match.group("seq") != str(expect):
            self._desync(f"the ready prompt {match.group()!r} does not end input {expect}")

    def _skip_expected(self, text: str) -> str:
        """*text* without what :meth:`begin` said the output starts with."""
        echo, at, i = self._echo, self._echo_at, 0
        if at == 0 and echo and text.startswith(self._echo_tty):
            # The usual case: the whole echo, as a terminal writes it, in one read.
            at, i = len(echo), len(self._echo_tty)
        while at < len(echo) and i < len(text):
            char = text[i]
            if char == echo[at]:
                at += 1
            elif char != "\r":
                # It echoes otherwise, or not at all: what looked like echo is output too.
                text, i, at = self._echo_seen + text, 0, len(echo)
                break
            i += 1
        self._echo_at = at
        if at < len(echo):
            self._echo_seen += text
            return ""
        self._echo_seen = ""
        text = text[i:]
        if self._repeats:
            text, self._held = self._held + text, ""
            prompt = self._last_prompt
            while self._repeats and text:
                if text.startswith(prompt):
                    text = text[len(prompt) :]
                    self._repeats -= 1
                elif prompt.startswith(text):
                    self._held = text  # the rest of the repeated prompt is still to come
                    return ""
                else:
                    self._desync(
                        f"expected the prompt {prompt!r} again for each line of the input, "
                        f"got {text[:80]!r}"
                    )
        self._expecting = bool(self._repeats)
        return text

    def _desync(self, why: str) -> NoReturn:
        partial = self.partial()
        self.discard()
        self._dead = True
        raise FrameDesync(why, partial)

    def take_question(self) -> tuple[str, str] | None:
        """The ``(regex, answer)`` of the question the output ended with at the last
        :meth:`feed`, once; ``None`` if it ended with none."""
        question, self._question = self._question, None
        return question

    @property
    def pending(self) -> bool:
        """Whether the output ends with the ready prompt, awaiting :meth:`commit`."""
        return self._candidate is not None

    def commit(self) -> str | None:
        """End the reply at the pending prompt (no more output came); ``None`` if none."""
        if self._candidate is None:
            return None
        whole = "".join(self._chunks)
        text = whole[: self._candidate]
        self._last_prompt = self._candidate_prompt
        self.discard()
        return text

    def discard(self) -> None:
        """Forget the output buffered so far (it belongs to no prompt), and what
        :meth:`begin` said about it."""
        self._chunks.clear()
        self._tail = ""
        self.buffered_bytes = 0
        self._candidate = None
        # What begin() said (set here, in place, at every reply: one call less each).
        self._expect = None
        self._expecting = False
        self._echo = ""
        self._echo_at = 0
        self._echo_seen = ""
        self._echo_tty = ""
        self._repeats = 0
        self._held = ""

    def tail(self) -> str:
        """The last ``window`` characters or so of the buffered output."""
        return self._tail

    def partial(self) -> str:
        """The output buffered since the last ready prompt (for error reports)."""
        return "".join(self._chunks)


class JsonlFramer(_CappedFramer):
    """Cuts a stream of JSON lines into replies, each ending with a terminal event.

    Lines that are not a JSON object are handed to *on_junk* (to be logged) and otherwise
    ignored. Until the framing's ``ready`` event is seen (if it has one), :meth:`feed` returns
    the start-up as a frame of its own.
    """

    __slots__ = (
        "_events",
        "_framing",
        "_line",
        "_on_junk",
        "_raw",
        "_starting",
    )

    def __init__(
        self,
        framing: JsonlFraming,
        *,
        max_bytes: int,
        encoding: str,
        on_junk: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(max_bytes=max_bytes, encoding=encoding)
        self._framing = framing
        self._on_junk = on_junk
        self._line: list[str] = []
        self._raw: list[str] = []
        self._events: list[Event] = []
        self._starting = framing.ready is not None

    def feed(self, data: bytes) -> list[Frame]:
        """The replies completed by *data* (usually none or one)."""
        text = self._take(data)
        return [] if text is None else self._lines(text)

    def finish(self) -> list[Frame]:
        """At end of output: frame a last line that had no newline."""
        if self._dead:
            return []
        return self._lines(self._decoder.decode(b"", final=True) + "\n")

    def _lines(self, text: str) -> list[Frame]:
        frames: list[Frame] = []
        while text:
            end = text.find("\n")
            if end < 0:
                self._line.append(text)
                break
            self._line.append(text[:end])
            text = text[end + 1 :]
            line = "".join(self._line)
            self._line.clear()
            frame = self._line_done(line)
            if frame is not None:
                frames.append(frame)
        return frames

    def _line_done(self, line: str) -> Frame | None:
        self._raw.append(line)
        stripped = line.strip()
        if not stripped:
            return None
        try:
            event = json.loads(stripped)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            if self._on_junk is not None:
                self._on_junk(line)
            return None
        self._events.append(event)
        framing = self._framing
        if self._starting:
            assert framing.ready is not None
            if not framing.ready(event):
                return None
            self._starting = False
            frame = Frame(text="\n".join(self._raw), events=tuple(self._events))
        elif not framing.terminal(event):
            return None
        else:
            events = tuple(self._events)
            frame = Frame(
                text=framing.answer(events),
                events=events,
                failure=framing.failure(events),
                raw="\n".join(self._raw),
            )
        self._events.clear()
        self._raw.clear()
        self.buffered_bytes = 0
        return frame

    def discard(self) -> None:
        """Forget the output buffered so far (it belongs to no prompt)."""
        self._events.clear()
        self._raw.clear()
        self._line.clear()
        self.buffered_bytes = 0

    def partial(self) -> str:
        """The output buffered since the last reply (for error reports)."""
        return "\n".join([*self._raw, "".join(self._line)]).strip("\n")

    def events(self) -> tuple[Event, ...]:
        """The events buffered since the last reply."""
        return tuple(self._events)


_CRLF = re.compile(r"\r+\n")


def clean_reply(raw: str) -> str:
    """Normalise a framed reply: ``\\r\\n`` to ``\\n``, and one trailing newline stripped.

    A terminal's echo of the prompt is not here to strip: the framer skipped it (see
    :meth:`Framer.begin`).
    """
    text = raw.replace("\r\n", "\n")  # the usual case, cheaper than the regex
    if "\r\n" in text:  # a run of carriage returns ("\r\r\n": ONLCR on "\r\n"), in one pass
        text = _CRLF.sub("\n", text)
    if text.endswith("\n"):
        text = text[:-1]
    return text
