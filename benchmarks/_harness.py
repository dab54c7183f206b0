"""What every benchmark script shares.

* the child (``child.py``) and how to start it, raw through anyio (the baseline)
  or as an aimcluster ``ToolSpec`` (ours);
* the alternating runner: every contender stays open for the whole run and they
  take turns batch by batch, so drift on a noisy machine (CPU frequency, other
  tenants) hits all of them alike instead of whichever ran last;
* statistics, result tables (rich on a terminal, Markdown otherwise), JSON;
* the command line: ``--backend``, ``--json``, ``--baseline-only``, ``--quick``
  and the per-benchmark sizes.

Benchmarks never assert a time: they measure and report ratios.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import errno
import gc
import json
import math
import os
import platform
import resource
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from subprocess import DEVNULL, PIPE
from typing import Any, TypeVar

import anyio
from anyio.abc import Process

T = TypeVar("T")

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
CHILD = BENCHMARKS / "child.py"
PROMPT = b"> "
READY = r"> "

RAW = "raw anyio"
OURS = "aimcluster"

# Benchmark the working tree's package even where it is not installed in the venv.
for _source in (ROOT / "src", ROOT):
    if (_source / "aimcluster").is_dir() and str(_source) not in sys.path:
        sys.path.insert(1, str(_source))

# How long a child gets to leave on EOF before it is killed.
CLOSE_GRACE = 5.0


def child_argv(*options: str) -> list[str]:
    # -S skips site-packages processing: the child needs only the standard
    # library, and bench_launch starts it hundreds of times.
    return [sys.executable, "-u", "-S", str(CHILD), *options]


# --------------------------------------------------------------------------
# Statistics


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100; 50 is the median), interpolating like numpy's default."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --------------------------------------------------------------------------
# The raw baseline: a child driven straight through anyio


class RawChild:
    """One child process, written to and read from with nothing in between."""

    def __init__(
        self,
        process: Process,
        send: Callable[[bytes], Awaitable[None]],
        receive: Callable[[], Awaitable[bytes]],
        close: Callable[[], Awaitable[None]],
        pty_fd: int | None = None,
        read_fd: int | None = None,
    ) -> None:
        self.process = process
        #: The parent's end of the child's PTY; None for pipes.
        self.pty_fd = pty_fd
        #: The descriptor its output is read from, where it is one of ours (a PTY's master, or
        #: pipes opened with ``fd_pipes``); None behind anyio's streams.
        self.read_fd = read_fd
        self._send = send
        self._receive = receive
        self._close = close

    async def read_prompt(self) -> bytes:
        """Everything up to and including the next prompt."""
        buffer = bytearray()
        while not buffer.endswith(PROMPT):
            buffer += await self._receive()
        return bytes(buffer)

    async def request(self, line: str) -> str:
        await self.write_line(line)
        return (await self.read_prompt()).decode()

    async def send(self, data: bytes) -> None:
        await self._send(data)

    async def receive(self) -> bytes:
        """The next chunk of output, as one read returned it."""
        return await self._receive()

    async def write_line(self, line: str) -> None:
        """The writing half of :meth:`request`, for callers whose replies another task reads."""
        await self._send(line.encode() + b"\n")

    async def aclose(self) -> None:
        # EOF on its stdin makes the child leave on its own; SIGKILL to its
        # process group only if it has not within the grace period.
        with anyio.move_on_after(CLOSE_GRACE, shield=True):
            await self._close()
            await self.process.wait()
        if self.process.returncode is None:
            _kill_group(self.process.pid)
            with anyio.move_on_after(CLOSE_GRACE, shield=True):
                await self.process.wait()


def _kill_group(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


async def _open_pipe_child(argv: list[str]) -> RawChild:
    process = await anyio.open_process(
        argv, stdin=PIPE, stdout=PIPE, stderr=DEVNULL, start_new_session=True
    )
    stdin, stdout = process.stdin, process.stdout
    if stdin is None or stdout is None:
        raise RuntimeError("open_process(stdin=PIPE, stdout=PIPE) returned no pipes")

    async def close() -> None:
        await stdin.aclose()
        await stdout.aclose()

    return RawChild(process, stdin.send, stdout.receive, close)


class _FdEnds:
    """The parent's ends of a child's input and output, file descriptors of our own (a PTY's
    master is both), read with wait_readable + a non-blocking os.read."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        for fd in {read_fd, write_fd}:
            os.set_blocking(fd, False)
        self.fd, self.write_fd = read_fd, write_fd

    async def receive(self) -> bytes:
        while True:
            await anyio.wait_readable(self.fd)
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            except OSError as exc:
                # Linux reports the far side of a PTY having closed as EIO.
                if exc.errno == errno.EIO:
                    raise anyio.EndOfStream from exc
                raise
            if not data:
                raise anyio.EndOfStream
            return data

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.write_fd, view) :]
            except BlockingIOError:
                await anyio.wait_writable(self.write_fd)

    async def aclose(self) -> None:
        if self.fd >= 0:
            # Closing the master hangs up the child's terminal (closing its input pipe, EOF):
            # its read ends.
            for fd in {self.fd, self.write_fd}:
                anyio.notify_closing(fd)
                os.close(fd)
            self.fd = self.write_fd = -1


