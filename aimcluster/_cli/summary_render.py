"""The end-of-run summary for people: the totals, the pools, instances, failovers and failures
as rich tables, and durations as people read them (:func:`seconds`).
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import TYPE_CHECKING

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .terminal import shown

if TYPE_CHECKING:
    from .landing import Landing
    from .report import RunSummary

__all__ = ["render_summary", "seconds"]

#: Failures listed one by one; the rest are counted (the journal has them all).
MAX_FAILURES_SHOWN = 10
#: Instances listed one by one in the summary; the rest are counted.
MAX_INSTANCES_SHOWN = 32


def seconds(value: float | None) -> str:
    """A duration for people: ``850 µs``, ``42 ms``, ``1.25 s``, ``2m05s``."""
    if value is None:
        return "-"
    if value < 0.001:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.2f} s"
    minutes, rest = divmod(round(value), 60)
    return f"{minutes}m{rest:02d}s"


def _totals(summary: RunSummary) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    parts = [
        Text(f"{summary.ok} ok", style="green"),
        Text(f"{summary.failed} failed", style="red" if summary.failed else ""),
    ]
    if summary.cancelled:
        parts.append(Text(f"{summary.cancelled} cancelled", style="yellow"))
    if summary.not_started:
        parts.append(Text(f"{summary.not_started} not started", style="yellow"))
    if summary.held_back:
        parts.append(Text(f"{summary.held_back} held back by --limit", style="yellow"))
    if summary.skipped:
        parts.append(Text(f"{summary.skipped} already done", style="dim"))
    items = Text(f"{summary.total} total: ").append(Text(", ").join(parts))
    grid.add_row("items", items)
    rate = summary.throughput
    wall = f"{seconds(summary.wall_time)} (instances ready in {seconds(summary.startup_time)})"
    if rate is not None:
        wall += f", {rate:.1f} items/s"
    grid.add_row("wall time", wall)
    grid.add_row("job time", f"p50 {seconds(summary.job_p50)}, p95 {seconds(summary.job_p95)}")
    if len(summary.pools) > 1:
        grid.add_row("tools", Text(shown(_tools_line(summary))))
        grid.add_row("failovers", Text(shown(_failovers_line(summary))))
    else:
        grid.add_row("tool", Text(f"{shown(summary.tool)} x {summary.count}"))
    if summary.journal is not None:
        # Folded, never cut short with an ellipsis: the path is what a resume needs.
        grid.add_row("journal", Text(shown(summary.journal), overflow="fold"))
    # Rows only for a tool that reports usage (most do not); per instance: --report.
    if summary.usage.known or summary.tool_retries:
        grid.add_row("usage", Text(shown(_usage_line(summary))))
    per_item = _per_item_line(summary)
    if per_item is not None:
        grid.add_row("per item", Text(shown(per_item)))
    if summary.budget_spent is not None:
        budget = f"budget spent ({summary.budget_spent}): no new job started"
        grid.add_row("stopped", Text(shown(budget), style="yellow"))
    if summary.interrupted is not None:
        grid.add_row("stopped", Text(f"by {summary.interrupted}", style="yellow"))
    if summary.landing is not None:
        _landing_rows(grid, summary.landing)
    return grid


def _tools_line(summary: RunSummary) -> str:
    """``aider x 4, claude x 2; failover order aider, claude``"""
    pools = ", ".join(f"{pool.name} x {len(pool.instances)}" for pool in summary.pools)
    if summary.fallback:
        return f"{pools}; failover order {', '.join(summary.fallback)}"
    return f"{pools}; no failover"


def _failovers_line(summary: RunSummary) -> str:
    """``3 jobs moved: limited -> mock x 3``"""
    if not summary.failovers:
        return "none"
    moves: Counter[tuple[str, str]] = Counter()
    for moved in summary.failovers:
        path = [*moved.moved_from, moved.tool or "(none)"]
        for source, target in itertools.pairwise(path):
            moves[source, target] += 1
    jobs = len(summary.failovers)
    described = ", ".join(f"{a} -> {b} x {n}" for (a, b), n in moves.most_common())
    return f"{jobs} {'job' if jobs == 1 else 'jobs'} moved: {described}"


def _pools(summary: RunSummary) -> Table:
    """Each pool's totals, in 80 columns (prompts and latency are in the instances table)."""
    usage = any(pool.usage.known for pool in summary.pools)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    table.add_column("pool")
    for name in ("instances", "ok", "failed", "job time", "rate-limited", "moved out", "in"):
        table.add_column(name, justify="right")
    if usage:
        table.add_column("usage")
    for pool in summary.pools:
        cells: list[str | Text] = [
            Text(shown(pool.name)),
            str(len(pool.instances)),
            str(pool.jobs_ok),
            Text(str(pool.jobs_failed), style="red" if pool.jobs_failed else ""),
            seconds(pool.job_time),
            Text(str(pool.rate_limited), style="yellow" if pool.rate_limited else ""),
            Text(str(pool.jobs_moved_out), style="yellow" if pool.jobs_moved_out else ""),
            str(pool.jobs_moved_in),
        ]
        if usage:
            cells.append(Text(shown(pool.usage.describe() if pool.usage.known else "-")))
        table.add_row(*cells)
    return table


