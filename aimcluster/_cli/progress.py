"""Progress of a run, as a live rich display on a terminal or as plain lines elsewhere.

Both displays read a :class:`Tracker` (fed one result at a time), the run (which job each
instance holds) and :meth:`Cluster.metrics`. They redraw on a timer: the display is UI, not
part of the data path, and a timer keeps a burst of results from costing a burst of redraws.
For the same reason a display never fails the run: once the terminal is gone (a closed
terminal answers writes with EIO, a closed pipe with EPIPE) its output is dropped.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import anyio
import attrs
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .summary_render import seconds
from .terminal import shown

if TYPE_CHECKING:
    from aimcluster import Cluster, JobResult, JobRun

__all__ = ["Display", "LiveDisplay", "NullDisplay", "PlainDisplay", "Tracker", "format_eta"]

_STATE_STYLES = {
    "starting": "blue",
    "ready": "green",
    "busy": "cyan",
    "restarting": "magenta",
    "failed": "bold red",
    "stopped": "dim",
}


@attrs.define
class Tracker:
    """Counts of a run's results so far, and the rate they come at."""

    #: Jobs this run will try (items already done are not counted).
    total: int
    clock: Callable[[], float] = attrs.field(default=anyio.current_time)
    ok: int = attrs.field(init=False, default=0)
    failed: int = attrs.field(init=False, default=0)
    cancelled: int = attrs.field(init=False, default=0)
    per_instance_ok: Counter[int] = attrs.field(init=False, factory=Counter)
    per_instance_failed: Counter[int] = attrs.field(init=False, factory=Counter)
    #: Jobs that ended ok / not ok by the pool of their last attempt, and jobs that moved
    #: from one pool to another (failover).
    per_tool_ok: Counter[str] = attrs.field(init=False, factory=Counter)
    per_tool_failed: Counter[str] = attrs.field(init=False, factory=Counter)
    moved: int = attrs.field(init=False, default=0)
    started: float | None = attrs.field(init=False, default=None)

    def start(self) -> None:
        self.started = self.clock()

    def add(self, result: JobResult) -> None:
        if result.ok:
            self.ok += 1
        elif result.status == "cancelled":
            self.cancelled += 1
        else:
            self.failed += 1
        if result.instance is not None:
            counter = self.per_instance_ok if result.ok else self.per_instance_failed
            counter[result.instance] += 1
        if result.tool is not None:
            (self.per_tool_ok if result.ok else self.per_tool_failed)[result.tool] += 1
        if result.failovers:
            self.moved += 1

    def per_tool(self, pools: Sequence[str]) -> str:
        """``aider 3 ok, claude 2 ok 1 failed``: each pool's count so far."""
        parts = []
        for pool in pools:
            part = f"{pool} {self.per_tool_ok[pool]} ok"
            if self.per_tool_failed[pool]:
                part += f" {self.per_tool_failed[pool]} failed"
            parts.append(part)
        return ", ".join(parts)

    @property
    def finished(self) -> int:
        return self.ok + self.failed + self.cancelled

    @property
    def elapsed(self) -> float:
        return 0.0 if self.started is None else self.clock() - self.started

    @property
    def rate(self) -> float | None:
        """Jobs finished per second so far (``None`` before the first one)."""
        elapsed = self.elapsed
        return self.finished / elapsed if self.finished and elapsed > 0 else None

    @property
    def eta(self) -> float | None:
        """Seconds until every job is finished at the current rate."""
        rate = self.rate
        return None if rate is None else (self.total - self.finished) / rate


def format_eta(value: float | None) -> str:
    """``3s``, ``2m05s``, ``1h02m``, or ``?`` when unknown."""
    if value is None or math.isinf(value):
        return "?"
    whole = math.ceil(value)
    if whole < 60:
        return f"{whole}s"
    minutes, rest = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Display(Protocol):
    """What the run loop tells a display."""

    def attach(self, cluster: Cluster, run: JobRun) -> None:
        """The cluster is up and the jobs are about to start."""

    def notice(self, message: str) -> None:
        """Something the user must see now (a stop request)."""

    def result(self, result: JobResult) -> None:
        """A job ended; the tracker has already counted it."""

    async def refresh_forever(self) -> None:
        """Redraw periodically until cancelled."""

    def close(self) -> None:
        """The run is over: leave the terminal clean for the summary."""