async def _open_fd_child(
    argv: list[str],
    *,
    ours: tuple[int, int],
    theirs: tuple[int, int, int],
    pty_fd: int | None = None,
) -> RawChild:
    """Start *argv* on *theirs* (its stdin, stdout, stderr), with *ours* (read, write) as the
    parent's ends, plain descriptors read with wait_readable."""
    try:
        process = await anyio.open_process(
            argv, stdin=theirs[0], stdout=theirs[1], stderr=theirs[2], start_new_session=True
        )
    except BaseException:
        for fd in set(ours):
            os.close(fd)
        raise
    finally:
        # The child has its own copies; ours would keep its input from ending (a pipe's EOF,
        # a PTY's hang-up).
        for fd in set(theirs) - {DEVNULL}:
            os.close(fd)
    ends = _FdEnds(*ours)
    return RawChild(process, ends.send, ends.receive, ends.aclose, pty_fd=pty_fd, read_fd=ours[0])


async def _open_pty_child(argv: list[str]) -> RawChild:
    master, slave = os.openpty()
    return await _open_fd_child(
        argv, ours=(master, master), theirs=(slave, slave, slave), pty_fd=master
    )


async def _open_fd_pipe_child(argv: list[str]) -> RawChild:
    """Pipes whose parent ends are plain descriptors (no stream or transport on them), for a
    contender that reads them its own way (``RawChild.read_fd``)."""
    child_in, ours_in = os.pipe()
    ours_out, child_out = os.pipe()
    return await _open_fd_child(
        argv, ours=(ours_out, ours_in), theirs=(child_in, child_out, DEVNULL)
    )


async def spawn_raw(argv: list[str], *, pty: bool = False, fd_pipes: bool = False) -> RawChild:
    """Start one child and return once it shows its first prompt. *fd_pipes*: pipes with no
    anyio stream on our ends (see :func:`_open_fd_pipe_child`)."""
    if pty:
        opening = _open_pty_child(argv)
    else:
        opening = _open_fd_pipe_child(argv) if fd_pipes else _open_pipe_child(argv)
    child = await opening
    try:
        await child.read_prompt()
    except BaseException:
        await child.aclose()
        raise
    return child


async def close_all(children: Sequence[RawChild]) -> None:
    async with anyio.create_task_group() as tg:
        for child in children:
            tg.start_soon(child.aclose)


@asynccontextmanager
async def raw_fleet(
    argv: list[str], count: int, *, pty: bool = False, fd_pipes: bool = False
) -> AsyncIterator[list[RawChild]]:
    """``count`` children started concurrently, all past their first prompt."""
    children: list[RawChild] = []

    async def start_one() -> None:
        children.append(await spawn_raw(argv, pty=pty, fd_pipes=fd_pipes))

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(start_one)
        yield children
    finally:
        await close_all(children)


# --------------------------------------------------------------------------
# Ours: the same child behind aimcluster (imported late: --baseline-only must
# work before the package exists)


def aimcluster_module() -> Any:
    import aimcluster

    if not hasattr(aimcluster, "launch_cluster"):
        # A tree still being written imports as a namespace package without the API.
        raise ImportError("aimcluster has no launch_cluster yet")
    return aimcluster


def child_spec(*options: str, pty: bool = False) -> Any:
    return aimcluster_module().ToolSpec(
        name="echo", argv=child_argv(*options), ready=READY, pty=pty
    )


