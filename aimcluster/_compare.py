"""Compare: the same jobs on several tools, each tool in working places of its own, side by side.

:func:`compare_jobs` runs every job once on each named pool of a cluster: one :class:`JobRun`
per pool, as many jobs at a time as the pool has instances, so that a slow tool never holds
back a fast one and the copies of one item on different tools run at the same time, while on
one tool the jobs keep their own order on their resources. A job never moves to another
pool (the pools compared must not be in the cluster's failover order): what a tool did is
what its column shows. :class:`Comparison` puts the results side by side: per job and tool
whether it passed its checks (every step's reply, ``fail_on``, ``verify``), how long it took,
its attempts, what it cost and its commit, and per tool the totals.

``aimcluster run --compare`` (:func:`compare_command`) gives each pool worktrees of its own
(:mod:`._results`): each tool's commits land on a result branch of its own,
``aimcluster/run-<run>-<pool>``, since the tools' changes to one item conflict.
"""

from __future__ import annotations

import functools
import json
import math
import re
import signal
import statistics
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from ._cluster import launch_cluster
from ._exceptions import StartupError, ToolNotFoundError, single_error
from ._items import InputError
from ._jobs import Job, JobResult, JobRun, Workspace
from ._pool import Pool
from ._results import GitError, Worktrees, open_worktrees
from ._terminal import shown
from ._usage import Usage
from ._usage import total as total_usage

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from ._cluster import Cluster
    from ._policy import RestartPolicy

__all__ = [
    "CompareRun",
    "CompareSetup",
    "Comparison",
    "ToolTotals",
    "compare_command",
    "compare_jobs",
    "render_comparison",
    "run_comparison",
]

#: ``aimcluster run``'s exit code when a tool does not start.
EXIT_NO_START = 3
# A pool's name goes into its branches and directories as it is.
_POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@attrs.frozen(kw_only=True)
class ToolTotals:
    """What one tool did over the jobs of a comparison."""

    tool: str
    #: Jobs given, and how many of them passed, failed, were cancelled or never ran.
    jobs: int
    passed: int
    failed: int
    cancelled: int
    not_run: int
    #: The median seconds of the jobs that ended (passed or failed), and all their seconds.
    median_elapsed: float | None
    elapsed: float
    #: Attempts over every job (more than the jobs only with retries).
    attempts: int
    #: Tokens and cost of every reply, as the tool reported them (``None``: it reported none).
    usage: Usage | None

    def as_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=False)
        data["usage"] = None if self.usage is None else self.usage.as_dict()
        return data


def _failed_check(result: JobResult) -> str | None:
    """Which check a job that did not pass failed: ``fail_on`` (a reply reported a failure),
    ``verify``, ``conflict`` (its change did not land), else the error's class."""
    if result.ok:
        return None
    return {
        "ReplyFailedError": "fail_on",
        "VerifyFailedError": "verify",
        "ConflictError": "conflict",
    }.get(result.error_type or "", result.error_type)


def _cell(result: JobResult) -> dict[str, Any]:
    return {
        "status": result.status,
        "passed": result.ok,
        "failed_check": _failed_check(result),
        "error": result.error,
        "elapsed": round(result.elapsed, 3),
        "attempts": result.attempts,
        "instance": result.instance,
        "verify_exit_code": None if result.verify is None else result.verify.exit_code,
        "commit": result.commit,
        "usage": None if result.usage is None else result.usage.as_dict(),
    }