class NullDisplay:
    """No progress output at all (``--progress none``)."""

    def attach(self, cluster: Cluster, run: JobRun) -> None:
        pass

    def notice(self, message: str) -> None:
        with contextlib.suppress(OSError):
            print(shown(message), file=sys.stderr, flush=True)

    def result(self, result: JobResult) -> None:
        pass

    async def refresh_forever(self) -> None:
        await anyio.sleep_forever()

    def close(self) -> None:
        pass


@attrs.define(eq=False)
class PlainDisplay:
    """Status lines for logs and pipes: every *interval* seconds and at every 10 %."""

    tracker: Tracker
    console: Console
    interval: float = 2.0
    _last_decile: int = attrs.field(init=False, default=0)
    _last_finished: int = attrs.field(init=False, default=0)
    #: The pools, when there are several (a run of one tool prints no per-tool counts).
    _pools: tuple[str, ...] = attrs.field(init=False, default=())

    def attach(self, cluster: Cluster, run: JobRun) -> None:
        pools = tuple(cluster.pools)
        self._pools = pools if len(pools) > 1 else ()

    def line(self) -> str:
        t = self.tracker
        rate = t.rate
        text = f"[progress] {t.ok}/{t.total} done, {t.failed} failed"
        if t.cancelled:
            text += f", {t.cancelled} cancelled"
        text = f"{text}, {rate or 0:.1f} items/s, eta {format_eta(t.eta)}"
        if self._pools:
            text += f" ({shown(t.per_tool(self._pools))}; {t.moved} moved)"
        return text

    def _emit(self) -> None:
        # A line only when something changed: a quiet period, or the end, repeats nothing.
        if self.tracker.finished == self._last_finished:
            return
        self._last_finished = self.tracker.finished
        self._print(self.line())

    def notice(self, message: str) -> None:
        self._print(f"[stop] {shown(message)}")

    def _print(self, line: str) -> None:
        with contextlib.suppress(OSError):
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def result(self, result: JobResult) -> None:
        total = self.tracker.total
        decile = self.tracker.finished * 10 // total if total else 10
        if decile > self._last_decile:
            self._last_decile = decile
            self._emit()

    async def refresh_forever(self) -> None:
        while True:
            await anyio.sleep(self.interval)
            self._emit()

    def close(self) -> None:
        self._emit()


