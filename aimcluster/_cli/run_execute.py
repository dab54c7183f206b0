"""``aimcluster run``, its later stages, from a checked :class:`Plan`: the comparison
(--compare), or the journal, the jobs still to do, the working places, the batch and its
execution; then the report and the summary.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Sequence
from typing import Any, NoReturn

import attrs
import click
from rich.console import Console

from aimcluster import Job, Pool, RestartPolicy

from .batch import Batch, BatchOutcome
from .common import (
    EXIT_OK,
    _execute,
    _fail,
    _logger,
    _plural,
    _read_contents,
    _run_id,
    _silence,
)
from .compare import CompareSetup, compare_command
from .isolation import Isolation, WorktreeOptions, isolate
from .items import InputError
from .journal import Journal, JournalContents, JournalInUseError
from .report import write_report
from .results import state_path_for
from .run_plan import DEFAULT_RUN_TIMEOUT, Plan, RunOptions
from .summary_render import render_summary
from .terminal import shown


@attrs.frozen(kw_only=True)
class Ran:
    """What the execution stage leaves for the last one."""

    run: str
    outcome: BatchOutcome
    #: Where the instances ran; its notes are complete once it is closed.
    place: Isolation
    #: Whether the run kept a journal (and so can be resumed).
    journaled: bool


def _open_journal(stack: contextlib.ExitStack, path: str, run_id: str) -> Journal:
    """Open (and lock) the journal for the run; report what a crash may have left in it."""
    try:
        journal = stack.enter_context(Journal(path, run=run_id))
    except JournalInUseError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot open the journal {path}: {exc.strerror or exc}")
    path = shown(path)
    contents = journal.contents
    if contents.bad_lines:
        lines = ", ".join(map(str, contents.bad_lines[:5]))
        click.echo(
            f"aimcluster: note: the journal {path} has lines that are not records "
            f"(line {lines}); they are ignored",
            err=True,
        )
    if contents.torn_bytes:
        click.echo(
            f"aimcluster: note: the last line of the journal {path} was torn by a crash "
            f"({contents.torn_bytes} bytes); it was cut off",
            err=True,
        )
    return journal


def _dry_run(console: Console, todo: Sequence[Job], done: Sequence[Job], limited: int) -> None:
    for job in todo:
        console.print(f"run   {shown(job.item)}", markup=False)
        for number, step in enumerate(job.steps, start=1):
            console.print(f"  step {number}: {shown(step)}", markup=False)
        if job.verify is not None:
            console.print(f"  verify: {shown(shlex.join(job.verify))}", markup=False)
    for job in done:
        console.print(f"skip  {shown(job.item)} (already done)", markup=False)
    console.print(
        f"Dry run: {_plural(len(todo), 'job')} would run, {len(done)} already done"
        + (f", {limited} held back by --limit" if limited else "")
        + "; nothing was started.",
        markup=False,
    )


def _write_report(path: str, outcome: BatchOutcome, extra: dict[str, Any]) -> None:
    data = {
        "summary": outcome.summary.as_dict(),
        "exit_code": outcome.exit_code,
        "metrics": None if outcome.metrics is None else outcome.metrics.as_dict(),
        **extra,
    }
    write_report(path, data)


def compare_run(ctx: click.Context, console: Console, options: RunOptions, plan: Plan) -> NoReturn:
    """--compare: every job once on each tool, side by side; exits with the comparison's code."""
    refused = {
        "--isolation dir": options.isolation == "dir",
        "--fallback": options.fallback is not None,
        "--failover-after": options.failover_after is not None,
        "--limit": options.limit is not None,
        "--dry-run": options.dry_run,
        "--fresh": options.fresh,
        "--max-cost": options.max_cost is not None,
        "--max-tokens": options.max_tokens is not None,
    }
    compared = CompareSetup(
        pools=[Pool(each, n) for each, n in plan.chosen],
        jobs=plan.jobs,
        root=plan.root,
        run=_run_id(),
        timeout=options.timeout,
        default_timeout=DEFAULT_RUN_TIMEOUT,
        retries=options.retries,
        grace=options.grace,
        # With several tools, each spec's failure replies already hold --fail-on.
        fail_on={
            each.name: each.failure_replies if plan.several else plan.patterns
            for each, _ in plan.chosen
        },
        restart=RestartPolicy(max_restarts=options.max_restarts, window=options.restart_window),
        result_branch=options.result_branch,
        keep=options.keep_worktrees,
        routing=options.routing or ("sticky" if options.sticky_by else "least_busy"),
    )
    try:
        code = compare_command(
            compared,
            console=console,
            backend=ctx.find_root().params.get("backend") or "asyncio",
            report=options.report,
            progress=options.progress != "none",
            logger=_logger(ctx.find_root().params.get("verbose", 0)),
            refused=refused,
        )
    except InputError as exc:
        _fail(str(exc))
    ctx.exit(code)