@attrs.frozen(kw_only=True)
class Comparison:
    """The results of a compare run, side by side: one row per job, one column per tool."""

    #: The pools compared, in order.
    tools: tuple[str, ...]
    #: The jobs, in the order given (without a tool).
    jobs: tuple[Job, ...]
    #: One row per job: the result of each tool that ran it, by pool name (a job that did not
    #: run on a tool, stopped before it started, has no entry for it).
    rows: tuple[Mapping[str, JobResult], ...]
    #: With worktrees: the branch each tool's results landed on.
    branches: Mapping[str, str] = attrs.field(factory=dict)

    def result(self, item: str, tool: str) -> JobResult | None:
        """The result of the (first) job on *item* on *tool*."""
        for job, row in zip(self.jobs, self.rows, strict=True):
            if job.item == item:
                return row.get(tool)
        raise KeyError(item)

    @property
    def complete(self) -> bool:
        """Whether every job ran to its end on every tool."""
        return all(
            tool in row and row[tool].status != "cancelled"
            for row in self.rows
            for tool in self.tools
        )

    @property
    def all_passed(self) -> bool:
        """Whether every job passed on every tool."""
        return all(tool in row and row[tool].ok for row in self.rows for tool in self.tools)

    def totals(self) -> dict[str, ToolTotals]:
        """Per tool: how many passed, the median time, the attempts, the cost."""
        totals = {}
        for tool in self.tools:
            results = [row[tool] for row in self.rows if tool in row]
            ended = [r.elapsed for r in results if r.status != "cancelled"]
            usages = [r.usage for r in results if r.usage is not None]
            totals[tool] = ToolTotals(
                tool=tool,
                jobs=len(self.rows),
                passed=sum(1 for r in results if r.ok),
                failed=sum(1 for r in results if r.status == "failed"),
                cancelled=sum(1 for r in results if r.status == "cancelled"),
                not_run=len(self.rows) - len(results),
                median_elapsed=statistics.median(ended) if ended else None,
                elapsed=sum(ended),
                attempts=sum(r.attempts for r in results),
                usage=total_usage(usages) if usages else None,
            )
        return totals

    def as_dict(self) -> dict[str, Any]:
        """The comparison as JSON-ready data (``--report``)."""
        return {
            "tools": list(self.tools),
            "branches": dict(self.branches),
            "items": [
                {
                    "item": job.item,
                    "results": {
                        tool: _cell(row[tool]) if tool in row else None for tool in self.tools
                    },
                }
                for job, row in zip(self.jobs, self.rows, strict=True)
            ],
            "totals": {tool: totals.as_dict() for tool, totals in self.totals().items()},
        }


def _compared(cluster: Cluster, tools: Iterable[str] | None) -> tuple[str, ...]:
    """The pools to compare, checked: pool names (not tags), none in the failover order."""
    if tools is None:
        names = tuple(cluster.pools)
    else:
        if isinstance(tools, str):
            raise TypeError(f"tools must be a sequence of pool names, got the string {tools!r}")
        names = tuple(tools)
    if not names:
        raise ValueError("a comparison needs at least one tool")
    for name in names:
        if name not in cluster.pools:
            raise ValueError(
                f"compare runs on pools by name; the cluster has no pool {name!r} "
                f"(its pools: {', '.join(cluster.pools)})"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"a tool is named twice: {list(names)!r}")
    moving = [name for name in names if name in cluster.fallback]
    if moving:
        # A job moved to another pool would run there twice, and its column would show
        # another tool's work.
        raise ValueError(
            f"the pools compared may not be in the cluster's failover order (fallback=), "
            f"which would move their jobs to another tool: {', '.join(moving)}"
        )
    return names


