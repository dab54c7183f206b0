"""The end-of-run summary as data: totals, per-instance and per-pool figures, job times and
failures, and the ``--report`` file that holds it as JSON.

:class:`RunSummary` is plain data, built from the job results and the cluster's metrics
(:func:`summarize`); programs read it as JSON (:meth:`RunSummary.as_dict`, written by
:func:`write_report`), people as tables (:mod:`.summary_render`).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import click

from aimcluster import Usage

from .terminal import shown

if TYPE_CHECKING:
    from aimcluster import ClusterMetrics, InstanceMetrics, JobResult

    from .landing import Landing

__all__ = [
    "FailoverSummary",
    "FailureSummary",
    "InstanceSummary",
    "ItemUsage",
    "PoolSummary",
    "RunSummary",
    "last_lines",
    "summarize",
    "write_report",
]

#: The tool's last lines kept for each failure, and the characters kept of each line.
LAST_LINES = 3
LAST_LINE_WIDTH = 160


def last_lines(text: str | None, count: int = LAST_LINES) -> str | None:
    """The last *count* non-blank lines of *text*, each cut to ``LAST_LINE_WIDTH``."""
    if not text:
        return None
    lines = [line.rstrip() for line in text.splitlines() if line.strip()][-count:]
    cut = [
        line if len(line) <= LAST_LINE_WIDTH else line[: LAST_LINE_WIDTH - 3] + "..."
        for line in lines
    ]
    return "\n".join(cut) or None


@attrs.frozen(kw_only=True)
class InstanceSummary:
    """What one instance did during the run."""

    #: The slot index.
    index: int
    #: Jobs that ended ``ok`` / not ok on this instance.
    jobs_ok: int
    jobs_failed: int
    #: Prompts sent and process restarts, from :meth:`Cluster.metrics`.
    prompts: int
    restarts: int
    #: Reply latency percentiles over recent prompts, in seconds.
    reply_p50: float | None
    reply_p95: float | None
    #: Tokens and cost of every turn on this instance, as the tool reported them.
    usage: Usage = attrs.field(factory=Usage)
    #: Model requests the tool retried on its own.
    tool_retries: int = 0
    #: The instance's pool (its tool's name unless the pool was named otherwise).
    tool: str | None = None


@attrs.frozen(kw_only=True)
class PoolSummary:
    """What one pool (the instances of one tool) did during a run of several tools."""

    #: The pool's name, and its tool's name (the same unless the pool was named otherwise).
    name: str
    tool: str
    #: Its instances' indices.
    instances: tuple[int, ...]
    #: Jobs that ended ``ok`` / not ok here (their last attempt ran on this pool).
    jobs_ok: int
    jobs_failed: int
    #: Job time percentiles of the jobs done here, and the seconds all its jobs took.
    job_p50: float | None
    job_p95: float | None
    job_time: float
    #: Prompts sent and process restarts over its instances.
    prompts: int
    restarts: int
    #: Prompts its provider rate-limited.
    rate_limited: int
    #: Tokens and cost of every turn on its instances, as the tool reported them.
    usage: Usage = attrs.field(factory=Usage)
    #: Prompts and leases that moved away from this pool to another, and into it, as the
    #: cluster counts them (:class:`~aimcluster.PoolMetrics`).
    failovers_out: int = 0
    failovers_in: int = 0
    #: Jobs that left this pool for another, and jobs that ended here after leaving another.
    jobs_moved_out: int = 0
    jobs_moved_in: int = 0


@attrs.frozen(kw_only=True)
class FailoverSummary:
    """A job that moved from pool to pool (its provider rate-limited it, its pool failed, or
    it waited too long there)."""

    item: str
    #: The pools it left, in order, and the pool its last attempt ran on (``None``: none).
    moved_from: tuple[str, ...]
    tool: str | None
    status: str


@attrs.frozen(kw_only=True)
class ItemUsage:
    """What one item's job cost, as the tool reported it."""

    item: str
    status: str
    usage: Usage


