"""The ``aimcluster`` command line: ``run``, ``demo``, ``tools`` and ``check``.

A thin layer over :func:`aimcluster.run_jobs`: it turns options into jobs, and results into a
journal, progress and a summary.

Exit codes: 0 every item succeeded (or was already done); 1 some item failed; 2 bad usage or
input (one line on stderr, never a traceback), found before any work starts where it can be (an
unwritable --report or journal, a missing executable); 3 the tool did not start; 4 the
--max-cost or --max-tokens budget was spent before every item was done; 128 + N
stopped by signal N, after a graceful stop with its summary (130 for Ctrl-C, 143 for SIGTERM,
129 for SIGHUP: a closed terminal).

Everything printed that comes from outside (item and file names, paths, tool names, tool
output, error messages) goes through :func:`shown`, and reaches rich as text, never as markup.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import anyio
import attrs
import click
import structlog
from rich.console import Console

from aimcluster import (
    ROUTINGS,
    AimclusterError,
    Job,
    LocalTransport,
    Pool,
    RestartPolicy,
    StartupError,
    ToolNotFoundError,
    ToolSpec,
    Usage,
    launch_cluster,
    redact_argv,
    tools,
)

from .batch import Batch, BatchOutcome, run_batch
from .compare import CompareSetup, compare_command
from .demo import (
    DEMO_STEPS,
    Verification,
    examples,
    make_project,
    unified_diff,
    verify_project,
)
from .isolation import ISOLATIONS, IsolationName, WorktreeOptions, isolate
from .items import (
    InputError,
    WorkItem,
    build_jobs,
    exclude,
    items_from_file,
    items_from_jsonl,
    items_from_paths,
)
from .journal import (
    Journal,
    JournalContents,
    JournalInUseError,
    JournalWriteError,
    fingerprint,
    read_journal,
)
from .progress import Display, LiveDisplay, NullDisplay, PlainDisplay, Tracker
from .report import last_lines, render_summary, seconds
from .results import state_path_for
from .terminal import shown
from .toolref import resolve_tool, split_count

__all__ = ["cli", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: The tool was found but did not start (it exited, or showed no ready prompt in time).
EXIT_NO_START = 3
#: --max-cost or --max-tokens was reached before every item was done (no new job started).
EXIT_BUDGET = 4

#: ``run``'s reply timeout when neither --timeout nor the tool's spec gives one: long enough
#: for an agent's slow edit, short enough that a stuck one does not hold the run for good.
DEFAULT_RUN_TIMEOUT = 600.0

#: Harmless prompts for ``aimcluster check``, by built-in tool name.
PROBES = {
    "mock": "/echo aimcluster-check",
    "python": "print('aimcluster-check')",
    "bash": "echo aimcluster-check",
}


class UserError(click.ClickException):
    """Bad usage or input: shown as one line on stderr, exit code 2."""

    exit_code = EXIT_USAGE


def _fail(message: str) -> NoReturn:
    raise UserError(message)


class _Group(click.Group):
    """Reports every usage error as one line on stderr, and exits with the command's code."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            message = exc.format_message()
            if isinstance(exc, click.UsageError) and not isinstance(exc, UserError):
                command = exc.ctx.command_path if exc.ctx is not None else "aimcluster"
                message += f" (see '{command} --help')"
            click.echo(f"aimcluster: error: {shown(message)}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("aimcluster: interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else EXIT_OK)


class _Console(Console):
    """A console that outlives its reader."""

    def on_broken_pipe(self) -> None:
        # The reader is gone (a closed terminal, a pipe into 'head'). rich would exit at once,
        # from inside the event loop: instead the run goes on without output, and stops as
        # the signal that usually comes with it asks; the journal and --report keep the record.
        _silence(self)


def _silence(console: Console) -> None:
    """Print nothing more: *console*'s reader is gone. Standard output goes to /dev/null, so
    that the interpreter's last flush of it at exit cannot fail either."""
    console.quiet = True
    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(OSError, ValueError):
        os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _console() -> Console:
    # Lines are never folded at the terminal's width: paths and command lines must stay
    # copyable as they are. No markup and no :emoji: codes by default: a string printed is
    # printed as it is (the live display's stderr redirect prints log lines through here too).
    return _Console(highlight=False, soft_wrap=True, markup=False, emoji=False)