class CompareRun:
    """A running comparison; create it with :func:`compare_jobs`.

    ``async with compare_jobs(...) as run:`` starts it, ``async for result in run`` yields
    each tool's :class:`JobResult` as it ends (``result.tool`` names the tool), and
    :attr:`comparison` puts what has ended side by side. Leaving the block cancels whatever
    has not ended; a bare ``async for`` over :func:`compare_jobs` does the same in one go.
    """

    def __init__(
        self,
        cluster: Cluster,
        jobs: Iterable[Job],
        tools: Iterable[str] | None,
        *,
        timeout: float | Mapping[str, float | None] | None,
        retries: int,
        fail_on: Iterable[str] | Mapping[str, Iterable[str] | None] | None,
        workspaces: Mapping[str, Workspace] | None,
    ) -> None:
        # timeout and fail_on may be given per tool (a mapping), as the command line does.
        self._tools = _compared(cluster, tools)
        self._jobs: tuple[Job, ...] = tuple(jobs)
        for job in self._jobs:
            if not isinstance(job, Job):
                raise TypeError(f"jobs must be aimcluster.Job objects, got {job!r}")
            if job.tool is not None:
                raise ValueError(
                    f"the job on {job.item!r} names the tool {job.tool!r}: a compare run "
                    "runs each job on every tool compared"
                )
        if isinstance(fail_on, str):
            raise TypeError(f"fail_on must be a sequence of regexes, got the string {fail_on!r}")
        workspaces = workspaces or {}
        unknown = sorted(set(workspaces) - set(self._tools))
        if unknown:
            raise ValueError(f"workspaces names tools not compared: {', '.join(unknown)}")
        self._row: dict[int, int] = {}
        self._runs: dict[str, JobRun] = {}
        # Each tool's copies are kept: a result's job is its copy, found by identity (two
        # jobs may be equal).
        self._copies: dict[str, list[Job]] = {}
        for tool in self._tools:
            copies = [attrs.evolve(job, tool=tool) for job in self._jobs]
            self._copies[tool] = copies
            self._row.update((id(copy), index) for index, copy in enumerate(copies))
            patterns = fail_on.get(tool) if isinstance(fail_on, Mapping) else fail_on
            self._runs[tool] = JobRun(
                cluster,
                copies,
                timeout=timeout.get(tool) if isinstance(timeout, Mapping) else timeout,
                retries=retries,
                # As many at a time as the pool has instances: a job waiting for a busy
                # tool's instance never holds a slot another tool's job could use.
                concurrency=len(cluster.pools[tool].instances),
                fail_on=None if patterns is None else list(patterns),
                workspace=workspaces.get(tool),
            )
        self._rows: list[dict[str, JobResult]] = [{} for _ in self._jobs]
        self._entered = False
        self._stack: AsyncExitStack | None = None
        self._receive: anyio.abc.ObjectReceiveStream[JobResult] | None = None

    # -- observing ------------------------------------------------------------------------

    @property
    def tools(self) -> tuple[str, ...]:
        return self._tools

    @property
    def total(self) -> int:
        """How many jobs run in all: each job once per tool."""
        return len(self._jobs) * len(self._tools)

    @property
    def runs(self) -> Mapping[str, JobRun]:
        """Each tool's run of the jobs."""
        return dict(self._runs)

    @property
    def active(self) -> Mapping[int, Job]:
        """The job each instance is running now, by instance index."""
        active: dict[int, Job] = {}
        for run in self._runs.values():
            active.update(run.active)
        return active

    @property
    def unstarted(self) -> list[Job]:
        """The jobs (each tool's copy) that have not started."""
        return [job for run in self._runs.values() for job in run.unstarted]

    def results(self, tool: str) -> list[JobResult]:
        """*tool*'s results so far, in job order."""
        return [row[tool] for row in self._rows if tool in row]

    @property
    def comparison(self) -> Comparison:
        """The results so far, side by side."""
        return Comparison(
            tools=self._tools,
            jobs=self._jobs,
            rows=tuple(dict(row) for row in self._rows),
        )

    # -- control --------------------------------------------------------------------------

    def stop(self, grace: float | None = None) -> None:
        """Start no more jobs on any tool; cancel those in flight after *grace* seconds."""
        for run in self._runs.values():
            run.stop(grace)

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> CompareRun:
        if self._entered:
            raise RuntimeError("a CompareRun can be started only once")
        self._entered = True
        send, receive = anyio.create_memory_object_stream[JobResult](math.inf)
        async with AsyncExitStack() as stack:
            stack.enter_context(receive)
            runs = [await stack.enter_async_context(run) for run in self._runs.values()]
            forwarding = await stack.enter_async_context(anyio.create_task_group())
            # Leaving the block early stops the forwarding first, then each run its jobs.
            stack.callback(forwarding.cancel_scope.cancel)
            with send:
                for run in runs:
                    forwarding.start_soon(self._forward, run, send.clone())
            self._receive = receive
            self._stack = stack.pop_all()
        return self

    async def _forward(self, run: JobRun, send: MemoryObjectSendStream[JobResult]) -> None:
        with send:
            async for result in run:
                tool = result.job.tool
                assert tool is not None
                self._rows[self._row[id(result.job)]][tool] = result
                send.send_nowait(result)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None
        try:
            return await self._stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            raise single_error(group) from None

    def __aiter__(self) -> AsyncIterator[JobResult]:
        if self._entered:
            return self
        return self._run_and_iterate()

    async def _run_and_iterate(self) -> AsyncGenerator[JobResult, None]:
        async with self:
            async for result in self:
                yield result

    async def __anext__(self) -> JobResult:
        if self._receive is None:
            raise RuntimeError("iterate a CompareRun with 'async for', or enter it first")
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


