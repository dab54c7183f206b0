"""The results journal: one JSON line per finished job, durable as soon as the job ends.

Each record is written with a single ``write`` to a file opened with ``O_APPEND`` and then
``fsync``'d, so a crash (even SIGKILL or a power cut) can only leave the *last* line torn;
every earlier line is complete. A torn last line is ignored on reading and cut off before the
next append, so it never swallows a later record.

Each record is also the job's transcript: every prompt, its reply and how long it took, the
instance and its working directory, and for a failure the error and what the tool printed last.
A reply (or output) longer than ``MAX_TEXT`` characters keeps its first and last halves around
a ``[... N characters not kept in the journal ...]`` line.

Resuming uses the journal and each record's ``job``: a fingerprint of what the job is (its
rendered steps and verify command, the tool's command line and the options that change results,
see :func:`fingerprint`). An item is done when the last record of the same job for it is ``ok``;
an item done by another job (other steps, another tool) runs again. A record from before
fingerprints (format 1, no ``job``) matches no job: its item runs again, once.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import attrs

from aimcluster import AimclusterError, Job, JobResult

__all__ = [
    "FORMAT_VERSION",
    "MAX_TEXT",
    "Journal",
    "JournalContents",
    "JournalInUseError",
    "JournalWriteError",
    "fingerprint",
    "read_journal",
    "record_of",
]

#: The ``v`` field of every record. 2: records carry ``job`` and the transcript fields.
FORMAT_VERSION = 2
#: The most characters of one reply (or of the tool's last output) a record keeps.
MAX_TEXT = 64 * 1024


def fingerprint(job: Job, setup: Mapping[str, Any]) -> str:
    """What *job* is, as 16 hex digits: its rendered steps and verify command, and *setup*
    (the tool's command line and the options that change what a job does, as JSON values)."""
    identity = {"steps": list(job.steps), "verify": job.verify, "setup": setup}
    data = json.dumps(identity, sort_keys=True, ensure_ascii=True, default=list)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _capped(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_TEXT:
        return text
    half = MAX_TEXT // 2
    left_out = len(text) - 2 * half
    return f"{text[:half]}\n[... {left_out} characters not kept in the journal ...]\n{text[-half:]}"


def _iso(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_of(result: JobResult, *, run: str, job: str | None = None) -> dict[str, Any]:
    """The journal record of *result*; *run* tells the runs that share a journal apart, *job*
    is the job's :func:`fingerprint`."""
    error = None
    if result.error_type is not None:
        error = {"type": result.error_type, "message": result.error}
    verify = None
    if result.verify is not None:
        verify = {
            "argv": list(result.verify.argv),
            "exit_code": result.verify.exit_code,
            "elapsed": round(result.verify.elapsed, 6),
            # Kept when it failed: the output is why.
            "output": None if result.verify.ok else result.verify.output,
        }
    record = {
        "v": FORMAT_VERSION,
        "run": run,
        "item": result.item,
        "job": job,
        "status": result.status,
        "instance": result.instance,
        # The pool that ran the last attempt, and the pools the job moved away from (records
        # written before several tools ran in one cluster have neither).
        "tool": result.tool,
        "failovers": list(result.failovers),
        "cwd": result.cwd,
        "attempts": result.attempts,
        "started_at": _iso(result.started_at),
        "ended_at": _iso(result.ended_at),
        "elapsed": round(result.elapsed, 6),
        "steps": list(result.job.steps),
        "replies": [_capped(reply) for reply in result.replies],
        "timings": [round(timing, 6) for timing in result.timings],
        "error": error,
        "output": None if result.ok else _capped(result.output),
        "verify": verify,
        # Tokens and cost the tool reported for the job's replies, every attempt included.
        "usage": None if result.usage is None else result.usage.as_dict(),
    }
    if result.commit is not None:
        # --isolation worktree: the commit on the instance's branch, or none for no change.
        record["commit"] = result.commit or None
        record["changed"] = bool(result.commit)
    return record


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
        """The items that have an ``ok`` record, of whatever job."""
        return frozenset(
            record["item"]
            for record in self.records
            if record.get("status") == "ok" and isinstance(record.get("item"), str)
        )

    @property
    def done_jobs(self) -> frozenset[tuple[str, str]]:
        """``(item, job)`` for each job (a :func:`fingerprint`) whose last record for the item
        is ``ok``: what a resume skips. Records without a ``job`` count for no job."""
        status: dict[tuple[str, str], Any] = {}
        for record in self.records:
            item, job = record.get("item"), record.get("job")
            if isinstance(item, str) and isinstance(job, str):
                status[item, job] = record.get("status")
        return frozenset(key for key, value in status.items() if value == "ok")

    def last(self, item: str) -> dict[str, Any] | None:
        """The last record for *item*, if any."""
        found: dict[str, Any] | None = None
        for record in self.records:
            if record.get("item") == item:
                found = record
        return found

    def latest(self) -> list[dict[str, Any]]:
        """The last record of each item, in the order the items first appear."""
        last: dict[str, dict[str, Any]] = {}
        for record in self.records:
            item = record.get("item")
            if isinstance(item, str):
                last.pop(item, None)
                last[item] = record
        order: dict[Any, int] = {}
        for record in self.records:
            order.setdefault(record.get("item"), len(order))
        return sorted(last.values(), key=lambda record: order[record.get("item")])


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


#: The types of the fields readers take apart (``None`` is also allowed): a line edited by
#: hand into another shape is a bad line, not a crash of whatever reads it later.
_FIELD_TYPES: dict[str, type] = {
    "job": str,
    "tool": str,
    "failovers": list,
    "error": dict,
    "verify": dict,
    "usage": dict,
    "steps": list,
    "replies": list,
    "timings": list,
}


def _well_formed(record: object) -> bool:
    if not isinstance(record, dict):
        return False
    if not isinstance(record.get("item"), str) or not isinstance(record.get("status"), str):
        return False
    for name, kind in _FIELD_TYPES.items():
        value = record.get(name)
        if value is not None and not isinstance(value, kind):
            return False
    timings = record.get("timings") or []
    if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in timings):
        return False
    if not all(isinstance(pool, str) for pool in record.get("failovers") or []):
        return False
    verify = record.get("verify")
    return verify is None or isinstance(verify.get("argv"), list | None)


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
        if _well_formed(record):
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


class JournalWriteError(AimclusterError):
    """A record could not be written to the journal (a full disk, a file size limit)."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(f"cannot write the journal {path}: {error.strerror or error}")
        self.path = path
        self.errno = error.errno


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

    async def append(self, result: JobResult, *, job: str | None = None) -> None:
        """Append *result*'s record (*job*: its :func:`fingerprint`) and wait until it is on
        disk.

        The write runs in a worker thread (``fsync`` can take milliseconds) and is not
        interrupted by cancellation, so a record is never half-written by us.

        :raises JournalWriteError: naming the journal, if the write fails
        """
        line = _json_line(record_of(result, run=self.run, job=job))
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            try:
                await anyio.to_thread.run_sync(self._write, line)
            except OSError as exc:
                # A partial line may be on disk: the next open cuts it off as torn.
                raise JournalWriteError(self.path, exc) from exc


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
