"""The ``aimcluster`` command line: ``run``, ``show``, ``demo``, ``tools`` and ``check``.

A thin layer over :func:`aimcluster.run_jobs`: it turns options into jobs, and results into a
journal, progress and a summary.

Exit codes: 0 every item succeeded (or was already done); 1 some item failed; 2 bad usage or
input (one line on stderr, never a traceback), found before any work starts where it can be (an
unwritable --report or journal, a missing executable); 3 the tool did not start; 4 the
--max-cost or --max-tokens budget was spent before every item was done; 128 + N
stopped by signal N, after a graceful stop with its summary (130 for Ctrl-C, 143 for SIGTERM,
129 for SIGHUP: a closed terminal).

This module holds the group, its global options and the console script's entry point
(``aimcluster._cli.main:main``). Each command is a plain :func:`click.command` in a module of
its own (:mod:`.run`, :mod:`.show`, and :mod:`.small` for ``demo``, ``tools`` and ``check``),
which knows nothing of the group; this module imports them and adds them to it with
:meth:`click.Group.add_command`, so imports run one way: from here down to the commands, and
from them to what they share (:mod:`.common`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from .common import EXIT_OK, UserError
from .run import run
from .show import show
from .small import check, demo, list_tools
from .terminal import shown

__all__ = ["cli", "main"]


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


cli.add_command(run)
cli.add_command(show)
cli.add_command(demo)
cli.add_command(list_tools)
cli.add_command(check)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console script's entry point."""
    cli.main(args=argv, prog_name="aimcluster")
    raise AssertionError("unreachable: click exits")
