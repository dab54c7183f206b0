"""The small commands: ``demo`` (the mock agent's roll-out over a generated project),
``tools`` (the built-in profiles) and ``check`` (one instance of a tool, started and probed)."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import tempfile
from pathlib import Path

import anyio
import attrs
import click
from rich.console import Console

from aimcluster import AimclusterError, StartupError, ToolSpec, launch_cluster, redact_argv, tools

from .batch import Batch
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    _check_executable,
    _console,
    _execute,
    _fail,
    _logger,
    _progress_option,
    _run_async,
    _run_id,
    _startup_failure,
)
from .demo import DEMO_STEPS, Verification, examples, make_project, unified_diff, verify_project
from .items import InputError, build_jobs, items_from_paths
from .journal import Journal
from .summary_render import render_summary, seconds
from .terminal import shown
from .toolref import resolve_tool

#: Harmless prompts for ``aimcluster check``, by built-in tool name.
PROBES = {
    "mock": "/echo aimcluster-check",
    "python": "print('aimcluster-check')",
    "bash": "echo aimcluster-check",
}


# -- demo -------------------------------------------------------------------------------------


@click.command(epilog="Exit codes: 0 every file verified, 1 otherwise, 130 stopped by Ctrl-C.")
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


@click.command(name="tools")
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


@click.command(epilog="Exit codes: 0 healthy, 1 it did not start or answer, 2 unknown tool.")
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