@attrs.frozen(kw_only=True)
class FailureSummary:
    """One job that did not succeed."""

    item: str
    #: ``failed`` or ``cancelled``.
    status: str
    attempts: int
    instance: int | None
    error_type: str | None
    error: str | None
    #: The tool's last lines (of its partial output, its failing reply or the verify
    #: command's output), if it printed any.
    output: str | None = None
    #: The pool its last attempt ran on, and the pools it moved away from.
    tool: str | None = None
    failovers: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class RunSummary:
    """Everything the final report says about a run."""

    #: The tool's name and the number of instances.
    tool: str
    count: int
    #: Items given, and items skipped as already done in the journal.
    total: int
    skipped: int
    #: Jobs that succeeded, failed, were cancelled by a stop, or never started.
    ok: int
    failed: int
    cancelled: int
    not_started: int
    #: Seconds from the start until the instances were ready, and until the end.
    startup_time: float
    wall_time: float
    #: Job time percentiles (lease wait included), in seconds.
    job_p50: float | None
    job_p95: float | None
    instances: tuple[InstanceSummary, ...]
    failures: tuple[FailureSummary, ...]
    #: The signal that stopped the run (``SIGINT``), if one did.
    interrupted: str | None = None
    #: Where the results journal is.
    journal: str | None = None
    #: ``--isolation worktree``: the result branch and the commits it holds.
    landing: Landing | None = None
    #: Tokens and cost of the whole run (every turn, failed ones included), as the tool
    #: reported them, and the model requests it retried on its own.
    usage: Usage = attrs.field(factory=Usage)
    tool_retries: int = 0
    #: Each job's usage, in the order the jobs ended (jobs whose tool reported one).
    items: tuple[ItemUsage, ...] = ()
    #: Why no more jobs started, if ``--max-cost`` or ``--max-tokens`` was reached.
    budget_spent: str | None = None
    #: Items left for a later run by ``--limit``: in :attr:`total`, never started.
    held_back: int = 0
    #: With several tools: each pool's totals, the failover order, and every job that moved.
    pools: tuple[PoolSummary, ...] = ()
    fallback: tuple[str, ...] = ()
    failovers: tuple[FailoverSummary, ...] = ()

    @property
    def finished(self) -> int:
        return self.ok + self.failed + self.cancelled

    @property
    def throughput(self) -> float | None:
        """Jobs finished per second of the run (startup excluded)."""
        seconds = self.wall_time - self.startup_time
        return self.finished / seconds if self.finished and seconds > 0 else None

    @property
    def succeeded(self) -> bool:
        """Whether every item is done (this run or an earlier one)."""
        return self.ok + self.skipped == self.total

    @property
    def clean(self) -> bool:
        """Whether every job this run meant to run is done (``--limit`` held the rest back)."""
        return self.ok + self.skipped + self.held_back == self.total

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = _plain(attrs.asdict(self))
        data["throughput"] = self.throughput
        data["succeeded"] = self.succeeded
        return data