class _StderrLogger:
    """structlog's output: one line per event on whatever ``sys.stderr`` is at the time (the
    live display swaps it to print above itself)."""

    def msg(self, message: str) -> None:
        # Events carry tool output and item names: made inert here, for every event at once.
        # A log line nobody can read any more (a closed terminal, a reader that exited) is
        # lost; it must not stop the run it describes.
        with contextlib.suppress(OSError):
            print(shown(message, block=True), file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _logger(verbose: int) -> structlog.typing.FilteringBoundLogger:
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logger: structlog.typing.FilteringBoundLogger = structlog.wrap_logger(
        _StderrLogger(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
    )
    return logger


def _run_async(ctx: click.Context, function: Callable[[], Any]) -> Any:
    backend = ctx.find_root().params.get("backend") or "asyncio"
    return anyio.run(function, backend=backend)


#: run's and demo's --progress, which _display interprets.
_progress_option = click.option(
    "--progress",
    type=click.Choice(["auto", "live", "plain", "none"]),
    default="auto",
    show_default=True,
    help="auto: live on a terminal, status lines otherwise.",
)


def _display(mode: str, console: Console, tracker: Tracker) -> Display:
    if mode == "auto":
        mode = "live" if console.is_terminal else "plain"
    if mode == "live":
        return LiveDisplay(tracker, console)
    if mode == "plain":
        return PlainDisplay(tracker, console)
    return NullDisplay()


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _run_id() -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{now}-{secrets.token_hex(2)}"


def _check_executable(spec: ToolSpec) -> None:
    try:
        LocalTransport().check(spec)
    except ToolNotFoundError as exc:
        _fail(str(exc))


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


def _startup_failure(exc: StartupError, code: int = EXIT_NO_START) -> NoReturn:
    head, _, output = str(exc).partition("\n")
    click.echo(f"aimcluster: error: {shown(head)}", err=True)
    if output:
        click.echo(shown(output, block=True), err=True)
    sys.exit(code)


def _check_report(path: str) -> None:
    """Fail now, not after the run, if the report cannot be written at *path*."""
    target = Path(path)
    existed = target.exists()
    try:
        with open(target, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        _fail(f"cannot write the report {path}: {exc.strerror or exc}")
    if not existed:
        target.unlink(missing_ok=True)


def _verify_argv(command: str | None) -> tuple[str, ...] | None:
    if command is None:
        return None
    try:
        argv = tuple(shlex.split(command))
    except ValueError as exc:
        _fail(f"--verify {command!r}: {exc}")
    if not argv:
        _fail("--verify needs a command")
    program = argv[0]
    if "/" not in program and "{" not in program and shutil.which(program) is None:
        _fail(f"--verify: {program!r} was not found on PATH")
    return argv


def _read_contents(path: str) -> JournalContents:
    try:
        return read_journal(path)
    except OSError as exc:
        _fail(f"cannot read the journal {path}: {exc.strerror or exc}")


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


# -- the group --------------------------------------------------------------------------------


@click.group(
    name="aimcluster", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(package_name="aimcluster", prog_name="aimcluster")
@click.option("-v", "--verbose", count=True, help="Log instance events to stderr (-vv: debug).")
@click.option(
    "--backend",
    type=click.Choice(["asyncio", "trio"]),
    default="asyncio",
    envvar="AIMCLUSTER_BACKEND",
    hidden=True,
)
def cli(verbose: int, backend: str) -> None:
    """Run a fleet of interactive CLI tools (AI coding agents, REPLs) as one cluster."""


# -- run --------------------------------------------------------------------------------------


def _collect_items(
    patterns: Sequence[str],
    items_file: str | None,
    jsonl: str | None,
    item_field: str,
    *,
    root: Path,
    absolute_paths: bool,
) -> list[WorkItem]:
    if not patterns and items_file is None and jsonl is None:
        _fail("no items given: name files or globs, or pass --items-file or --jsonl")
    items: list[WorkItem] = []
    if patterns:
        items += items_from_paths(patterns, root=root, absolute_paths=absolute_paths)
    if items_file is not None:
        items += items_from_file(items_file)
    if jsonl is not None:
        items += items_from_jsonl(jsonl, item_field=item_field)
    if not items:
        sources = [repr(p) for p in patterns]
        sources += [f"--items-file {items_file}"] * (items_file is not None)
        sources += [f"--jsonl {jsonl}"] * (jsonl is not None)
        _fail(f"no items matched {', '.join(sources)} (relative to {root})")
    return items


def _resolve_pools(values: Sequence[str], count: int) -> list[tuple[ToolSpec, int]]:
    """Each ``--tool`` value's spec and instance count (*count* where it gives none).

    :raises InputError: for a bad count, an unknown tool, or a tool named twice
    """
    chosen: list[tuple[ToolSpec, int]] = []
    given: dict[str, str] = {}
    for value in values:
        reference, n = split_count(value, count)
        spec = resolve_tool(reference)
        if spec.name in given:
            raise InputError(
                f"--tool {value!r}: the tool {spec.name!r} is already given (--tool "
                f"{given[spec.name]!r}); give each tool once, with its count ('{spec.name}=N'), "
                "or a spec file with a name of its own"
            )
        if len(values) > 1:
            try:
                Pool(spec, n)
            except ValueError as exc:
                raise InputError(f"--tool {value!r}: {exc}") from None
        given[spec.name] = value
        chosen.append((spec, n))
    return chosen


def _failover_order(
    value: str | None, names: Sequence[str], failover_after: float | None
) -> tuple[str, ...]:
    """The failover order --fallback gives (default with several tools: the --tool order).

    :raises InputError: for a tool that is not one of *names*, or options that need several
    """
    if len(names) == 1:
        if value is not None or failover_after is not None:
            option = "--fallback" if value is not None else "--failover-after"
            raise InputError(f"{option} needs several tools (--tool a=N --tool b=M)")
        return ()
    if value is None:
        return tuple(names)
    if value.strip().lower() == "none":
        if failover_after is not None:
            raise InputError("--failover-after needs a failover order, and --fallback is none")
        return ()
    order = tuple(name.strip() for name in value.split(","))
    for name in order:
        if name not in names:
            raise InputError(
                f"--fallback {value!r}: {name!r} is none of the tools; they are: {', '.join(names)}"
            )
    twice = next((name for name in order if order.count(name) > 1), None)
    if twice is not None:
        raise InputError(f"--fallback {value!r} names {twice!r} twice")
    return order


def _execute(
    ctx: click.Context,
    console: Console,
    batch: Batch,
    *,
    progress: str,
) -> BatchOutcome:
    tracker = Tracker(total=len(batch.jobs))
    display = _display(progress, console, tracker)
    logger = _logger(ctx.find_root().params.get("verbose", 0))
    try:
        outcome: BatchOutcome = _run_async(
            ctx,
            functools.partial(run_batch, batch, tracker=tracker, display=display, logger=logger),
        )
    except ToolNotFoundError as exc:
        _fail(str(exc))
    except StartupError as exc:
        _startup_failure(exc)
    except JournalWriteError as exc:
        click.echo(f"aimcluster: error: {shown(str(exc))}", err=True)
        sys.exit(EXIT_FAILED)
    except OSError as exc:
        # What the system refused about a file (a spawn, a directory or worktree to make) is
        # the run's failure, said in one line; any other OSError is a bug, and shows as one.
        if exc.filename is None:
            raise
        click.echo(f"aimcluster: error: {shown(str(exc))}", err=True)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        click.echo("aimcluster: interrupted", err=True)
        sys.exit(130)
    return outcome


def _write_report(path: str, outcome: BatchOutcome, extra: dict[str, Any]) -> None:
    data = {
        "summary": outcome.summary.as_dict(),
        "exit_code": outcome.exit_code,
        "metrics": None if outcome.metrics is None else outcome.metrics.as_dict(),
        **extra,
    }
    try:
        Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        click.echo(
            f"aimcluster: error: cannot write the report {shown(path)}: {shown(str(exc))}",
            err=True,
        )


@cli.command(
    epilog="Exit codes: 0 all items done, 1 some failed, 2 bad usage or input (checked "
    "before any work starts), 3 the tool did not start, 4 the --max-cost or --max-tokens "
    "budget was spent before every item was done, 130 stopped by Ctrl-C (143 by SIGTERM, "
    "129 by SIGHUP)."
)
@click.argument("paths", nargs=-1, metavar="[FILE|GLOB]...")
@click.option(
    "--items-from-glob",
    "globs",
    multiple=True,
    metavar="GLOB",
    help="Files matching GLOB ('**' recurses), relative to --cwd. Repeatable.",
)
@click.option(
    "--items-file",
    metavar="FILE",
    help="One item per line ('-': stdin); blank lines and '#' comments skipped.",
)
@click.option(
    "--jsonl", metavar="FILE", help="One JSON object per line; its fields are {placeholders}."
)
@click.option(
    "--item-field",
    default="item",
    show_default=True,
    metavar="FIELD",
    help="The JSONL field that names each item.",
)
@click.option(
    "-s",
    "--step",
    "steps",
    multiple=True,
    metavar="PROMPT",
    help="A prompt of the job script, with {item}/{field} placeholders. Repeatable.",
)
@click.option(
    "-t",
    "--tool",
    "tool_options",
    required=True,
    multiple=True,
    metavar="TOOL[=COUNT]",
    help=f"A built-in tool ({', '.join(tools.names())}), optionally with extra "
    "arguments ('mock --delay 0.1'), or a .toml/.json ToolSpec file; '=COUNT' runs COUNT "
    "instances of it. Repeat for a cluster of several tools: any job runs on any of them.",
)
@click.option(
    "-n",
    "--count",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Instances of each --tool given without '=COUNT' (never more than there are jobs).",
)
@click.option(
    "--fallback",
    metavar="TOOL,TOOL,...",
    help="With several --tool: the failover order. A job whose tool is rate-limited, has "
    "failed, or (--failover-after) keeps it waiting moves to the next tool of the order; "
    "'none': jobs never move [default: the --tool order].",
)
@click.option(
    "--failover-after",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="With several --tool: a job that waited this long for its tool moves to the next "
    "one of --fallback.",
)
@click.option(
    "--routing",
    type=click.Choice(ROUTINGS),
    default=None,
    help="How jobs pick instances [default: sticky with --sticky-by, else least_busy].",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="How long each step's reply (and --verify) may take; an instance "
    "that overruns is restarted and the job fails (or is retried) "
    f"[default: the tool's reply_timeout, else {DEFAULT_RUN_TIMEOUT:g}].",
)
@click.option(
    "--fail-on",
    "fail_on",
    multiple=True,
    metavar="REGEX",
    help="A step whose reply matches REGEX (searched, Python syntax) fails its item. "
    "Repeatable; adds to the tool's own failure replies.",
)
@click.option(
    "--no-default-fail-on",
    is_flag=True,
    help="Do not treat the tool's own failure replies (aider's \"Can't edit\"...) as failures.",
)
@click.option(
    "--verify",
    metavar="CMD",
    help="After each job, run CMD (split like a shell would, run without one; write "
    "'sh -c ...' for one) in the job's working directory, with the same {placeholders}: "
    "a non-zero exit fails the item.",
)
@click.option(
    "--exclude",
    "excludes",
    multiple=True,
    metavar="GLOB",
    help="Leave out items matching GLOB ('**' spans directories; without a '/' it also "
    "matches the file name at any depth). Repeatable.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Run at most N jobs (of those not done yet); the rest wait for the next run.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Show the jobs that would run, with their steps, and those skipped as done; "
    "start nothing.",
)
@click.option(
    "--max-restarts",
    type=click.IntRange(min=0),
    default=RestartPolicy().max_restarts,
    show_default=True,
    help="Restarts an instance may have within --restart-window before it is given up.",
)
@click.option(
    "--restart-window",
    type=click.FloatRange(min=0, min_open=True),
    default=RestartPolicy().window,
    show_default=True,
    metavar="SECONDS",
    help="The window --max-restarts counts in.",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Run a failed job again, from its first step, up to this many times.",
)
@click.option(
    "--max-cost",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="USD",
    help="Start no new job once the replies have cost USD dollars, as the tool reports "
    "(claude, aider; codex and gemini report no cost); jobs in flight finish. Exit code 4 "
    "if items are left.",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Start no new job once the replies have used N tokens (input plus output), as "
    "the tool reports. Exit code 4 if items are left.",
)
@click.option(
    "--sticky-by",
    metavar="FIELD",
    help="Jobs with the same FIELD value run one after another, on one instance.",
)
@click.option(
    "--isolation",
    type=click.Choice(ISOLATIONS),
    default="none",
    show_default=True,
    help="none: all instances in --cwd. dir: each instance runs in a directory of its own "
    "(for the tool's files), path items are absolute, and all edit the one tree. worktree: "
    "each instance in a git worktree of its own; each item's change is committed, and all "
    "land on one result branch.",
)
@click.option(
    "--result-branch",
    metavar="NAME",
    help="With --isolation worktree: the branch that gets every item's commit, in item "
    "order [default: aimcluster/run-<run id>].",
)
@click.option(
    "--keep-worktrees",
    is_flag=True,
    help="With --isolation worktree: keep the worktrees (under .git/aimcluster/) and the "
    "instance branches.",
)
@click.option(
    "--compare",
    is_flag=True,
    help="Run every job once on each --tool, each tool in git worktrees of its own with its "
    "results on a branch of its own (aimcluster/run-<run id>-<tool>), and show the results "
    "side by side: passed or which check failed, time, attempts, cost. Keeps no journal. "
    "Exit code 0 if every job passed on every tool.",
)
@click.option(
    "--journal",
    default="aimcluster-journal.jsonl",
    show_default=True,
    metavar="PATH",
    help="Append each finished job here; the next run skips the items done there by the "
    "same job (same steps, tool and checks).",
)
@click.option("--no-journal", is_flag=True, help="Keep no journal (and resume nothing).")
@click.option("--fresh", is_flag=True, help="Run every item, whatever the journal says.")
@click.option("--report", metavar="PATH", help="Write the summary as JSON to PATH.")
@click.option(
    "--cwd",
    type=click.Path(exists=True, file_okay=False),
    default=".",
    show_default=True,
    help="Where the tool runs and item paths are resolved.",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="On Ctrl-C (or SIGTERM, SIGHUP), how long jobs in flight may take to finish.",
)
@_progress_option
@click.pass_context
def run(
    ctx: click.Context,
    paths: tuple[str, ...],
    globs: tuple[str, ...],
    items_file: str | None,
    jsonl: str | None,
    item_field: str,
    steps: tuple[str, ...],
    tool_options: tuple[str, ...],
    count: int,
    routing: str | None,
    timeout: float | None,
    retries: int,
    sticky_by: str | None,
    isolation: IsolationName,
    journal: str,
    no_journal: bool,
    fresh: bool,
    report: str | None,
    cwd: str,
    grace: float,
    progress: str,
    fail_on: tuple[str, ...],
    no_default_fail_on: bool,
    verify: str | None,
    excludes: tuple[str, ...],
    limit: int | None,
    dry_run: bool,
    max_restarts: int,
    restart_window: float,
    result_branch: str | None = None,
    keep_worktrees: bool = False,
    max_cost: float | None = None,
    max_tokens: int | None = None,
    fallback: str | None = None,
    failover_after: float | None = None,
    compare: bool = False,
) -> int:
    """Run a job script (the --step prompts) for every item, on a cluster of TOOL.

    Items are files (paths or globs), lines of --items-file, or objects of --jsonl. Each job
    holds one instance while its steps run, so '/add {item}', then an instruction, then
    '/drop {item}' reach the same agent. Jobs on the same item (or --sticky-by value) never
    overlap and run in order; the rest run in parallel.

    An item is done when its job got a reply to every step, no reply reports a failure (the
    tool's own failure replies and --fail-on), and --verify exits 0. The journal keeps each
    job's transcript ('aimcluster show ITEM'); a new run skips the items done by the same job
    (same steps, tool and checks) and runs the rest.

    Several --tool options make one cluster of several tools ('--tool aider=4 --tool
    claude=2'): each job runs, whole, on one instance of any of them, and moves to the next
    tool of --fallback when its own is rate-limited or has failed (never run twice). The
    summary, --report and the journal say which tool ran each job and which jobs moved.

    \b
    Example:
      aimcluster run --tool mock 'pkg/**/*.py' \\
        --step '/add {item}' --step 'Add a DOC_ID header to {item}' --step '/drop {item}'
    """
    console = _console()
    verify_argv = _verify_argv(verify)
    if isolation != "worktree" and (result_branch is not None or keep_worktrees):
        _fail("--result-branch and --keep-worktrees need --isolation worktree")
    try:
        chosen = _resolve_pools(tool_options, count)
        order = _failover_order(fallback, [each.name for each, _ in chosen], failover_after)
        spec = chosen[0][0]
        root = Path(cwd).resolve()
        items = _collect_items(
            [*paths, *globs],
            items_file,
            jsonl,
            item_field,
            root=root,
            absolute_paths=isolation == "dir",
        )
        items, excluded = exclude(items, excludes)
        if not items:
            _fail(f"every one of the {excluded} items matched --exclude")
        jobs, duplicates = build_jobs(items, steps, sticky_by=sticky_by, verify=verify_argv)
    except InputError as exc:
        _fail(str(exc))
    several = len(chosen) > 1
    for each, _ in chosen:
        if max_tokens is not None and each.usage is None:
            _fail(
                f"--max-tokens needs a tool that reports the tokens it used; {each.name} does not"
            )
    patterns = (*fail_on, *(() if no_default_fail_on else spec.failure_replies))
    for pattern in fail_on:
        try:
            re.compile(pattern)
        except re.error as exc:
            _fail(f"--fail-on {pattern!r} is not a valid regex: {exc}")
    # What makes two jobs on an item the same job, besides its rendered steps and verify.
    setup: dict[str, Any] = {
        "tool": list(spec.argv),
        "fail_on": list(patterns),
        "isolation": isolation,
    }
    if several:
        # Each tool's own failure replies apply to its replies alone: --fail-on joins them in
        # each pool's spec, and run_jobs asks the pool of each reply.
        chosen = [
            (
                attrs.evolve(
                    each,
                    failure_replies=(
                        *fail_on,
                        *(() if no_default_fail_on else each.failure_replies),
                    ),
                ),
                n,
            )
            for each, n in chosen
        ]
        # A job may run on any of the tools: all of them make it what it is.
        setup = {
            "tools": {each.name: list(each.argv) for each, _ in chosen},
            "fail_on": {each.name: list(each.failure_replies) for each, _ in chosen},
            "isolation": isolation,
        }
    fingerprints = {job.item: fingerprint(job, setup) for job in jobs}
    if not dry_run:
        for each, _ in chosen:
            _check_executable(each)
        if report is not None:
            _check_report(report)
    if duplicates:
        click.echo(f"aimcluster: note: {duplicates} duplicate item(s) ignored", err=True)
    if compare:
        refused = {
            "--isolation dir": isolation == "dir",
            "--fallback": fallback is not None,
            "--failover-after": failover_after is not None,
            "--limit": limit is not None,
            "--dry-run": dry_run,
            "--fresh": fresh,
            "--max-cost": max_cost is not None,
            "--max-tokens": max_tokens is not None,
        }
        compared = CompareSetup(
            pools=[Pool(each, n) for each, n in chosen],
            jobs=jobs,
            root=root,
            run=_run_id(),
            timeout=timeout,
            default_timeout=DEFAULT_RUN_TIMEOUT,
            retries=retries,
            grace=grace,
            # With several tools, each spec's failure replies already hold --fail-on.
            fail_on={
                each.name: each.failure_replies if several else patterns for each, _ in chosen
            },
            restart=RestartPolicy(max_restarts=max_restarts, window=restart_window),
            result_branch=result_branch,
            keep=keep_worktrees,
            routing=routing or ("sticky" if sticky_by else "least_busy"),
        )
        try:
            code = compare_command(
                compared,
                console=console,
                backend=ctx.find_root().params.get("backend") or "asyncio",
                report=report,
                progress=progress != "none",
                logger=_logger(ctx.find_root().params.get("verbose", 0)),
                refused=refused,
            )
        except InputError as exc:
            _fail(str(exc))
        ctx.exit(code)
    run_id = _run_id()
    with contextlib.ExitStack() as stack:
        writer = None
        if no_journal:
            contents = JournalContents(records=(), torn_bytes=0, bad_lines=(), valid_size=0)
        elif dry_run:
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
        if dry_run:
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
            isolation == "worktree"
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
        chosen = [(each, max(1, min(n, len(todo)))) for each, n in chosen]
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
                result_branch=result_branch,
                keep=keep_worktrees,
                fresh=fresh,
                backend=ctx.find_root().params.get("backend") or "asyncio",
            )
            with isolate(
                isolation, spec, root=root, count=count, run=run_id, worktree=worktree
            ) as place:
                console.print(title, markup=False, style="bold")
                batch = Batch(
                    spec=place.spec,
                    count=count,
                    # Instances are numbered across the pools, so the working places
                    # (instance-{instance}) are the same as for one tool of that many.
                    pools=[Pool(attrs.evolve(each, cwd=place.spec.cwd), n) for each, n in chosen]
                    if several
                    else (),
                    fallback=order,
                    failover_after=failover_after,
                    routing=routing or ("sticky" if sticky_by else "least_busy"),
                    jobs=todo,
                    total=len(todo) + skipped + held_back,
                    skipped=skipped,
                    held_back=held_back,
                    # With several tools, the longest of theirs: none is cut short.
                    timeout=timeout
                    or max(each.reply_timeout or DEFAULT_RUN_TIMEOUT for each, _ in chosen),
                    retries=retries,
                    grace=grace,
                    journal=writer,
                    fingerprints=fingerprints,
                    fail_on=None if several else patterns,
                    restart=RestartPolicy(max_restarts=max_restarts, window=restart_window),
                    workspace=place.workspace,
                    max_cost=max_cost,
                    max_tokens=max_tokens,
                )
                outcome = _execute(ctx, console, batch, progress=progress)
        except InputError as exc:
            _fail(str(exc))
    # The report first: whatever happens to the terminal, the file is written.
    if report is not None:
        _write_report(report, outcome, {"run": run_id})
    try:
        console.print(render_summary(outcome.summary))
        for note in place.notes:
            console.print(f"note: {shown(note)}", markup=False)
        if writer is not None and not outcome.summary.succeeded:
            console.print(
                "Run the same command again to resume: items done are skipped, the rest run.",
                markup=False,
            )
        if max_cost is not None and outcome.summary.usage.cost_usd is None:
            names = " or ".join(each.name for each, _ in chosen)
            click.echo(
                f"aimcluster: note: --max-cost {max_cost:g} had no effect: no reply of "
                f"{shown(names)} reported a cost",
                err=True,
            )
    except OSError:
        # A closed terminal fails every write with EIO, not EPIPE (which rich handles): the
        # run is over and its record is on disk, so the exit code is still the run's own.
        _silence(console)
    ctx.exit(outcome.exit_code)


# -- show -------------------------------------------------------------------------------------


def _reason(record: dict[str, Any]) -> str:
    error = record.get("error") or {}
    message = str(error.get("message") or "").split("\n", 1)[0]
    return f"{error.get('type') or record.get('status')}: {message}"


def _indented(console: Console, text: str) -> None:
    for line in shown(text, block=True).split("\n"):
        console.print(f"    {line}", markup=False)


def _show_record(console: Console, record: dict[str, Any], earlier: int) -> None:
    def row(label: str, value: object) -> None:
        console.print(f"{label:<9}{shown(str(value))}", markup=False)

    row("item", record.get("item"))
    row("status", f"{record.get('status')} (attempts: {record.get('attempts')})")
    row("run", f"{record.get('run')}, job {record.get('job') or '- (no fingerprint)'}")
    row("instance", f"{record.get('instance')}, in {record.get('cwd') or '-'}")
    if record.get("tool") is not None:
        moved = record.get("failovers") or []
        row("tool", record["tool"] + (f" (moved from {', '.join(moved)})" if moved else ""))
    row("time", f"{record.get('started_at')} to {record.get('ended_at')}")
    if record.get("error"):
        row("error", _reason(record))
    usage = Usage.from_dict(record.get("usage"))
    if usage is not None and usage.known:
        row("usage", usage.describe())
    steps = record.get("steps") or []
    replies = record.get("replies") or []
    timings = record.get("timings") or []
    for number, step in enumerate(steps, start=1):
        took = f" ({seconds(timings[number - 1])})" if number <= len(timings) else ""
        console.print(f"step {number}{took}: {shown(str(step))}", markup=False)
        if number <= len(replies):
            _indented(console, str(replies[number - 1]))
        else:
            console.print("    (no reply)", markup=False)
    verify = record.get("verify")
    if isinstance(verify, dict):
        command = shlex.join(str(arg) for arg in verify.get("argv") or [])
        console.print(
            f"verify: {shown(command)} -> exit code {verify.get('exit_code')}", markup=False
        )
        if verify.get("output"):
            _indented(console, str(verify["output"]))
    if record.get("output") and (record.get("error") or {}).get("type") not in (
        "ReplyFailedError",
        "VerifyFailedError",
    ):
        console.print("the tool's last output:", markup=False)
        _indented(console, str(record["output"]))
    if earlier:
        console.print(f"({_plural(earlier, 'earlier record')} for this item)", markup=False)


@cli.command(epilog="Exit codes: 0 shown, 2 no such journal or item.")
@click.argument("item", required=False)
@click.option(
    "--journal",
    default="aimcluster-journal.jsonl",
    show_default=True,
    metavar="PATH",
    help="The journal to read.",
)
@click.option("--failed", is_flag=True, help="List the items whose last job did not succeed.")
def show(item: str | None, journal: str, failed: bool) -> int:
    """Print ITEM's last transcript from the journal: each prompt, its reply and timing,
    the instance and working directory, and for a failure the error and the tool's last
    output. --failed lists the failed items with the reason."""
    console = _console()
    if item is None and not failed:
        _fail("name an ITEM to show, or pass --failed")
    if not Path(journal).exists():
        _fail(f"no journal at {journal} (pass --journal PATH)")
    contents = _read_contents(journal)
    if failed:
        latest = [record for record in contents.latest() if record.get("status") != "ok"]
        for record in latest:
            console.print(
                f"{shown(str(record.get('item')))}  {shown(_reason(record))}", markup=False
            )
            output = record.get("output") or (record.get("verify") or {}).get("output")
            last = last_lines(str(output), 1) if output else None
            if last:
                console.print(f"    | {shown(last)}", markup=False)
        console.print(
            f"{_plural(len(latest), 'item')} failed in {shown(journal)}"
            + (" ('aimcluster show ITEM' prints one)" if latest else ""),
            markup=False,
        )
        return EXIT_OK
    assert item is not None
    records = [record for record in contents.records if record.get("item") == item]
    if not records:
        _fail(f"the journal {journal} has no record of {item!r}")
    _show_record(console, records[-1], len(records) - 1)
    return EXIT_OK


# -- demo -------------------------------------------------------------------------------------


@cli.command(epilog="Exit codes: 0 every file verified, 1 otherwise, 130 stopped by Ctrl-C.")
@click.option(
    "-n",
    "--count",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Mock agents to run.",
)
@click.option(
    "--delay",
    type=click.FloatRange(min=0),
    default=0.02,
    show_default=True,
    metavar="SECONDS",
    help="The mock agent's thinking time per instruction.",
)
@click.option(
    "--files",
    type=click.IntRange(min=1),
    default=218,
    show_default=True,
    help="Files in the generated project.",
)
@click.option("--keep", is_flag=True, help="Keep the project directory and print its path.")
@_progress_option
@click.pass_context
def demo(
    ctx: click.Context, count: int, delay: float, files: int, keep: bool, progress: str
) -> int:
    """Roll out DOC_ID headers over a generated project with the mock agent, and verify.

    Creates a temporary project of --files modules, runs '/add FILE', 'Add a DOC_ID header to
    FILE', '/drop FILE' for each on --count mock agents, then checks that every file got
    exactly '# DOC_ID: <first 12 hex digits of sha256(path)>' and nothing else changed.
    """
    console = _console()
    root = Path(tempfile.mkdtemp(prefix="aimcluster-demo-"))
    with contextlib.ExitStack() as stack:
        if not keep:
            stack.callback(shutil.rmtree, root, ignore_errors=True)
        originals = make_project(root, files)
        jobs, _ = build_jobs(items_from_paths(["pkg/*.py"], root=root), DEMO_STEPS)
        count = min(count, len(jobs))
        console.print(
            f"aimcluster demo: DOC_ID headers for {files} files in {shown(str(root))}/pkg, "
            f"mock x {count} (--delay {delay:g} s)",
            markup=False,
            style="bold",
        )
        journal = stack.enter_context(Journal(root / "aimcluster-journal.jsonl", run=_run_id()))
        batch = Batch(
            spec=tools.mock(delay=delay, cwd=root),
            count=count,
            routing="least_busy",
            jobs=jobs,
            total=len(jobs),
            skipped=0,
            timeout=30.0,
            retries=0,
            grace=10.0,
            journal=journal,
        )
        outcome = _execute(ctx, console, batch, progress=progress)
        console.print(render_summary(outcome.summary))
        verification = verify_project(root, originals)
        _show_changes(console, root, originals, verification)
        if keep:
            console.print(f"Kept the project (and its journal) in {shown(str(root))}", markup=False)
        else:
            console.print("Removed the project and its journal (--keep keeps them).")
        if outcome.exit_code > 128:
            ctx.exit(outcome.exit_code)
        ctx.exit(EXIT_OK if verification.ok and outcome.exit_code == 0 else EXIT_FAILED)


def _show_changes(
    console: Console, root: Path, originals: dict[str, bytes], verification: Verification
) -> None:
    console.print()
    console.print("What changed (a plain module, a script, a file with CRLF line endings):")
    for relative in examples(originals):
        diff = unified_diff(relative, originals[relative], (root / relative).read_bytes())
        if console.is_terminal:
            from rich.syntax import Syntax  # pygments: imported only when it is used

            console.print(Syntax(diff.rstrip("\n"), "diff", theme="ansi_dark"))
        else:
            console.print(diff.rstrip("\n"), markup=False)
    changed = inserted = deleted = 0
    for relative, before in originals.items():
        after = (root / relative).read_bytes()
        if after != before:
            changed += 1
            lines = unified_diff(relative, before, after, context=0).splitlines()[2:]
            inserted += sum(1 for line in lines if line.startswith("+"))
            deleted += sum(1 for line in lines if line.startswith("-"))
    console.print(
        f"{changed} files changed, {inserted} insertions(+), {deleted} deletions(-)", markup=False
    )
    for relative, reason in verification.wrong[:10]:
        console.print(f"  wrong: {relative}: {reason}", markup=False, style="red")
    for relative in verification.unexpected[:10]:
        console.print(f"  unexpected file: {relative}", markup=False, style="red")
    total = len(originals)
    if verification.ok:
        console.print(
            f"Verified {total}/{total} files: each has exactly its expected DOC_ID header "
            "and is otherwise unchanged.",
            style="bold green",
            markup=False,
        )
    else:
        console.print(
            f"Verification FAILED: {len(verification.correct)} of {total} files are right.",
            style="bold red",
            markup=False,
        )


# -- tools ------------------------------------------------------------------------------------


@cli.command(name="tools")
def list_tools() -> int:
    """List the built-in tool profiles and their exact command lines."""
    console = _console()
    rows = [("tool", "io", "ready prompt", "command line")]
    for name in tools.names():
        spec = tools.get(name)
        ready = "-" if spec.ready is None else repr(spec.ready)
        rows.append(
            (name, "pty" if spec.pty else "pipes", ready, shown(shlex.join(redact_argv(spec.argv))))
        )
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for number, row in enumerate(rows):
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        line += "  " + row[3]
        console.print(line, markup=False, style="bold" if number == 0 else "")
    return EXIT_OK


# -- check ------------------------------------------------------------------------------------


@cli.command(epilog="Exit codes: 0 healthy, 1 it did not start or answer, 2 unknown tool.")
@click.argument("tool")
@click.option(
    "--probe",
    metavar="TEXT",
    help="The prompt to send [default: a harmless echo for built-in tools].",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="How long the probe's reply may take.",
)
@click.option(
    "--cwd",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Where to start the tool.",
)
@click.pass_context
def check(ctx: click.Context, tool: str, probe: str | None, timeout: float, cwd: str | None) -> int:
    """Start one instance of TOOL, time its start-up, send it a probe, and stop it."""
    console = _console()
    try:
        spec = resolve_tool(tool)
    except InputError as exc:
        _fail(str(exc))
    if cwd is not None:
        spec = _with_cwd(spec, cwd)
    _check_executable(spec)
    expect = None
    if probe is not None:
        prompt: str | None = probe
    elif spec.probe is not None:
        prompt, expect = spec.probe.command, spec.probe.expect
    else:
        prompt = PROBES.get(spec.name)
    console.print(f"tool     {shown(spec.name)}", markup=False)
    console.print(f"command  {shown(shlex.join(redact_argv(spec.argv)))}", markup=False)
    logger = _logger(ctx.find_root().params.get("verbose", 0))

    async def probe_tool() -> tuple[float, int | None, str | None, float | None, float]:
        begin = anyio.current_time()
        async with launch_cluster(spec, 1, restart=False, logger=logger) as cluster:
            ready = anyio.current_time() - begin
            pid = cluster.pids[0]
            reply_text = None
            reply_time = None
            if prompt is not None:
                reply = await cluster.send(prompt, timeout=timeout)
                reply_text, reply_time = reply.text, reply.elapsed
            stopping = anyio.current_time()
        return ready, pid, reply_text, reply_time, anyio.current_time() - stopping

    try:
        ready, pid, text, elapsed, stopped = _run_async(ctx, probe_tool)
    except StartupError as exc:
        console.print("started  FAILED", markup=False, style="bold red")
        _startup_failure(exc, EXIT_FAILED)
    except AimclusterError as exc:
        console.print(
            f"probe    FAILED: {type(exc).__name__}: {shown(str(exc))}",
            markup=False,
            style="bold red",
        )
        ctx.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        click.echo("aimcluster: interrupted", err=True)
        ctx.exit(130)
    console.print(f"started  ready in {seconds(ready)} (pid {pid or '-'})", markup=False)
    if prompt is None:
        console.print("probe    none (pass --probe TEXT to send one)", markup=False)
    else:
        excerpt = text if text is not None and len(text) <= 200 else f"{(text or '')[:200]}..."
        # repr escapes what a terminal would act on; shown() keeps the rule in one place.
        console.print(
            shown(f"probe    {prompt!r} -> {excerpt!r} in {seconds(elapsed)}"), markup=False
        )
        if expect is not None and re.search(expect, text or "") is None:
            console.print(
                shown(f"probe    FAILED: the reply does not match the spec's expect {expect!r}"),
                markup=False,
                style="bold red",
            )
            ctx.exit(EXIT_FAILED)
    console.print(f"stopped  in {seconds(stopped)}", markup=False)
    console.print("OK", style="bold green")
    return EXIT_OK


def _with_cwd(spec: ToolSpec, cwd: str) -> ToolSpec:
    return attrs.evolve(spec, cwd=os.path.abspath(cwd))


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console script's entry point."""
    cli.main(args=argv, prog_name="aimcluster")
    raise AssertionError("unreachable: click exits")
