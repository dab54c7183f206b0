"""What the command line's commands share: exit codes, usage errors, the console and the log,
the event loop, the progress display, and running a batch with its failures said in one line.

Everything printed that comes from outside (item and file names, paths, tool names, tool
output, error messages) goes through :func:`shown`, and reaches rich as text, never as markup.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import os
import secrets
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import anyio
import click
import structlog
from rich.console import Console

from aimcluster import LocalTransport, StartupError, ToolNotFoundError, ToolSpec

from .batch import Batch, BatchOutcome, run_batch
from .journal import JournalContents, JournalWriteError, read_journal
from .progress import Display, LiveDisplay, NullDisplay, PlainDisplay, Tracker
from .terminal import shown

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: The tool was found but did not start (it exited, or showed no ready prompt in time).
EXIT_NO_START = 3
#: --max-cost or --max-tokens was reached before every item was done (no new job started).
EXIT_BUDGET = 4


class UserError(click.ClickException):
    """Bad usage or input: shown as one line on stderr, exit code 2."""

    exit_code = EXIT_USAGE


def _fail(message: str) -> NoReturn:
    raise UserError(message)


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


def _startup_failure(exc: StartupError, code: int = EXIT_NO_START) -> NoReturn:
    head, _, output = str(exc).partition("\n")
    click.echo(f"aimcluster: error: {shown(head)}", err=True)
    if output:
        click.echo(shown(output, block=True), err=True)
    sys.exit(code)


def _read_contents(path: str) -> JournalContents:
    try:
        return read_journal(path)
    except OSError as exc:
        _fail(f"cannot read the journal {path}: {exc.strerror or exc}")


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
