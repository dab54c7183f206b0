"""The reply check: a step whose reply matches a failure pattern fails its job.

The patterns are the caller's ``fail_on`` if given, else each tool's own
``ToolSpec.failure_replies`` (such as aider's "Can't edit"): a reply is not success by itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from .._base.errors import ReplyFailedError

if TYPE_CHECKING:
    from .._base.spec import ToolSpec

__all__ = ["ReplyCheck"]


class ReplyCheck:
    """The failure patterns of a run of jobs, compiled once per tool."""

    def __init__(self, fail_on: Iterable[str] | None, specs: Mapping[str, ToolSpec]) -> None:
        if isinstance(fail_on, str):
            raise TypeError(f"fail_on must be a sequence of regexes, got the string {fail_on!r}")
        # Without fail_on, each pool's tool's own failure_replies (compiled on first use).
        self._patterns: dict[str | None, list[re.Pattern[str]]] = {}
        if fail_on is not None:
            self._patterns[None] = _compile(fail_on, "fail_on")
        for name, spec in specs.items():
            _compile(spec.failure_replies, f"the failure_replies of {name!r}")

    def __call__(self, tool: str, spec: ToolSpec, step: int, prompt: str, reply: str) -> None:
        """Raise :class:`ReplyFailedError` if *reply*, to step number *step* on *tool*,
        matches a failure pattern."""
        for pattern in self._of(tool, spec):
            match = pattern.search(reply)
            if match is not None:
                start = reply.rfind("\n", 0, match.start()) + 1
                end = reply.find("\n", match.end())
                line = reply[start : len(reply) if end == -1 else end]
                raise ReplyFailedError(
                    step=step, prompt=prompt, pattern=pattern.pattern, reply=reply, line=line
                )

    def _of(self, tool: str, spec: ToolSpec) -> list[re.Pattern[str]]:
        """What fails a reply: ``fail_on``, else the tool's own ``failure_replies``."""
        if None in self._patterns:
            return self._patterns[None]
        if tool not in self._patterns:
            self._patterns[tool] = _compile(spec.failure_replies, "failure_replies")
        return self._patterns[tool]


def _compile(patterns: Iterable[str], what: str) -> list[re.Pattern[str]]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ValueError(f"{what}: not a valid regex: {pattern!r} ({exc})") from None
    return compiled