def execute_run(ctx: click.Context, console: Console, options: RunOptions, plan: Plan) -> Ran:
    """Open the journal, find the jobs still to do, and run them in their working places.

    Exits here (0) for --dry-run, and when nothing is left to do.
    """
    journal = options.journal
    fresh = options.fresh
    limit = options.limit
    jobs = plan.jobs
    fingerprints = plan.fingerprints
    run_id = _run_id()
    with contextlib.ExitStack() as stack:
        writer = None
        if options.no_journal:
            contents = JournalContents(records=(), torn_bytes=0, bad_lines=(), valid_size=0)
        elif options.dry_run:
            contents = _read_contents(journal)
        else:
            writer = _open_journal(stack, journal, run_id)
            contents = writer.contents
        if fresh:
            contents = JournalContents(records=(), torn_bytes=0, bad_lines=(), valid_size=0)
        done_jobs = contents.done_jobs
        todo = [job for job in jobs if (job.item, fingerprints[job.item]) not in done_jobs]
        done = [job for job in jobs if (job.item, fingerprints[job.item]) in done_jobs]
        held_back = 0
        if limit is not None and len(todo) > limit:
            held_back = len(todo) - limit
            todo = todo[:limit]
        if options.dry_run:
            _dry_run(console, todo, done, held_back)
            ctx.exit(EXIT_OK)
        skipped = len(done)
        # Done before by another job (other steps, tool or checks), and never run as this one.
        tried = {(record.get("item"), record.get("job")) for record in contents.records}
        redone = sum(
            1
            for job in todo
            if job.item in contents.done and (job.item, fingerprints[job.item]) not in tried
        )
        if redone:
            click.echo(
                f"aimcluster: note: {_plural(redone, 'item')} ran before with other steps "
                "or options: running them again",
                err=True,
            )
        if held_back:
            click.echo(
                f"aimcluster: note: --limit {limit}: {held_back} more to do wait for the next run",
                err=True,
            )
        # A worktree run killed after its last job and before landing left its state: the
        # run goes on, with no job, to build the result branch and clean up.
        unlanded = (
            options.isolation == "worktree"
            and writer is not None
            and not fresh
            and state_path_for(journal).exists()
        )
        if not todo and not unlanded:
            console.print(
                f"Nothing to do: all {len(jobs)} items are already done (journal {shown(journal)}; "
                "--fresh runs them again).",
                markup=False,
            )
            ctx.exit(EXIT_OK)
        # No tool gets more instances than there are jobs to run.
        chosen = [(each, max(1, min(n, len(todo)))) for each, n in plan.chosen]
        count = sum(n for _, n in chosen)
        title = (
            f"aimcluster run: {_plural(len(todo), 'job')}"
            + (f" ({skipped} already done)" if skipped else "")
            + ", "
            + " + ".join(f"{shown(each.name)} x {n}" for each, n in chosen)
            + ("" if writer is None else f", journal {shown(journal)}")
        )
        try:
            worktree = WorktreeOptions(
                jobs=jobs,
                done=[job.item for job in done],
                records=contents.records,
                state_path=None if writer is None else state_path_for(journal),
                result_branch=options.result_branch,
                keep=options.keep_worktrees,
                fresh=fresh,
                backend=ctx.find_root().params.get("backend") or "asyncio",
            )
            with isolate(
                options.isolation,
                plan.spec,
                root=plan.root,
                count=count,
                run=run_id,
                worktree=worktree,
            ) as place:
                console.print(title, markup=False, style="bold")
                batch = Batch(
                    spec=place.spec,
                    count=count,
                    # Instances are numbered across the pools, so the working places
                    # (instance-{instance}) are the same as for one tool of that many.
                    pools=[Pool(attrs.evolve(each, cwd=place.spec.cwd), n) for each, n in chosen]
                    if plan.several
                    else (),
                    fallback=plan.order,
                    failover_after=options.failover_after,
                    routing=options.routing or ("sticky" if options.sticky_by else "least_busy"),
                    jobs=todo,
                    total=len(todo) + skipped + held_back,
                    skipped=skipped,
                    held_back=held_back,
                    # With several tools, the longest of theirs: none is cut short.
                    timeout=options.timeout
                    or max(each.reply_timeout or DEFAULT_RUN_TIMEOUT for each, _ in chosen),
                    retries=options.retries,
                    grace=options.grace,
                    journal=writer,
                    fingerprints=fingerprints,
                    fail_on=None if plan.several else plan.patterns,
                    restart=RestartPolicy(
                        max_restarts=options.max_restarts, window=options.restart_window
                    ),
                    workspace=place.workspace,
                    max_cost=options.max_cost,
                    max_tokens=options.max_tokens,
                )
                outcome = _execute(ctx, console, batch, progress=options.progress)
        except InputError as exc:
            _fail(str(exc))
    return Ran(run=run_id, outcome=outcome, place=place, journaled=writer is not None)


def finish_run(console: Console, options: RunOptions, plan: Plan, ran: Ran) -> None:
    """Write the report, then print the summary and what the user should hear about."""
    outcome = ran.outcome
    # The report first: whatever happens to the terminal, the file is written.
    if options.report is not None:
        _write_report(options.report, outcome, {"run": ran.run})
    try:
        console.print(render_summary(outcome.summary))
        for note in ran.place.notes:
            console.print(f"note: {shown(note)}", markup=False)
        if ran.journaled and not outcome.summary.succeeded:
            console.print(
                "Run the same command again to resume: items done are skipped, the rest run.",
                markup=False,
            )
        if options.max_cost is not None and outcome.summary.usage.cost_usd is None:
            names = " or ".join(each.name for each, _ in plan.chosen)
            click.echo(
                f"aimcluster: note: --max-cost {options.max_cost:g} had no effect: no reply of "
                f"{shown(names)} reported a cost",
                err=True,
            )
    except OSError:
        # A closed terminal fails every write with EIO, not EPIPE (which rich handles): the
        # run is over and its record is on disk, so the exit code is still the run's own.
        _silence(console)