def compare_jobs(
    cluster: Cluster,
    jobs: Iterable[Job],
    tools: Iterable[str] | None = None,
    *,
    timeout: float | None = None,
    retries: int = 0,
    fail_on: Iterable[str] | None = None,
    workspaces: Mapping[str, Workspace] | None = None,
) -> CompareRun:
    """Run every job once on each of *tools* (pool names; default: every pool of *cluster*)
    and put the results side by side.

    ::

        async with launch_cluster([Pool("aider", 2), Pool("claude", 2)]) as cluster:
            async with compare_jobs(cluster, jobs) as run:
                async for result in run:
                    print(result.tool, result.item, result.status)
            for tool, totals in run.comparison.totals().items():
                print(tool, totals.passed, totals.median_elapsed)

    Each tool runs the jobs as :func:`run_jobs` would, as many at a time as its pool has
    instances; the tools run side by side. A job never moves to another tool.

    :param timeout: seconds each step's reply (and ``verify``) may take (default: each
        tool's ``reply_timeout``; the verify command, unbounded)
    :param retries: run a failed job again, on the same tool, up to this many times
    :param fail_on: regexes that fail a step whose reply matches (default: each tool's own
        ``ToolSpec.failure_replies``)
    :param workspaces: a :class:`Workspace` per tool (pool name) for its jobs' changes; tools
        whose changes may conflict need one each (worktrees on branches of their own)
    :raises ValueError: for a tool that is not a pool of *cluster*, or is in its failover
        order, or a job that names a tool
    """
    return CompareRun(
        cluster,
        jobs,
        tools,
        timeout=timeout,
        retries=retries,
        fail_on=fail_on,
        workspaces=workspaces,
    )


# -- the command line: worktrees per tool, signals, the table and the report --------------------


@attrs.frozen(kw_only=True)
class CompareSetup:
    """What ``aimcluster run --compare`` runs."""

    #: The tools, as pools (names unique; each pool's spec without a working directory).
    pools: Sequence[Pool]
    jobs: Sequence[Job]
    #: Where the repository is (``--cwd``), and the run's id.
    root: Path
    run: str
    #: Seconds each step's reply (and verify) may take: *timeout*, else the tool's own
    #: ``reply_timeout``, else *default_timeout*.
    timeout: float | None
    default_timeout: float = 600.0
    retries: int
    #: On Ctrl-C: how long jobs in flight may take to finish.
    grace: float
    #: Each pool's failure patterns (``None``: its tool's own).
    fail_on: Mapping[str, Sequence[str] | None] = attrs.field(factory=dict)
    restart: RestartPolicy | bool = True
    #: The result branches' prefix (each tool's is ``<prefix>-<pool>``; default
    #: ``aimcluster/run-<run>``), and whether to keep the worktrees.
    result_branch: str | None = None
    keep: bool = False
    routing: str = "least_busy"


