"""``aimcluster demo``: a DOC_ID header rollout over a generated project, checked file by file.

The project mixes plain modules, executable scripts (whose ``#!`` line must stay first) and
files with Windows line endings (which must keep them), so the check means something. The
expected result of every file is computed here, independently of the mock agent that edits.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Sequence
from pathlib import Path

import attrs

__all__ = [
    "DEMO_STEPS",
    "Verification",
    "doc_id",
    "expected_content",
    "make_project",
    "verify_project",
]

#: The job script of the rollout: put the file in the agent's chat, ask, take it out again.
DEMO_STEPS = ("/add {item}", "Add a DOC_ID header to {item}", "/drop {item}")

_SHEBANG_EVERY = 9
_CRLF_EVERY = 25


def doc_id(relative_path: str) -> str:
    """The id a file's header must carry: the first 12 hex digits of SHA-256 of its path."""
    return hashlib.sha256(relative_path.encode()).hexdigest()[:12]


def _module_source(number: int) -> bytes:
    lines = [
        f'"""Module {number} of the aimcluster demo project."""',
        "",
        "",
        f"def function_{number}(value: int) -> int:",
        f'    """Multiply *value* by {number}."""',
        f"    return value * {number}",
    ]
    if number % _SHEBANG_EVERY == 0:
        lines = ["#!/usr/bin/env python3", *lines, "", "", "if __name__ == '__main__':"]
        lines.append(f"    print(function_{number}(2))")
    eol = "\r\n" if number % _CRLF_EVERY == 7 else "\n"
    return (eol.join(lines) + eol).encode()


def make_project(root: Path, files: int) -> dict[str, bytes]:
    """Write *files* modules ``pkg/module_NNN.py`` under *root*; return path -> content."""
    package = root / "pkg"
    package.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(files - 1)))
    originals = {}
    for number in range(files):
        relative = f"pkg/module_{number:0{width}d}.py"
        content = _module_source(number)
        (root / relative).write_bytes(content)
        originals[relative] = content
    return originals


def expected_content(relative_path: str, original: bytes) -> bytes:
    """*original* with its DOC_ID header: first line, or second after a ``#!`` line, with the
    file's own line ending."""
    eol = b"\r\n" if b"\r\n" in original else b"\n"
    header = f"# DOC_ID: {doc_id(relative_path)}".encode() + eol
    if original.startswith(b"#!"):
        first, rest = original.split(b"\n", 1)
        return first + b"\n" + header + rest
    return header + original


@attrs.frozen(kw_only=True)
class Verification:
    """How the files compare to what they should be."""

    #: Files with exactly the expected content.
    correct: tuple[str, ...]
    #: Files that differ, with the reason.
    wrong: tuple[tuple[str, str], ...]
    #: Files that appeared in the package but were not generated.
    unexpected: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.wrong and not self.unexpected


def verify_project(root: Path, originals: dict[str, bytes]) -> Verification:
    """Compare every generated file with its expected content."""
    correct: list[str] = []
    wrong: list[tuple[str, str]] = []
    for relative, original in originals.items():
        try:
            actual = (root / relative).read_bytes()
        except OSError as exc:
            wrong.append((relative, f"unreadable: {exc.strerror or exc}"))
            continue
        if actual == expected_content(relative, original):
            correct.append(relative)
        elif actual == original:
            wrong.append((relative, "unchanged: no DOC_ID header"))
        elif actual.count(b"# DOC_ID: ") > 1:
            wrong.append((relative, f"{actual.count(b'# DOC_ID: ')} DOC_ID headers"))
        else:
            wrong.append((relative, "content differs from the expected"))
    present = {path.relative_to(root).as_posix() for path in (root / "pkg").rglob("*")}
    unexpected = tuple(sorted(present - set(originals)))
    return Verification(correct=tuple(correct), wrong=tuple(wrong), unexpected=unexpected)


def unified_diff(relative_path: str, before: bytes, after: bytes, *, context: int = 2) -> str:
    """A ``git diff``-style diff of one file (line endings shown as text)."""
    old = before.decode().replace("\r\n", "\\r\n").splitlines(keepends=True)
    new = after.decode().replace("\r\n", "\\r\n").splitlines(keepends=True)
    lines = difflib.unified_diff(
        old, new, f"a/{relative_path}", f"b/{relative_path}", n=context, lineterm="\n"
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def examples(originals: dict[str, bytes]) -> Sequence[str]:
    """A few files worth showing: a plain module, a script with ``#!``, a CRLF file."""
    chosen: list[str] = []
    plain = next((p for p, c in originals.items() if not c.startswith(b"#!")), None)
    script = next((p for p, c in originals.items() if c.startswith(b"#!")), None)
    crlf = next((p for p, c in originals.items() if b"\r\n" in c), None)
    for path in (plain, script, crlf):
        if path is not None and path not in chosen:
            chosen.append(path)
    return chosen
