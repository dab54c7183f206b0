"""What the stand-ins share: the test knobs, event output that can crash on cue, and stdin rules.

Knobs (environment variables), read once at start-up:

``STANDIN_DELAY``
    Seconds to wait before each reply (after the input is read, before the answer's first
    event). Default 0.
``STANDIN_CRASH_AFTER``
    Die abruptly right after writing this many events (JSON lines, or lines of text for the text
    formats), counted from process start: a message on stderr and exit status
    ``STANDIN_CRASH_EXIT`` (default 1). Output already written is flushed; nothing else is.
``STANDIN_ERROR``
    Fail the turn the way the tool reports a failure. The value is the error message (``1``
    means a default message); the value ``max_turns`` selects the tool's turn-limit failure.
``STANDIN_RATE_LIMIT``
    Answer this many turns with the tool's rate-limit error before answering normally.
``STANDIN_STATE``
    A JSON file holding counters across processes (needed for ``STANDIN_RATE_LIMIT`` with the
    one-shot tools, whose every process is a new turn). Without it the count is per process.

Every reply is deterministic: ``echo: <prompt>``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import sys
import time
from collections.abc import Iterator
from typing import Any

DEFAULT_ERROR = "simulated failure (STANDIN_ERROR)"


def reply_to(prompt: str) -> str:
    return f"echo: {prompt}"


class Knobs:
    def __init__(self, tool: str) -> None:
        self.tool = tool
        self.delay = float(os.environ.get("STANDIN_DELAY") or 0)
        crash = os.environ.get("STANDIN_CRASH_AFTER")
        self.crash_after = int(crash) if crash else None
        self.crash_exit = int(os.environ.get("STANDIN_CRASH_EXIT") or 1)
        error = os.environ.get("STANDIN_ERROR") or None
        self.error = DEFAULT_ERROR if error == "1" else error
        self.rate_limit = int(os.environ.get("STANDIN_RATE_LIMIT") or 0)
        self.state_path = os.environ.get("STANDIN_STATE") or None
        self._local: dict[str, Any] = {}

    def wait(self) -> None:
        if self.delay > 0:
            time.sleep(self.delay)

    def rate_limited(self) -> bool:
        """Whether this turn gets the rate-limit error (and count it if so)."""
        if self.rate_limit <= 0:
            return False
        with self.state() as state:
            key = f"{self.tool}.rate_limited"
            done = int(state.get(key, 0))
            if done >= self.rate_limit:
                return False
            state[key] = done + 1
            return True

    @contextlib.contextmanager
    def state(self) -> Iterator[dict[str, Any]]:
        """The shared state, locked for the block and written back after it."""
        if self.state_path is None:
            yield self._local
            return
        with open(self.state_path, "a+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            text = handle.read()
            state = json.loads(text) if text.strip() else {}
            yield state
            handle.seek(0)
            handle.truncate()
            json.dump(state, handle)
            handle.flush()


class Output:
    """Writes events to stdout one line at a time, flushed, and crashes on cue."""

    def __init__(self, knobs: Knobs) -> None:
        self.knobs = knobs
        self.count = 0
        self._crash_if_due()  # STANDIN_CRASH_AFTER=0: die before the first event

    def json(self, event: dict[str, Any]) -> None:
        self.line(json.dumps(event, separators=(",", ":"), ensure_ascii=False))

    def line(self, text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        self.count += 1
        self._crash_if_due()

    def _crash_if_due(self) -> None:
        if self.knobs.crash_after is not None and self.count >= self.knobs.crash_after:
            sys.stderr.write(
                f"{self.knobs.tool}: simulated crash after {self.count} events "
                "(STANDIN_CRASH_AFTER)\n"
            )
            sys.stderr.flush()
            os._exit(self.knobs.crash_exit)


def warn(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def stdin_is_tty() -> bool:
    try:
        return os.isatty(0)
    except OSError:
        return False


def read_stdin_to_eof() -> str:
    """All of stdin; blocks until EOF, as a tool that reads its input to the end does."""
    try:
        data = sys.stdin.buffer.read()
    except (OSError, ValueError):
        return ""
    return data.decode("utf-8", errors="replace")


def read_stdin_if_data_within(seconds: float) -> str | None:
    """Stdin to EOF if its first byte (or EOF) arrives within *seconds*; else ``None``."""
    try:
        ready, _, _ = select.select([0], [], [], seconds)
    except (OSError, ValueError):
        return ""
    if not ready:
        return None
    return read_stdin_to_eof()


def new_id() -> str:
    import uuid

    return str(uuid.uuid4())


def iso_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def usage_for(prompt: str, reply: str) -> tuple[int, int]:
    """Deterministic token counts: four characters a token, at least one."""
    return max(1, len(prompt) // 4), max(1, len(reply) // 4)