@attrs.frozen(kw_only=True)
class CompareOutcome:
    comparison: Comparison
    #: What the user should hear of (branches kept, uncommitted changes left out).
    notes: tuple[str, ...]
    #: 0: every job passed on every tool; 1: some did not; 128 + N: stopped by signal N.
    exit_code: int
    interrupted: str | None = None


@attrs.define(eq=False)
class _Stopper:
    """Signals stop the comparison: the first gracefully, the second at once, the third
    abandons it."""

    grace: float
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    run: CompareRun | None = None
    signum: int | None = None
    received: int = 0

    def on_signal(self, signum: int) -> None:
        self.received += 1
        if self.signum is None:
            self.signum = signum
        if self.run is None or self.received > 2:
            self.scope.cancel()
        else:
            self.run.stop(self.grace if self.received == 1 else 0)

    async def watch(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                self.on_signal(signum)


def _check_names(pools: Sequence[Pool]) -> None:
    for pool in pools:
        if _POOL_NAME.fullmatch(pool.name) is None:
            raise InputError(
                f"--compare names each tool's branch after its pool: {pool.name!r} is not "
                "usable in a branch name (letters, digits, '.', '_' and '-')"
            )


async def _open_all(setup: CompareSetup, stack: AsyncExitStack) -> dict[str, Worktrees]:
    """One set of worktrees per pool, numbered as the cluster numbers its instances."""
    worktrees: dict[str, Worktrees] = {}
    first = 0
    prefix = setup.result_branch or f"aimcluster/run-{setup.run}"
    for pool in setup.pools:
        jobs = [attrs.evolve(job, tool=pool.name) for job in setup.jobs]
        try:
            place = await open_worktrees(
                setup.root,
                pool.count,
                run=f"{setup.run}-{pool.name}",
                jobs=jobs,
                result_branch=f"{prefix}-{pool.name}",
                keep=setup.keep,
                first=first,
                resumable=False,
            )
        except GitError as exc:
            raise InputError(f"--compare could not set up the worktrees: {exc}") from None
        stack.push_async_callback(_close, place)
        worktrees[pool.name] = place
        first += pool.count
    return worktrees


async def _close(worktrees: Worktrees) -> None:
    with anyio.CancelScope(shield=True):
        await worktrees.close()


async def run_comparison(
    setup: CompareSetup,
    *,
    on_result: Callable[[JobResult], None] | None = None,
    logger: structlog.typing.FilteringBoundLogger | None = None,
) -> CompareOutcome:
    """Run *setup*'s jobs on each of its pools, each pool in worktrees of its own; land each
    tool's commits on its own result branch.

    :param on_result: called with each :class:`JobResult` as it ends
    :raises InputError: if the worktrees cannot be set up
    """
    try:
        return await _run_comparison(setup, on_result=on_result, logger=logger)
    except BaseExceptionGroup as group:
        raise single_error(group) from None


async def _run_comparison(
    setup: CompareSetup,
    *,
    on_result: Callable[[JobResult], None] | None,
    logger: structlog.typing.FilteringBoundLogger | None,
) -> CompareOutcome:
    _check_names(setup.pools)
    stopper = _Stopper(grace=setup.grace)
    comparison: Comparison | None = None
    notes: list[str] = []
    async with AsyncExitStack() as stack:
        worktrees = await _open_all(setup, stack)
        pools = [
            attrs.evolve(pool, tool=attrs.evolve(pool.tool, cwd=worktrees[pool.name].cwd_template))
            for pool in setup.pools
        ]
        results: dict[str, list[JobResult]] = {}
        async with anyio.create_task_group() as signals:
            await signals.start(stopper.watch)
            with stopper.scope:
                async with launch_cluster(
                    pools, routing=setup.routing, restart=setup.restart, logger=logger
                ) as cluster:
                    for pool in pools:
                        # The worktrees were made for the cluster's own numbering.
                        expected = tuple(worktrees[pool.name].places)
                        if cluster.pools[pool.name].instances != expected:
                            raise RuntimeError(
                                f"pool {pool.name!r} has the instances "
                                f"{cluster.pools[pool.name].instances}, not {expected}"
                            )
                    # fail_on is per pool: the user's patterns with each tool's own.
                    async with CompareRun(
                        cluster,
                        setup.jobs,
                        None,
                        timeout={
                            pool.name: setup.timeout
                            or pool.tool.reply_timeout
                            or setup.default_timeout
                            for pool in pools
                        },
                        retries=setup.retries,
                        fail_on=setup.fail_on,
                        workspaces=worktrees,
                    ) as run:
                        stopper.run = run
                        async for result in run:
                            if on_result is not None:
                                on_result(result)
                    results = {tool: run.results(tool) for tool in run.tools}
                    comparison = run.comparison
            signals.cancel_scope.cancel()
        branches: dict[str, str] = {}
        landed: dict[str, list[JobResult]] = {}
        for tool, place in worktrees.items():
            # After the instances stopped, and after a stop too: what is done lands.
            landed[tool], _ = await place.land(results.get(tool, []))
            if place.landing is not None:
                branches[tool] = place.landing.branch
        # Closing (the stack) removes the worktrees and the branches all of whose commits
        # landed; its notes are said after.
    for place in worktrees.values():
        for note in place.notes:
            if note not in notes:
                notes.append(note)
    if comparison is None:
        comparison = Comparison(
            tools=tuple(p.name for p in setup.pools),
            jobs=tuple(setup.jobs),
            rows=tuple({} for _ in setup.jobs),
        )
    comparison = _with_landed(comparison, landed, branches)
    interrupted = None if stopper.signum is None else signal.Signals(stopper.signum).name
    code = 0 if comparison.all_passed else 1
    if stopper.signum is not None:
        code = 128 + stopper.signum
    return CompareOutcome(
        comparison=comparison, notes=tuple(notes), exit_code=code, interrupted=interrupted
    )


def _with_landed(
    comparison: Comparison, landed: Mapping[str, list[JobResult]], branches: Mapping[str, str]
) -> Comparison:
    """*comparison* with the results as landing left them (an item whose change conflicts
    with the items before it is failed)."""
    rows = [dict(row) for row in comparison.rows]
    for tool, results in landed.items():
        by_job = {id(row[tool].job): index for index, row in enumerate(rows) if tool in row}
        for result in results:
            index = by_job.get(id(result.job))
            if index is not None:
                rows[index][tool] = result
    return attrs.evolve(comparison, rows=tuple(rows), branches=dict(branches))


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}s" if value < 60 else f"{value / 60:.1f}m"