@attrs.define(eq=False)
class LiveDisplay:
    """A live progress bar and per-instance table, redrawn a few times a second."""

    tracker: Tracker
    console: Console
    interval: float = 0.125
    _cluster: Cluster | None = attrs.field(init=False, default=None)
    _run: JobRun | None = attrs.field(init=False, default=None)
    _live: Live | None = attrs.field(init=False, default=None)
    _notice: str | None = attrs.field(init=False, default=None)

    def attach(self, cluster: Cluster, run: JobRun) -> None:
        self._cluster, self._run = cluster, run
        # Redrawn from our own timer on the event loop, never from rich's refresh thread,
        # which would read the cluster's state from another thread.
        self._live = Live(
            self.render(),
            console=self.console,
            auto_refresh=False,
            transient=True,
            redirect_stdout=True,
            redirect_stderr=True,
        )
        with contextlib.suppress(OSError):
            self._live.start()

    def notice(self, message: str) -> None:
        self._notice = message
        self._redraw()

    def result(self, result: JobResult) -> None:
        pass

    def _redraw(self) -> None:
        if self._live is not None:
            with contextlib.suppress(OSError):
                self._live.update(self.render(), refresh=True)

    async def refresh_forever(self) -> None:
        while True:
            self._redraw()
            await anyio.sleep(self.interval)

    def close(self) -> None:
        if self._live is not None:
            with contextlib.suppress(OSError):
                self._live.stop()
            self._live = None

    # -- rendering ------------------------------------------------------------------------

    def render(self) -> RenderableType:
        parts: list[RenderableType] = [self._bar(), self._counts()]
        if self._notice is not None:
            parts.append(Text(shown(self._notice), style="bold yellow"))
        if self._cluster is not None and self._run is not None:
            parts.append(self._instances(self._cluster, self._run))
        return Group(*parts)

    def _bar(self) -> Table:
        t = self.tracker
        grid = Table.grid(padding=(0, 1))
        grid.add_column(width=min(60, max(10, self.console.width - 24)))
        grid.add_column(justify="right")
        grid.add_column(justify="right")
        total = max(t.total, 1)
        percent = 100 * t.finished / total
        bar = ProgressBar(total=total, completed=t.finished, width=None)
        grid.add_row(bar, f"{t.finished}/{t.total}", f"{percent:3.0f}%")
        return grid

    def _counts(self) -> Text:
        t = self.tracker
        text = Text()
        text.append(f"{t.ok} ok", style="green")
        text.append("  ")
        text.append(f"{t.failed} failed", style="bold red" if t.failed else "dim")
        if t.cancelled:
            text.append("  ")
            text.append(f"{t.cancelled} cancelled", style="yellow")
        rate = t.rate
        text.append(f"  {rate or 0:.1f} items/s", style="cyan")
        text.append(f"  elapsed {format_eta(t.elapsed)}  eta {format_eta(t.eta)}")
        return text

    def _instances(self, cluster: Cluster, run: JobRun) -> RenderableType:
        metrics = cluster.metrics()
        active = run.active
        states = Counter(m.state for m in metrics.instances)
        summary = Text("instances: ")
        summary.append(
            Text(", ").join(
                Text(f"{n} {state}", style=_STATE_STYLES.get(state, ""))
                for state, n in sorted(states.items())
            )
        )
        pools = cluster.pools
        several = len(pools) > 1
        if several:
            paused = [name for name, pool in pools.items() if pool.paused]
            summary.append(f"\ntools: {shown(self.tracker.per_tool(list(pools)))}")
            summary.append(f"; {self.tracker.moved} moved")
            if paused:
                summary.append(f"; rate-limited now: {shown(', '.join(paused))}", style="yellow")
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        columns = [("#", "right"), ("tool", "left")] if several else [("#", "right")]
        for name, justify in (
            *columns,
            ("pid", "right"),
            ("state", "left"),
            ("ok", "right"),
            ("failed", "right"),
            ("prompts", "right"),
            ("restarts", "right"),
            ("reply p50", "right"),
            ("p95", "right"),
            ("current item", "left"),
        ):
            table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        # Leave room for the bar, counts and the table's header on a small terminal.
        room = max(3, self.console.height - 9)
        listed = metrics.instances[:room]
        for m in listed:
            job = active.get(m.index)
            failed = self.tracker.per_instance_failed[m.index]
            tool = [Text(shown(m.tool))] if several else []
            table.add_row(
                str(m.index),
                *tool,
                str(m.pid or "-"),
                Text(m.state, style=_STATE_STYLES.get(m.state, "")),
                str(self.tracker.per_instance_ok[m.index]),
                Text(str(failed), style="red" if failed else ""),
                str(m.sent),
                Text(str(m.restarts), style="yellow" if m.restarts else ""),
                seconds(m.latency_p50),
                seconds(m.latency_p95),
                Text(shown(job.item) if job is not None else "", overflow="ellipsis"),
            )
        parts: list[RenderableType] = [summary, table]
        hidden = len(metrics.instances) - len(listed)
        if hidden > 0:
            parts.append(Text(f"... and {hidden} more instances", style="dim"))
        return Group(*parts)