def _moved(summary: RunSummary) -> RenderableType:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=False)
    table.add_column("item", overflow="fold")
    table.add_column("moved from", overflow="fold")
    table.add_column("ran on")
    table.add_column("status")
    for moved in summary.failovers[:MAX_FAILURES_SHOWN]:
        table.add_row(
            Text(shown(moved.item)),
            Text(shown(" -> ".join(moved.moved_from))),
            Text(shown(moved.tool or "-")),
            Text(moved.status, style="" if moved.status == "ok" else "red"),
        )
    parts: list[RenderableType] = [Text(f"Failovers ({len(summary.failovers)})", style="bold")]
    parts.append(table)
    hidden = len(summary.failovers) - MAX_FAILURES_SHOWN
    if hidden > 0:
        parts.append(Text(f"... and {hidden} more (--report and the journal have them all)"))
    return Group(*parts)


def _usage_line(summary: RunSummary) -> str:
    """``12,345 tokens (12,000 in, 345 out), $0.1234, 3 tool retries``"""
    parts = [summary.usage.describe()] if summary.usage.known else []
    if summary.tool_retries:
        parts.append(f"{summary.tool_retries} tool retries")
    return ", ".join(parts)


def _per_item_line(summary: RunSummary) -> str | None:
    """``mean $0.0062, most $0.0100 (a.py)``, or the same in tokens without a cost."""
    costs = [(c, i.item) for i in summary.items if (c := i.usage.cost_usd) is not None]
    if costs:
        most, item = max(costs)
        return f"mean ${sum(c for c, _ in costs) / len(costs):.4f}, most ${most:.4f} ({item})"
    tokens = [(n, i.item) for i in summary.items if (n := i.usage.tokens) is not None]
    if tokens:
        most_tokens, item = max(tokens)
        mean = sum(t for t, _ in tokens) / len(tokens)
        return f"mean {mean:,.0f} tokens, most {most_tokens:,} ({item})"
    return None


def _landing_rows(grid: Table, landing: Landing) -> None:
    results = (
        f"branch {landing.branch}: {len(landing.commits)} commit(s) on {landing.base[:12]}"
        f", {len(landing.unchanged)} item(s) without a change"
    )
    if landing.conflicts:
        results += f", {len(landing.conflicts)} conflict(s) left out"
    grid.add_row("results", Text(shown(results), overflow="fold"))
    if landing.kept_branches:
        grid.add_row("kept", Text(shown(", ".join(landing.kept_branches)), overflow="fold"))
    if landing.kept_worktrees:
        grid.add_row("worktrees", Text(shown(", ".join(landing.kept_worktrees)), overflow="fold"))