def _usage_text(usage: Usage | None) -> str:
    if usage is None:
        return ""
    if usage.cost_usd is not None:
        return f"${usage.cost_usd:.4f}"
    if usage.tokens is not None:
        return f"{usage.tokens:,} tok"
    return ""


def _cell_text(result: JobResult | None) -> Text:
    from rich.text import Text

    if result is None:
        return Text("not run", style="dim")
    if result.ok:
        text = Text("pass", style="green")
    elif result.status == "cancelled":
        text = Text("cancelled", style="yellow")
    else:
        text = Text(f"FAIL {_failed_check(result)}", style="red")
    details = [_seconds(result.elapsed)]
    if result.attempts > 1:
        details.append(f"{result.attempts} attempts")
    cost = _usage_text(result.usage)
    if cost:
        details.append(cost)
    text.append(" " + " ".join(details))
    return text


def render_comparison(comparison: Comparison) -> Table:
    """The comparison as a table: items as rows, tools as columns, each tool's totals below."""
    # The command line's libraries, imported when it draws: ``import aimcluster`` stays light.
    from rich.table import Table
    from rich.text import Text

    table = Table(title="Compare", title_justify="left", show_lines=False)
    table.add_column("item", overflow="fold")
    for tool in comparison.tools:
        # A verdict is read across a row: it is never broken over two lines.
        table.add_column(tool, no_wrap=True)
    for job, row in zip(comparison.jobs, comparison.rows, strict=True):
        table.add_row(Text(job.item), *(_cell_text(row.get(tool)) for tool in comparison.tools))
    totals = comparison.totals()
    table.add_section()
    best = max((t.passed for t in totals.values()), default=0)
    table.add_row(
        Text("passed", style="bold"),
        *(
            Text(
                f"{totals[t].passed}/{totals[t].jobs}",
                style="bold green" if totals[t].passed == best and best else "bold",
            )
            for t in comparison.tools
        ),
    )
    table.add_row("median time", *(_seconds(totals[t].median_elapsed) for t in comparison.tools))
    table.add_row("attempts", *(str(totals[t].attempts) for t in comparison.tools))
    table.add_row(
        "cost", *(_usage_text(totals[t].usage) or "not reported" for t in comparison.tools)
    )
    return table


