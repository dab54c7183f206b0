"""The results journal: one JSON line per finished job, durable as soon as the job ends.

Each record is written with a single ``write`` to a file opened with ``O_APPEND`` and then
``fsync``'d, so a crash (even SIGKILL or a power cut) can only leave the *last* line torn;
every earlier line is complete. A torn last line is ignored on reading and cut off before the
next append, so it never swallows a later record.

Resuming uses the journal: an item with an ``ok`` record is done; anything else runs again.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs

from ._exceptions import AimclusterError
from ._jobs import JobResult

__all__ = [
    "FORMAT_VERSION",
    "Journal",
    "JournalContents",
    "JournalInUseError",
    "read_journal",
    "record_of",
]

#: The ``v`` field of every record.
FORMAT_VERSION = 1


def _iso(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_of(result: JobResult, *, run: str) -> dict[str, Any]:
    """The journal record of *result*; *run* tells the runs that share a journal apart."""
    error = None
    if result.error_type is not None:
        error = {"type": result.error_type, "message": result.error}
    return {
        "v": FORMAT_VERSION,
        "run": run,
        "item": result.item,
        "status": result.status,
        "instance": result.instance,
        "attempts": result.attempts,
        "started_at": _iso(result.started_at),
        "ended_at": _iso(result.ended_at),
        "elapsed": round(result.elapsed, 6),
        "steps": list(result.job.steps),
        "replies": list(result.replies),
        "error": error,
    }


@attrs.frozen(kw_only=True)
class JournalContents:
    """What a journal holds."""

    #: The complete records, in file order.
    records: tuple[dict[str, Any], ...]
    #: The size in bytes of a torn last line (0 if the file ends with a whole line).
    torn_bytes: int
    #: 1-based numbers of complete lines that are not valid records (never written by us).
    bad_lines: tuple[int, ...]
    #: The length of the file's valid prefix: where the next record goes.
    valid_size: int

    @property
    def done(self) -> frozenset[str]:
        """The items that have an ``ok`` record."""
        return frozenset(
            record["item"]
            for record in self.records
            if record.get("status") == "ok" and isinstance(record.get("item"), str)
        )


def _parse_lines(data: bytes) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, line, complete) for each line of *data*."""
    number = 0
    start = 0
    while start < len(data):
        number += 1
        end = data.find(b"\n", start)
        if end == -1:
            yield number, data[start:], False
            return
        yield number, data[start:end], True
        start = end + 1


def _parse(data: bytes) -> JournalContents:
    records: list[dict[str, Any]] = []
    bad: list[int] = []
    torn = 0
    for number, line, complete in _parse_lines(data):
        if not complete:
            torn = len(line)
            break
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad.append(number)
            continue
        if isinstance(record, dict) and "item" in record and "status" in record:
            records.append(record)
        else:
            bad.append(number)
    return JournalContents(
        records=tuple(records),
        torn_bytes=torn,
        bad_lines=tuple(bad),
        valid_size=len(data) - torn,
    )


def read_journal(path: str | os.PathLike[str]) -> JournalContents:
    """Read the journal at *path* (a missing file is an empty journal), without locking it.

    :raises OSError: if the file exists but cannot be read
    """
    try:
        return _parse(Path(path).read_bytes())
    except FileNotFoundError:
        return _parse(b"")


def _read_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


class JournalInUseError(AimclusterError):
    """Another process holds the journal open: two runs must not share one."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"the journal {path} is in use by another aimcluster run")
        self.path = path


class Journal:
    """An open journal that records are appended to. Use as a (sync) context manager.

    Opening takes an exclusive lock (``flock``: the kernel drops it if the process dies), reads
    what the journal holds (:attr:`contents`), and cuts off a torn last line left by a crash,
    so that the first new record starts on a line of its own.
    """

    def __init__(self, path: str | os.PathLike[str], *, run: str) -> None:
        self.path = Path(path)
        self.run = run
        #: What the journal held when it was opened.
        self.contents = _parse(b"")
        self._fd: int | None = None
        # Created on first use: the journal is opened before the event loop starts.
        self._lock: anyio.Lock | None = None

    def __enter__(self) -> Journal:
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise JournalInUseError(self.path) from None
            self.contents = _parse(_read_all(fd))
            if self.contents.torn_bytes:
                os.ftruncate(fd, self.contents.valid_size)
                os.fsync(fd)
            if created:
                # Make the new directory entry itself durable, not only the file's content.
                directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(directory)
                finally:
                    os.close(directory)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _write(self, line: bytes) -> None:
        assert self._fd is not None, "the journal is not open"
        view = memoryview(line)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    async def append(self, result: JobResult) -> None:
        """Append *result*'s record and wait until it is on disk.

        The write runs in a worker thread (``fsync`` can take milliseconds) and is not
        interrupted by cancellation, so a record is never half-written by us.
        """
        line = _json_line(record_of(result, run=self.run))
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            await anyio.to_thread.run_sync(self._write, line)


def _json_line(record: dict[str, Any]) -> bytes:
    """*record* as one line of UTF-8 JSON, readable where it can be and exact always.

    Non-ASCII text is written as itself, except in a record that holds a lone surrogate (a
    file name that is not UTF-8, as ``os.fsdecode`` keeps it): UTF-8 cannot encode one, so that
    record is written with ``\\u`` escapes, which read back to the very same name.
    """
    try:
        return (json.dumps(record, ensure_ascii=False) + "\n").encode()
    except UnicodeEncodeError:
        return (json.dumps(record) + "\n").encode()
