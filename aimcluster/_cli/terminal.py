"""Text from outside made inert before it reaches a terminal.

Item names, file names, paths, tool names and tool output may hold anything: rich markup
(``[link=...]``), escape sequences (``ESC ]52`` writes the clipboard, ``ESC [2J`` clears the
screen), bidi overrides that reorder what is shown, a newline that forges a line of our own,
or a byte that is not UTF-8 (kept by ``os.fsdecode`` as a lone surrogate, which no terminal
stream can encode). :func:`shown` writes every character that would act on the terminal, or
that cannot be written, as a visible escape, the way Python's ``repr`` does.

Markup is the other half: the command line hands data to rich as :class:`rich.text.Text` or
prints it with markup off, and never splices it into a markup string. The journal and the JSON
report keep the real text: they are data, and JSON escapes what it must.
"""

from __future__ import annotations

import re

__all__ = ["shown"]

# C0 and C1 controls and DEL; the line and paragraph separators; the bidi embeddings,
# overrides, isolates and marks ("Trojan Source"); and lone surrogates.
_OTHERS = "\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_UNSAFE = re.compile(f"[\x00-\x1f{_OTHERS}]")
# The same for a block of several lines (a tool's output): newlines and tabs are its layout.
_UNSAFE_IN_BLOCK = re.compile(f"[\x00-\x08\x0b-\x1f{_OTHERS}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        # A byte that is not UTF-8, as os.fsdecode keeps it: show the byte itself.
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def shown(text: str, *, block: bool = False) -> str:
    """*text* as it may be printed on a terminal: controls, bidi overrides and undecodable
    bytes written as visible escapes (``\\x1b``, ``\\n``, ``\\u202e``, ``\\xff``).

    :param block: *text* is several lines (a tool's output): keep its newlines and tabs
        (a CRLF is one newline)
    """
    if block:
        return _UNSAFE_IN_BLOCK.sub(_escape, text.replace("\r\n", "\n"))
    return _UNSAFE.sub(_escape, text)
