"""One batch run for the command line: cluster, jobs, journal, progress, signals, summary.

``aimcluster run`` and ``aimcluster demo`` both end up here. Ctrl-C (SIGINT), SIGTERM or SIGHUP
(the terminal was closed) stops a run gracefully: no new job starts, jobs in flight get
``grace`` seconds to finish and are then cancelled, the summary is printed, and the exit code
is 128 + the signal number (130 for SIGINT, 129 for SIGHUP). A second Ctrl-C cancels the jobs
in flight at once; a third abandons the run.

A budget (``--max-cost``, ``--max-tokens``) that is spent stops the run the same way, without
cancelling anything: the jobs in flight finish, the rest are not started, and the exit code is
4 if any were left.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence

import anyio
import attrs
import structlog

from aimcluster import (
    ClusterMetrics,
    Job,
    JobResult,
    JobRun,
    Pool,
    RestartPolicy,
    ToolSpec,
    launch_cluster,
    run_jobs,
    single_error,
)

from .journal import Journal
from .progress import Display, Tracker
from .report import RunSummary, summarize
from .results import Worktrees
from .signals import Stopper

__all__ = ["Batch", "BatchOutcome", "run_batch"]


@attrs.frozen(kw_only=True)
class Batch:
    """What to run, and how."""

    #: The tool and its number of instances; with several tools (:attr:`pools`), the first
    #: pool's spec and the number of instances of them all.
    spec: ToolSpec
    count: int
    #: Several tools: one pool each, in the order given (empty: *count* of *spec*).
    pools: Sequence[Pool] = ()
    #: The failover order (pool names) and ``--failover-after``, with several tools.
    fallback: Sequence[str] = ()
    failover_after: float | None = None
    routing: str
    jobs: Sequence[Job]
    #: Items given, how many of them the journal already had as done, and how many
    #: ``--limit`` left for a later run (in *total*, not in *jobs*).
    total: int
    skipped: int
    held_back: int = 0
    timeout: float | None
    retries: int
    grace: float
    #: The open journal each result is appended to, if any.
    journal: Journal | None
    #: Each job's fingerprint by item, written in its journal record.
    fingerprints: Mapping[str, str] = attrs.field(factory=dict)
    #: Regexes that fail a step whose reply matches (``None``: the tool's own
    #: ``failure_replies``).
    fail_on: Sequence[str] | None = None
    #: The instances' restart policy (``None``: the default one).
    restart: RestartPolicy | None = None
    #: ``--isolation worktree``: commits each job's change, and lands every item's commit on
    #: the result branch once the jobs have ended.
    workspace: Worktrees | None = None
    #: ``--max-cost`` / ``--max-tokens``: once the replies' reported usage reaches either, no
    #: new job starts (those in flight finish).
    max_cost: float | None = None
    max_tokens: int | None = None


@attrs.frozen(kw_only=True)
class BatchOutcome:
    summary: RunSummary
    results: tuple[JobResult, ...]
    metrics: ClusterMetrics | None
    #: 0: every item done; 1: some failed; 4: the budget was spent before every item was
    #: done; 128 + N: stopped by signal N.
    exit_code: int


async def _collect(
    run: JobRun,
    journal: Journal | None,
    fingerprints: Mapping[str, str],
    tracker: Tracker,
    display: Display,
    results: list[JobResult],
) -> None:
    """Journal, count and show each result as it comes (journal first: what the display
    counts is on disk)."""
    noticed = False
    async with anyio.create_task_group() as ui:
        ui.start_soon(display.refresh_forever)
        async for result in run:
            if journal is not None:
                await journal.append(result, job=fingerprints.get(result.item))
            results.append(result)
            tracker.add(result)
            display.result(result)
            if run.budget_spent is not None and not noticed:
                noticed = True
                display.notice(
                    f"budget spent ({run.budget_spent}): starting no new jobs; waiting for "
                    f"the {len(run.active)} in flight"
                )
        ui.cancel_scope.cancel()


def _cluster_of(batch: Batch) -> tuple[ToolSpec | list[Pool], int]:
    """``launch_cluster``'s first two arguments for *batch*."""
    if batch.pools:
        return list(batch.pools), 1
    return batch.spec, batch.count