def compare_command(
    setup: CompareSetup,
    *,
    console: Console,
    backend: str,
    report: str | None,
    progress: bool,
    logger: structlog.typing.FilteringBoundLogger | None = None,
    refused: Mapping[str, bool] | None = None,
) -> int:
    """``aimcluster run --compare``: run, print the side-by-side table, write the report;
    return the exit code.

    :param refused: the options given that a compare run cannot honour, by name
    :raises InputError: for an option in *refused*, or if the worktrees cannot be set up
    """
    given = [name for name, present in (refused or {}).items() if present]
    if given:
        raise InputError(
            f"--compare runs every job once on each tool, in worktrees, and keeps no journal: "
            f"{', '.join(given)} cannot be used with it"
        )
    import click
    from rich.text import Text

    total = len(setup.jobs) * len(setup.pools)
    done = 0

    def on_result(result: JobResult) -> None:
        nonlocal done
        done += 1
        if progress:
            line = Text(f"[{done}/{total}] {result.tool}  ")
            line.append_text(Text(result.item))
            line.append_text(Text("  ").append_text(_cell_text(result)))
            console.print(line)

    names = ", ".join(f"{p.name} x {p.count}" for p in setup.pools)
    console.print(
        f"aimcluster run --compare: {len(setup.jobs)} jobs on {len(setup.pools)} tools "
        f"({names}), each in worktrees of its own",
        markup=False,
        style="bold",
    )
    try:
        outcome: CompareOutcome = anyio.run(
            functools.partial(run_comparison, setup, on_result=on_result, logger=logger),
            backend=backend,
        )
    except ToolNotFoundError as exc:
        raise InputError(str(exc)) from None
    except StartupError as exc:
        head, _, output = str(exc).partition("\n")
        click.echo(f"aimcluster: error: {shown(head)}", err=True)
        if output:
            click.echo(shown(output, block=True), err=True)
        return EXIT_NO_START
    except OSError as exc:
        # What the system refused about a file (a spawn, a worktree to make) is the run's
        # failure, said in one line; any other OSError is a bug, and shows as one.
        if exc.filename is None:
            raise
        click.echo(f"aimcluster: error: {shown(str(exc))}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("aimcluster: interrupted", err=True)
        return 130
    if report is not None:
        data = {
            "run": setup.run,
            "compare": outcome.comparison.as_dict(),
            "exit_code": outcome.exit_code,
            "interrupted": outcome.interrupted,
            "notes": list(outcome.notes),
        }
        try:
            Path(report).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            click.echo(
                f"aimcluster: error: cannot write the report {shown(report)}: {shown(str(exc))}",
                err=True,
            )
    console.print(render_comparison(outcome.comparison))
    # Below the table, whole: a branch name is copied from here.
    for tool, branch in outcome.comparison.branches.items():
        console.print(f"{tool}: results on {branch}", markup=False)
    for note in outcome.notes:
        console.print(f"note: {shown(note)}", markup=False)
    return outcome.exit_code