def launch_ours(spec: Any, count: int) -> AbstractAsyncContextManager[Any]:
    return aimcluster_module().launch_cluster(spec, count=count, routing="least_busy")  # type: ignore[no-any-return]


# --------------------------------------------------------------------------
# The alternating runner

Samples = dict[str, list[float]]
"""Metric name -> measurements, e.g. ``{"latency": [...ns...]}``."""

Step = Callable[[], Awaitable[Samples]]
"""One batch of work for one contender, returning what it measured."""

Contender = Callable[[], AbstractAsyncContextManager[Step]]
"""Opens a contender (starts its children) and yields its step; closing stops them."""


async def alternate(
    contenders: Mapping[str, Contender], *, rounds: int, warmup: int = 1
) -> dict[str, Samples]:
    """Run the contenders' steps in turn, ``warmup`` discarded rounds then ``rounds`` kept.

    All contenders are open at once, and the order flips every round so
    neither side always runs right after the other's garbage.
    """
    results: dict[str, Samples] = {name: {} for name in contenders}
    async with AsyncExitStack() as stack:
        steps = {
            name: await stack.enter_async_context(open_()) for name, open_ in contenders.items()
        }
        names = list(steps)
        for round_ in range(warmup + rounds):
            for name in names if round_ % 2 == 0 else names[::-1]:
                gc.collect()
                samples = await steps[name]()
                if round_ >= warmup:
                    for metric, values in samples.items():
                        results[name].setdefault(metric, []).extend(values)
    return results


def pair(
    args: argparse.Namespace, raw: Contender, ours: Callable[[], Contender]
) -> dict[str, Contender]:
    """The raw baseline, and ours unless --baseline-only (built lazily: it imports aimcluster)."""
    return {RAW: raw} if args.baseline_only else {RAW: raw, OURS: ours()}


async def time_calls(call: Callable[[], Awaitable[object]], count: int) -> list[float]:
    """Nanoseconds each of ``count`` sequential calls took."""
    samples: list[float] = []
    for _ in range(count):
        start = time.perf_counter_ns()
        await call()
        samples.append(time.perf_counter_ns() - start)
    return samples


# --------------------------------------------------------------------------
# One prompt in, one reply out: the same shape for the raw child and a
# one-instance cluster, so latency benchmarks time exactly the same call.

Request = Callable[[str], Awaitable[str]]


@asynccontextmanager
async def raw_requester(options: Sequence[str], *, pty: bool) -> AsyncIterator[Request]:
    async with raw_fleet(child_argv(*options), 1, pty=pty) as (child,):
        yield child.request


@asynccontextmanager
async def ours_requester(options: Sequence[str], *, pty: bool) -> AsyncIterator[Request]:
    async with launch_ours(child_spec(*options, pty=pty), 1) as cluster:

        async def request(line: str) -> str:
            return str((await cluster.send(line)).text)

        yield request


Batch = Callable[[Request], Awaitable[Samples]]
"""A batch of requests through one contender, measured."""


def request_contender(
    requester: Callable[[], AbstractAsyncContextManager[Request]], batch: Batch
) -> Contender:
    @asynccontextmanager
    async def open_() -> AsyncIterator[Step]:
        async with requester() as request:
            yield partial(batch, request)

    return open_


def request_pair(
    args: argparse.Namespace, options: Sequence[str], *, pty: bool, batch: Batch
) -> dict[str, Contender]:
    """The raw child and a one-instance cluster of it, both measured by ``batch``."""
    return pair(
        args,
        request_contender(partial(raw_requester, options, pty=pty), batch),
        partial(request_contender, partial(ours_requester, options, pty=pty), batch),
    )


# --------------------------------------------------------------------------
# Reports


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[Samples], float]
    fmt: str = "{:,.1f}"


def stat(metric: str, q: float = 50, scale: float = 1.0) -> Callable[[Samples], float]:
    """A column value: the q-th percentile of one metric, times ``scale``."""
    return lambda samples: percentile(samples[metric], q) * scale


def count_of(metric: str) -> Callable[[Samples], float]:
    return lambda samples: len(samples[metric])


@dataclass
class Row:
    case: str
    contender: str
    values: dict[str, float | None]