async def run_batch(
    batch: Batch,
    *,
    tracker: Tracker,
    display: Display,
    logger: structlog.typing.FilteringBoundLogger,
) -> BatchOutcome:
    """Run *batch*, journaling each result, counting it in *tracker*, showing it on *display*.

    :raises ToolNotFoundError: before anything starts, if the tool's executable is missing
    :raises StartupError: if an instance does not start
    :raises JournalWriteError: if the journal cannot be written
    """
    try:
        return await _run_batch(batch, tracker=tracker, display=display, logger=logger)
    except BaseExceptionGroup as group:
        raise single_error(group) from None


async def _run_batch(
    batch: Batch,
    *,
    tracker: Tracker,
    display: Display,
    logger: structlog.typing.FilteringBoundLogger,
) -> BatchOutcome:
    stopper = Stopper(grace=batch.grace, notice=display.notice)
    results: list[JobResult] = []
    metrics: ClusterMetrics | None = None
    not_started = len(batch.jobs)
    budget_spent: str | None = None
    begin = ready = anyio.current_time()
    async with anyio.create_task_group() as signals:
        await signals.start(stopper.watch)
        # A signal before the jobs start cancels this scope: the start-up is abandoned.
        with stopper.scope:
            async with launch_cluster(
                *_cluster_of(batch),
                routing=batch.routing,
                fallback=batch.fallback or None,
                failover_after=batch.failover_after,
                restart=batch.restart or True,
                logger=logger,
            ) as cluster:
                ready = anyio.current_time()
                async with run_jobs(
                    cluster,
                    batch.jobs,
                    timeout=batch.timeout,
                    retries=batch.retries,
                    fail_on=batch.fail_on,
                    workspace=batch.workspace,
                    max_cost=batch.max_cost,
                    max_tokens=batch.max_tokens,
                ) as run:
                    stopper.run = run
                    tracker.start()
                    display.attach(cluster, run)
                    try:
                        await _collect(
                            run, batch.journal, batch.fingerprints, tracker, display, results
                        )
                    finally:
                        display.close()
                    not_started = len(run.unstarted)
                    budget_spent = run.budget_spent
                metrics = cluster.metrics()
        signals.cancel_scope.cancel()
    skipped = batch.skipped
    if batch.workspace is not None:
        # After the instances stopped, and after a stop too: what is done lands.
        results, reopened = await batch.workspace.land(
            results, journal=batch.journal, fingerprints=batch.fingerprints
        )
        skipped -= reopened
    end = anyio.current_time()
    interrupted = None if stopper.signum is None else signal.Signals(stopper.signum).name
    pools = batch.pools or [Pool(batch.spec, batch.count)]
    summary = summarize(
        results,
        tool=", ".join(pool.name for pool in pools),
        count=batch.count,
        total=batch.total,
        skipped=skipped,
        not_started=not_started,
        startup_time=ready - begin,
        wall_time=end - begin,
        metrics=metrics,
        interrupted=interrupted,
        journal=None if batch.journal is None else str(batch.journal.path),
        landing=None if batch.workspace is None else batch.workspace.landing,
        budget_spent=budget_spent,
        held_back=batch.held_back,
        pools=[(pool.name, pool.tool.name, pool.count) for pool in pools],
        fallback=batch.fallback,
    )
    code = 0 if summary.clean else 1
    if budget_spent is not None and summary.not_started:
        code = 4
    if stopper.signum is not None:
        code = 128 + stopper.signum
    return BatchOutcome(summary=summary, results=tuple(results), metrics=metrics, exit_code=code)
