"""Compare: the same jobs on several tools, each tool in working places of its own, side by side.

:func:`compare_jobs` runs every job once on each named pool of a cluster: one :class:`JobRun`
per pool, as many jobs at a time as the pool has instances, so that a slow tool never holds
back a fast one and the copies of one item on different tools run at the same time, while on
one tool the jobs keep their own order on their resources. A job never moves to another
pool (the pools compared must not be in the cluster's failover order): what a tool did is
what its column shows. :class:`Comparison` puts the results side by side: per job and tool
whether it passed its checks (every step's reply, ``fail_on``, ``verify``), how long it took,
its attempts, what it cost and its commit, and per tool the totals.

``aimcluster run --compare`` (:mod:`aimcluster._cli.compare`) is a client of this module
through the public API: it gives each pool worktrees of its own.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import anyio
import attrs
from anyio.streams.memory import MemoryObjectSendStream

from .._base.usage import Usage
from .._base.usage import total as total_usage
from .jobs import Job, JobResult, Workspace
from .scheduler import JobRun
from .stream import ResultStream

if TYPE_CHECKING:
    from .cluster import Cluster

__all__ = ["CompareRun", "Comparison", "ToolTotals", "compare_jobs"]


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


def _cell(result: JobResult) -> dict[str, Any]:
    return {
        "status": result.status,
        "passed": result.ok,
        "failed_check": result.failed_check,
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


class CompareRun(ResultStream[JobResult]):
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
        super().__init__()
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

    async def _start(self, stack: AsyncExitStack, send: MemoryObjectSendStream[JobResult]) -> None:
        runs = [await stack.enter_async_context(run) for run in self._runs.values()]
        forwarding = await stack.enter_async_context(anyio.create_task_group())
        # Leaving the block early stops the forwarding first, then each run its jobs.
        stack.callback(forwarding.cancel_scope.cancel)
        with send:
            for run in runs:
                forwarding.start_soon(self._forward, run, send.clone())

    async def _forward(self, run: JobRun, send: MemoryObjectSendStream[JobResult]) -> None:
        with send:
            async for result in run:
                tool = result.job.tool
                assert tool is not None
                self._rows[self._row[id(result.job)]][tool] = result
                send.send_nowait(result)


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