@dataclass
class Report:
    """One table: a row per (case, contender), each compared with its case's baseline."""

    title: str
    columns: list[Column]
    ratio: Column
    """The figure compared: each contender's, divided by the baseline's of the same case."""
    more_ratios: list[Column] = field(default_factory=list)
    """Further figures compared the same way, in columns after ``ratio``."""
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    baseline: str = RAW
    more_baselines: dict[str, list[Column]] = field(default_factory=dict)
    """Figures compared with other contenders of the same case, by contender, in columns
    after the ratios to ``baseline``. Blank in the rows of every baseline: a baseline's
    own ratios to ``baseline`` already compare it."""

    @property
    def ratios(self) -> list[Column]:
        return [self.ratio, *self.more_ratios]

    @property
    def compared(self) -> list[Column]:
        """Every ratio column: to ``baseline``, then to each of ``more_baselines``."""
        return [*self.ratios, *(c for columns in self.more_baselines.values() for c in columns)]

    def add(self, case: str, results: Mapping[str, Samples]) -> None:
        baseline = results.get(self.baseline)
        bases = {
            ratio.header: math.nan if baseline is None else ratio.value(baseline)
            for ratio in self.ratios
        }
        other_bases = {
            other: {
                column.header: math.nan if other not in results else column.value(results[other])
                for column in columns
            }
            for other, columns in self.more_baselines.items()
        }
        for name, samples in results.items():
            values: dict[str, float | None] = {
                column.header: column.value(samples) for column in self.columns
            }
            for ratio in self.ratios:
                values[ratio.header] = (
                    None if name == self.baseline else ratio.value(samples) / bases[ratio.header]
                )
            for other, columns in self.more_baselines.items():
                for column in columns:
                    values[column.header] = (
                        None
                        if name == self.baseline or name in self.more_baselines
                        else column.value(samples) / other_bases[other][column.header]
                    )
            self.rows.append(Row(case, name, values))

    @property
    def headers(self) -> list[str]:
        return ["case", "contender", *(c.header for c in [*self.columns, *self.compared])]

    def cells(self, row: Row) -> list[str]:
        cells = [row.case, row.contender]
        for column in [*self.columns, *self.compared]:
            value = row.values[column.header]
            cells.append("-" if value is None else column.fmt.format(value))
        return cells

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "title": self.title,
            "baseline": self.baseline,
            "ratio": self.ratio.header,
            "more_ratios": [ratio.header for ratio in self.more_ratios],
        }
        if self.more_baselines:  # only where used: other benchmarks' documents stay as they were
            document["more_baselines"] = {
                other: [column.header for column in columns]
                for other, columns in self.more_baselines.items()
            }
        document["rows"] = [
            {"case": row.case, "contender": row.contender, "values": row.values}
            for row in self.rows
        ]
        document["notes"] = self.notes
        return document


def print_report(report: Report) -> None:
    if sys.stdout.isatty():
        _print_rich(report)
    else:
        _print_markdown(report)


def _print_rich(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=report.title, title_justify="left")
    for index, header in enumerate(report.headers):
        table.add_column(header, justify="left" if index < 2 else "right")
    for row in report.rows:
        table.add_row(*report.cells(row))
    console = Console()
    console.print(table)
    for note in report.notes:
        console.print(f"  {note}", style="dim")
    console.print()


def _print_markdown(report: Report) -> None:
    # Markdown, so a run's output pastes straight into README.md.
    lines = [report.headers, *(report.cells(row) for row in report.rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(report.headers))]

    def render(cells: list[str]) -> str:
        # The case and contender columns read left-aligned, numbers right-aligned.
        padded = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w + 1) + ("-" if i < 2 else ":") for i, w in enumerate(widths)]
    print(f"### {report.title}\n")
    print(render(lines[0]))
    print("|" + "|".join(rule) + "|")
    for line in lines[1:]:
        print(render(line))
    for note in report.notes:
        print(f"\n{note}")
    print(flush=True)


def machine_info() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in ("anyio", "trio", "uvloop", "pexpect", "aimcluster"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": versions,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor()


def write_json(path: Path, reports: Sequence[Report]) -> None:
    document = {"machine": machine_info(), "reports": [report.to_json() for report in reports]}
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {path}")


# --------------------------------------------------------------------------
# Process-wide resources


LOG_LEVELS = ("debug", "info", "warning", "error", "default")


def configure_logs(level: str) -> None:
    """Drop aimcluster's structlog events below ``level``, as an application would.

    Left unconfigured, structlog prints every event, debug included, to stdout: two
    lines per prompt, which floods the tables and times the terminal as much as the
    library. ``default`` leaves structlog's configuration alone.
    """
    if level == "default":
        return
    import logging

    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper()))
    )


