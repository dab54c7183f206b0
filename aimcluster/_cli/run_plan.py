"""``aimcluster run``, its first stage: from the options to a plan checked before any work
starts (the items and their jobs, the tools and their counts, the failover order, the checks
that make an item done, and the fingerprint that says which job each item is).

Whatever is wrong with the options or the input is said here, as one line and exit code 2,
before a journal is opened or a tool started.
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import click

from aimcluster import Job, Pool, ToolSpec

from .common import _check_executable, _fail
from .isolation import IsolationName
from .items import (
    InputError,
    WorkItem,
    build_jobs,
    exclude,
    items_from_file,
    items_from_jsonl,
    items_from_paths,
)
from .journal import fingerprint
from .toolref import resolve_tool, split_count

#: ``run``'s reply timeout when neither --timeout nor the tool's spec gives one: long enough
#: for an agent's slow edit, short enough that a stuck one does not hold the run for good.
DEFAULT_RUN_TIMEOUT = 600.0


@attrs.frozen(kw_only=True)
class RunOptions:
    """``run``'s options as given (their help is the command's)."""

    paths: tuple[str, ...]
    globs: tuple[str, ...]
    items_file: str | None
    jsonl: str | None
    item_field: str
    steps: tuple[str, ...]
    tool_options: tuple[str, ...]
    count: int
    routing: str | None
    timeout: float | None
    retries: int
    sticky_by: str | None
    isolation: IsolationName
    journal: str
    no_journal: bool
    fresh: bool
    report: str | None
    cwd: str
    grace: float
    progress: str
    fail_on: tuple[str, ...]
    no_default_fail_on: bool
    verify: str | None
    excludes: tuple[str, ...]
    limit: int | None
    dry_run: bool
    max_restarts: int
    restart_window: float
    result_branch: str | None
    keep_worktrees: bool
    max_cost: float | None
    max_tokens: int | None
    fallback: str | None
    failover_after: float | None
    compare: bool


@attrs.frozen(kw_only=True)
class Plan:
    """What the options make, checked: the run's stages after this one start from it."""

    #: Each tool's spec (with --fail-on joined to its own failure replies when there are
    #: several) and instance count, in --tool order; the first one's spec.
    chosen: list[tuple[ToolSpec, int]]
    spec: ToolSpec
    #: The failover order (empty: jobs never move).
    order: tuple[str, ...]
    #: --cwd, resolved.
    root: Path
    jobs: list[Job]
    #: The failure replies with one tool (--fail-on and the tool's own).
    patterns: tuple[str, ...]
    #: The job's fingerprint, by item.
    fingerprints: dict[str, str]

    @property
    def several(self) -> bool:
        return len(self.chosen) > 1


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


def plan_run(options: RunOptions) -> Plan:
    """Check *options* and make the run's plan of them; exit 2 for anything wrong."""
    verify_argv = _verify_argv(options.verify)
    if options.isolation != "worktree" and (
        options.result_branch is not None or options.keep_worktrees
    ):
        _fail("--result-branch and --keep-worktrees need --isolation worktree")
    try:
        chosen = _resolve_pools(options.tool_options, options.count)
        order = _failover_order(
            options.fallback, [each.name for each, _ in chosen], options.failover_after
        )
        spec = chosen[0][0]
        root = Path(options.cwd).resolve()
        items = _collect_items(
            [*options.paths, *options.globs],
            options.items_file,
            options.jsonl,
            options.item_field,
            root=root,
            absolute_paths=options.isolation == "dir",
        )
        items, excluded = exclude(items, options.excludes)
        if not items:
            _fail(f"every one of the {excluded} items matched --exclude")
        jobs, duplicates = build_jobs(
            items, options.steps, sticky_by=options.sticky_by, verify=verify_argv
        )
    except InputError as exc:
        _fail(str(exc))
    several = len(chosen) > 1
    for each, _ in chosen:
        if options.max_tokens is not None and each.usage is None:
            _fail(
                f"--max-tokens needs a tool that reports the tokens it used; {each.name} does not"
            )
    fail_on = options.fail_on
    patterns = (*fail_on, *(() if options.no_default_fail_on else spec.failure_replies))
    for pattern in fail_on:
        try:
            re.compile(pattern)
        except re.error as exc:
            _fail(f"--fail-on {pattern!r} is not a valid regex: {exc}")
    # What makes two jobs on an item the same job, besides its rendered steps and verify.
    setup: dict[str, Any] = {
        "tool": list(spec.argv),
        "fail_on": list(patterns),
        "isolation": options.isolation,
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
                        *(() if options.no_default_fail_on else each.failure_replies),
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
            "isolation": options.isolation,
        }
    fingerprints = {job.item: fingerprint(job, setup) for job in jobs}
    if not options.dry_run:
        for each, _ in chosen:
            _check_executable(each)
        if options.report is not None:
            _check_report(options.report)
    if duplicates:
        click.echo(f"aimcluster: note: {duplicates} duplicate item(s) ignored", err=True)
    return Plan(
        chosen=chosen,
        spec=spec,
        order=order,
        root=root,
        jobs=jobs,
        patterns=patterns,
        fingerprints=fingerprints,
    )
