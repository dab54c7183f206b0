"""Turning a tool's output stream into replies: find the ready prompt at the end of the output.

The framer is fed raw chunks in arrival order. It decodes them incrementally (a multi-byte
character split across reads is decoded once whole; invalid bytes become U+FFFD) and searches only
the last ``window`` characters for the ready regex, so a big reply costs O(size), not O(size^2),
however it is chunked.
"""

from __future__ import annotations

import codecs
import re

__all__ = ["FrameOverflow", "Framer", "clean_reply", "compile_ready"]

_CRLF = re.compile(r"\r+\n")


class FrameOverflow(Exception):
    """More than ``max_bytes`` of output arrived without a ready prompt."""

    def __init__(self, size: int, partial: str) -> None:
        super().__init__(size)
        self.size = size
        self.partial = partial


_INLINE_FLAGS = re.compile(r"^\(\?[aiLmsux]+\)")


def compile_ready(ready: str) -> re.Pattern[str]:
    r"""The ready regex as the framer uses it: anchored at the end of the output (``\Z``), with
    MULTILINE so that ``^`` means "at the start of a line".

    A leading inline flag group such as ``(?i)`` stays in front of the wrapper, where Python
    requires it to be.
    """
    flags = _INLINE_FLAGS.match(ready)
    prefix = flags.group() if flags else ""
    return re.compile(f"{prefix}(?:{ready[len(prefix) :]})\\Z", re.MULTILINE)


class Framer:
    """Accumulates output until it ends with the ready prompt.

    :meth:`feed` returns the raw text before the prompt when the output ends with it, else
    ``None``. Once it has raised :class:`FrameOverflow`, the framer discards everything, since
    the rest of the stream cannot be framed reliably.
    """

    __slots__ = (
        "_chunks",
        "_decoder",
        "_max_bytes",
        "_nbytes",
        "_overflowed",
        "_pattern",
        "_tail",
        "_window",
    )

    def __init__(self, ready: str, *, window: int, max_bytes: int, encoding: str) -> None:
        self._pattern = compile_ready(ready)
        self._window = window
        self._max_bytes = max_bytes
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        self._chunks: list[str] = []
        self._tail = ""
        self._nbytes = 0
        self._overflowed = False

    def feed(self, data: bytes) -> str | None:
        if self._overflowed:
            return None
        self._nbytes += len(data)
        if self._nbytes > self._max_bytes:
            self._overflowed = True
            size, partial = self._nbytes, self.partial()
            self.discard()
            raise FrameOverflow(size, partial)
        text = self._decoder.decode(data)
        if not text:
            return None
        self._chunks.append(text)
        tail = self._tail + text
        start = 0
        if len(tail) > self._window:
            # Keep one character before the window, so that ^ matches at the window's edge
            # only where a line really starts there.
            tail = tail[-self._window - 1 :]
            start = 1
        match = self._pattern.search(tail, start)
        if match is None:
            self._tail = tail
            return None
        prompt_len = len(tail) - match.start()
        whole = text if len(self._chunks) == 1 else "".join(self._chunks)
        self.discard()
        return whole[: len(whole) - prompt_len]

    def discard(self) -> None:
        """Forget the output buffered so far (it belongs to no prompt)."""
        self._chunks.clear()
        self._tail = ""
        self._nbytes = 0

    def partial(self) -> str:
        """The output buffered since the last ready prompt (for error reports)."""
        return "".join(self._chunks)

    @property
    def buffered_bytes(self) -> int:
        return self._nbytes


def clean_reply(raw: str, *, echo: str | None) -> str:
    """Normalise a framed reply: ``\\r\\n`` to ``\\n``, strip a terminal's echo and one trailing
    newline.

    *echo* is the prompt as the terminal would have echoed it back (PTY only).
    """
    text = _CRLF.sub("\n", raw) if "\r" in raw else raw
    if echo is not None:
        echoed = echo.replace("\r\n", "\n")
        if text.startswith(echoed):
            text = text[len(echoed) :]
            if text.startswith("\n"):
                text = text[1:]
    if text.endswith("\n"):
        text = text[:-1]
    return text