def _plain(value: Any) -> Any:
    """*value* with tuples turned into lists, as JSON has them."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def summarize(
    results: Sequence[JobResult],
    *,
    tool: str,
    count: int,
    total: int,
    skipped: int,
    not_started: int,
    startup_time: float,
    wall_time: float,
    metrics: ClusterMetrics | None,
    interrupted: str | None = None,
    journal: str | None = None,
    landing: Landing | None = None,
    budget_spent: str | None = None,
    held_back: int = 0,
    pools: Sequence[tuple[str, str, int]] = (),
    fallback: Sequence[str] = (),
) -> RunSummary:
    """Build the summary of a run from its results and the cluster's last metrics.

    *pools*: with several tools, each pool's name, tool name and instance count, in order
    (their instances are numbered in that order); nothing for a run of one tool.
    """
    per_ok: Counter[int] = Counter()
    per_failed: Counter[int] = Counter()
    for result in results:
        if result.instance is not None:
            (per_ok if result.ok else per_failed)[result.instance] += 1
    pool_of = [name for name, _tool, n in pools for _ in range(n)]
    instances = []
    for index in range(count):
        m = _instance_metrics(metrics, index)
        instances.append(
            InstanceSummary(
                index=index,
                jobs_ok=per_ok[index],
                jobs_failed=per_failed[index],
                prompts=m.sent if m is not None else 0,
                restarts=m.restarts if m is not None else 0,
                reply_p50=m.latency_p50 if m is not None else None,
                reply_p95=m.latency_p95 if m is not None else None,
                usage=m.usage if m is not None else Usage(),
                tool_retries=m.tool_retries if m is not None else 0,
                tool=(m.tool or None) if m is not None else _at(pool_of, index),
            )
        )
    times = [result.elapsed for result in results if result.ok]
    failures = tuple(
        FailureSummary(
            item=result.item,
            status=result.status,
            attempts=result.attempts,
            instance=result.instance,
            error_type=result.error_type,
            error=result.error,
            output=last_lines(result.output),
            tool=result.tool,
            failovers=result.failovers,
        )
        for result in results
        if not result.ok
    )
    return RunSummary(
        tool=tool,
        count=count,
        total=total,
        skipped=skipped,
        ok=sum(1 for result in results if result.ok),
        failed=sum(1 for result in results if result.status == "failed"),
        cancelled=sum(1 for result in results if result.status == "cancelled"),
        not_started=not_started,
        startup_time=startup_time,
        wall_time=wall_time,
        job_p50=_percentile(times, 50),
        job_p95=_percentile(times, 95),
        instances=tuple(instances),
        failures=failures,
        interrupted=interrupted,
        journal=journal,
        landing=landing,
        # The cluster's count holds turns no job result does (a failed step's, a probe's).
        usage=metrics.usage if metrics is not None else _total_usage(r.usage for r in results),
        tool_retries=metrics.tool_retries if metrics is not None else 0,
        items=tuple(
            ItemUsage(item=result.item, status=result.status, usage=result.usage)
            for result in results
            if result.usage is not None
        ),
        budget_spent=budget_spent,
        held_back=held_back,
        pools=_pool_summaries(results, pools, instances, metrics),
        fallback=tuple(fallback),
        failovers=tuple(
            FailoverSummary(
                item=result.item,
                moved_from=result.failovers,
                tool=result.tool,
                status=result.status,
            )
            for result in results
            if result.failovers
        ),
    )


def _percentile(samples: Sequence[float], q: int) -> float | None:
    """The *q*-th percentile (1 <= q <= 99), interpolated between the closest ranks as the
    cluster's own latency percentiles are (numpy's default, ``statistics``' inclusive method);
    ``None`` with no samples."""
    if len(samples) < 2:
        return samples[0] if samples else None
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def _total_usage(usages: Iterable[Usage | None]) -> Usage:
    """The sum of *usages*: a turn that reported nothing (``None``) adds nothing."""
    return sum((usage for usage in usages if usage is not None), Usage())


def _instance_metrics(metrics: ClusterMetrics | None, index: int) -> InstanceMetrics | None:
    if metrics is None:
        return None
    try:
        return metrics.instance(index)
    except KeyError:
        return None


def _at(names: Sequence[str], index: int) -> str | None:
    return names[index] if index < len(names) else None


def _pool_summaries(
    results: Sequence[JobResult],
    pools: Sequence[tuple[str, str, int]],
    instances: Sequence[InstanceSummary],
    metrics: ClusterMetrics | None,
) -> tuple[PoolSummary, ...]:
    by_name = {} if metrics is None else {p.name: p for p in metrics.pools}
    summaries = []
    for name, tool, _count in pools:
        ended = [result for result in results if result.tool == name]
        mine = [m for m in instances if m.tool == name]
        pool = by_name.get(name)
        times = [result.elapsed for result in ended if result.ok]
        summaries.append(
            PoolSummary(
                name=name,
                tool=tool,
                instances=tuple(m.index for m in mine),
                jobs_ok=sum(1 for result in ended if result.ok),
                jobs_failed=sum(1 for result in ended if not result.ok),
                job_p50=_percentile(times, 50),
                job_p95=_percentile(times, 95),
                job_time=sum(result.elapsed for result in ended),
                prompts=sum(m.prompts for m in mine),
                restarts=sum(m.restarts for m in mine),
                rate_limited=0
                if metrics is None
                else sum(m.rate_limited for m in metrics.instances if m.tool == name),
                usage=_total_usage(m.usage for m in mine),
                failovers_out=pool.failovers_out if pool is not None else 0,
                failovers_in=pool.failovers_in if pool is not None else 0,
                jobs_moved_out=sum(1 for result in results if name in result.failovers),
                jobs_moved_in=sum(1 for result in ended if result.failovers),
            )
        )
    return tuple(summaries)


def write_report(path: str, data: dict[str, Any]) -> None:
    """Write a ``--report`` as JSON. A report that cannot be written is said on stderr and
    changes nothing else: the run is over, and its exit code stands."""
    try:
        Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        click.echo(
            f"aimcluster: error: cannot write the report {shown(path)}: {shown(str(exc))}",
            err=True,
        )