def _instances(summary: RunSummary) -> Table:
    several = len(summary.pools) > 1
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    # With a tool column, a short header keeps the table in 80 columns.
    table.add_column("#" if several else "instance", justify="right")
    if several:
        table.add_column("tool")
    table.add_column("jobs ok", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("prompts", justify="right")
    table.add_column("restarts", justify="right")
    table.add_column("reply p50", justify="right")
    table.add_column("reply p95", justify="right")
    for m in summary.instances[:MAX_INSTANCES_SHOWN]:
        tool = [Text(shown(m.tool or "-"))] if several else []
        table.add_row(
            str(m.index),
            *tool,
            str(m.jobs_ok),
            Text(str(m.jobs_failed), style="red" if m.jobs_failed else ""),
            str(m.prompts),
            Text(str(m.restarts), style="yellow" if m.restarts else ""),
            seconds(m.reply_p50),
            seconds(m.reply_p95),
        )
    return table


def _failures(summary: RunSummary) -> RenderableType:
    several = len(summary.pools) > 1
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=False)
    table.add_column("item", overflow="fold")
    if several:
        table.add_column("tool")
    table.add_column("status")
    table.add_column("tries", justify="right")
    table.add_column("error", overflow="fold", ratio=1)
    for failure in summary.failures[:MAX_FAILURES_SHOWN]:
        message = (failure.error or "").splitlines()[0] if failure.error else ""
        # Data as Text, never as markup: an item named '[/]' must not break the table.
        error = Text(shown(f"{failure.error_type}: {message}"))
        if failure.output:
            for line in failure.output.splitlines():
                error.append("\n")
                error.append(Text(shown(f"| {line}"), style="dim"))
        tool = [Text(shown(failure.tool or "-"))] if several else []
        table.add_row(
            Text(shown(failure.item)),
            *tool,
            Text(failure.status, style="red" if failure.status == "failed" else "yellow"),
            str(failure.attempts),
            error,
        )
    parts: list[RenderableType] = [Text(f"Failures ({len(summary.failures)})", style="bold red")]
    parts.append(table)
    hidden = len(summary.failures) - MAX_FAILURES_SHOWN
    if hidden > 0:
        kinds = Counter(failure.error_type for failure in summary.failures)
        by_kind = shown(", ".join(f"{kind} x {n}" for kind, n in kinds.most_common()))
        parts.append(Text(f"... and {hidden} more ({by_kind}); the journal has them all"))
    return Group(*parts)


def render_summary(summary: RunSummary) -> RenderableType:
    """The summary as rich renderables, for a terminal or a plain stream."""
    if summary.succeeded:
        verdict = Text("All items done.", style="bold green")
    elif summary.interrupted is not None or summary.budget_spent is not None:
        verdict = Text("Stopped before every item was done.", style="bold yellow")
    elif summary.clean:
        held = summary.held_back
        verdict = Text(
            f"This run's jobs are done; {held} {'item' if held == 1 else 'items'} held back "
            f"by --limit {'is' if held == 1 else 'are'} left.",
            style="bold yellow",
        )
    else:
        verdict = Text("Some items failed.", style="bold red")
    parts: list[RenderableType] = [Text("Summary", style="bold"), _totals(summary)]
    if len(summary.pools) > 1:
        parts.append(_pools(summary))
    if summary.finished:
        parts.append(_instances(summary))
        hidden = len(summary.instances) - MAX_INSTANCES_SHOWN
        if hidden > 0:
            parts.append(Text(f"... and {hidden} more instances (--report has them all)\n"))
    if summary.failovers:
        parts.append(_moved(summary))
    if summary.failures:
        parts.append(_failures(summary))
    parts.append(verdict)
    return Group(*parts)
