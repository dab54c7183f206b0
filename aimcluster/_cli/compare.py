"""``aimcluster run --compare``: worktrees per tool, signals, the side-by-side table, the report.

A client of :func:`aimcluster.compare_jobs` through the public API. :func:`compare_command`
gives each pool worktrees of its own (:mod:`._results`): each tool's commits land on a result
branch of its own, ``aimcluster/run-<run>-<pool>``, since the tools' changes to one item
conflict.
"""

from __future__ import annotations

import contextlib
import functools
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import attrs
import structlog

from aimcluster import (
    CompareRun,
    Comparison,
    Job,
    JobResult,
    Pool,
    RestartPolicy,
    StartupError,
    ToolNotFoundError,
    Usage,
    launch_cluster,
    single_error,
)

from .git import GitError
from .items import InputError
from .report import write_report
from .results import Worktrees
from .signals import Stopper
from .terminal import shown
from .worktree_open import open_worktrees

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

__all__ = [
    "CompareOutcome",
    "CompareSetup",
    "compare_command",
    "render_comparison",
    "run_comparison",
]

#: ``aimcluster run``'s exit code when a tool does not start.
EXIT_NO_START = 3
# A pool's name goes into its branches and directories as it is.
_POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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


def _notice(message: str) -> None:
    """What a stop request did, on stderr (the table goes to stdout)."""
    with contextlib.suppress(OSError):
        print(f"[stop] {shown(message)}", file=sys.stderr, flush=True)


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
    stopper = Stopper(grace=setup.grace, notice=_notice)
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
        text = Text(f"FAIL {result.failed_check}", style="red")
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
        table.add_row(
            Text(shown(job.item)), *(_cell_text(row.get(tool)) for tool in comparison.tools)
        )
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
            line.append_text(Text(shown(result.item)))
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
        write_report(report, data)
    console.print(render_comparison(outcome.comparison))
    # Below the table, whole: a branch name is copied from here.
    for tool, branch in outcome.comparison.branches.items():
        console.print(f"{tool}: results on {branch}", markup=False)
    for note in outcome.notes:
        console.print(f"note: {shown(note)}", markup=False)
    return outcome.exit_code