def prepare_process(log_level: str) -> None:
    raise_nofile_limit()
    configure_logs(log_level)


def raise_nofile_limit() -> None:
    # Hundreds of children need thousands of pipe and PTY descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so an RSS delta sees only new memory."""
    gc.collect()
    # Without glibc there is no malloc_trim: the delta is only a little less precise.
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def live_children() -> list[int]:
    """Our direct child processes, zombies included (an unreaped child is a leak too)."""
    pids: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        with suppress(OSError):  # the thread ended while we looked
            pids += [int(pid) for pid in (task / "children").read_text().split()]
    return pids


def reap_leftovers(where: str, *, keep: Collection[int] = ()) -> None:
    """Kill, and say so, any child still alive after a benchmark closed everything it opened
    (but those in *keep*, which were there before it started)."""
    pids = [pid for pid in live_children() if pid not in keep]
    if pids:
        print(
            f"warning: {len(pids)} child(ren) left after {where}; killing {pids}", file=sys.stderr
        )
        for pid in pids:
            _kill_group(pid)


# --------------------------------------------------------------------------
# Backends and the command line

BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}


def selected_backends(args: argparse.Namespace) -> list[str]:
    return list(BACKENDS) if args.backend == "all" else [args.backend]


def run_on(
    backend: str, func: Callable[..., Awaitable[T]], *args: Any, keep: Collection[int] = ()
) -> T:
    """``anyio.run`` on *backend*, then :func:`reap_leftovers` (sparing the children *keep*)."""
    name, options = BACKENDS[backend]
    try:
        return anyio.run(func, *args, backend=name, backend_options=options)
    finally:
        reap_leftovers(f"the {backend} run", keep=keep)


Cases = list[tuple[str, dict[str, Samples]]]
"""(case, contender -> samples) for each case a benchmark measured on one backend."""

Measure = Callable[[argparse.Namespace, str], Awaitable[Cases]]


def run_backends(report: Report, args: argparse.Namespace, measure: Measure) -> list[Report]:
    """Run ``measure(args, backend)`` on each selected backend and fill the report."""
    for backend in selected_backends(args):
        for case, results in run_on(backend, measure, args, backend):
            report.add(case, results)
    return [report]


def add_log_level_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="warning",
        help="structlog events shown (default: warning; 'default': leave structlog unconfigured)",
    )


@dataclass(frozen=True)
class Option:
    """A size option whose default depends on --quick."""

    flag: str
    normal: Any
    quick: Any
    help: str


@dataclass(frozen=True)
class Benchmark:
    description: str
    options: list[Option]
    collect: Callable[[argparse.Namespace], list[Report]]
    """Runs the benchmark on the selected backends and returns its tables."""
    default_backend: str = "all"

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(description=self.description)
        parser.add_argument("--backend", choices=[*BACKENDS, "all"], default=self.default_backend)
        parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
        parser.add_argument("--baseline-only", action="store_true", help="skip the aimcluster half")
        parser.add_argument("--quick", action="store_true", help="smaller sizes")
        add_log_level_option(parser)
        for option in self.options:
            example = option.normal[0] if isinstance(option.normal, list) else option.normal
            parser.add_argument(
                option.flag,
                type=type(example),
                nargs="+" if isinstance(option.normal, list) else None,
                default=None,
                help=f"{option.help} (default {option.normal}, --quick {option.quick})",
            )
        return parser

    def parse(self, argv: Sequence[str] | None = None) -> argparse.Namespace:
        parser = self.parser()
        args = parser.parse_args(argv)
        for option in self.options:
            dest = option.flag.lstrip("-").replace("-", "_")
            if getattr(args, dest) is None:
                setattr(args, dest, option.quick if args.quick else option.normal)
        if not args.baseline_only:
            try:
                aimcluster_module()
            except ImportError as exc:
                parser.error(f"cannot import aimcluster ({exc}); use --baseline-only")
        return args

    def main(self, argv: Sequence[str] | None = None) -> None:
        args = self.parse(argv)
        prepare_process(args.log_level)
        reports = self.collect(args)
        for report in reports:
            print_report(report)
        if args.json:
            write_json(args.json, reports)
