"""Point-in-time metric snapshots of a cluster and of each of its instances."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from .usage import Usage, total

__all__ = ["ClusterMetrics", "InstanceMetrics", "PoolMetrics", "percentile"]


def percentile(samples: Iterable[float], q: float) -> float | None:
    """The *q*-th percentile (0 <= q <= 100), linearly interpolated between the closest
    ranks (numpy's default method), or ``None`` with no samples."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must be between 0 and 100, got {q!r}")
    data = sorted(samples)
    if not data:
        return None
    rank = (len(data) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


@attrs.frozen(kw_only=True)
class InstanceMetrics:
    """What one instance (slot) has done so far."""

    #: The slot index; it stays the same across restarts.
    index: int
    #: The process id now, or ``None`` while no process runs.
    pid: int | None
    #: ``starting``, ``ready``, ``busy``, ``restarting``, ``failed`` or ``stopped``.
    state: str
    #: Where the process runs (``None``: this machine).
    node: str | None
    #: Prompts written to the tool.
    sent: int
    #: Prompts that got a complete reply.
    completed: int
    #: Prompts that ended in an error on this instance (timeouts included).
    failed: int
    #: Prompts that ran out of time on this instance.
    timeouts: int
    #: Times the process was restarted.
    restarts: int
    #: Prompts written and not yet answered (0 or 1).
    in_flight: int
    #: Prompts routed to this instance and waiting for it.
    queued: int
    #: Median reply latency over recent prompts, in seconds.
    latency_p50: float | None
    #: 95th percentile reply latency over recent prompts, in seconds.
    latency_p95: float | None
    #: Prompts the provider rate-limited on this instance; each was sent again after a
    #: cluster-wide pause (not counted in :attr:`failed`).
    rate_limited: int = 0
    #: Tokens and cost of every turn on this instance, as the tool reported them (failed and
    #: rate-limited turns included: they were paid for).
    usage: Usage = attrs.field(factory=Usage)
    #: Model requests the tool retried on its own (see :attr:`ToolSpec.retry_event
    #: <aimcluster.ToolSpec.retry_event>`).
    tool_retries: int = 0
    #: The name of the instance's pool (by default its tool's name).
    tool: str = ""

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class PoolMetrics:
    """What one pool of a cluster is doing; the counters of its instances are in
    :meth:`ClusterMetrics.by_pool`."""

    #: The pool's name, and the name of its tool.
    name: str
    tool: str
    #: The indices of its instances.
    instances: tuple[int, ...]
    #: Prompts waiting in its shared (late-binding) queue.
    queued: int
    #: Whether a rate limit holds its prompts back now.
    paused: bool
    #: Prompts and leases that moved from this pool to another (failover), and into it.
    failovers_out: int = 0
    failovers_in: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "instances": list(self.instances)}


@attrs.frozen(kw_only=True)
class ClusterMetrics:
    """A snapshot of the whole cluster; totals are sums over :attr:`instances`."""

    #: One entry per slot, index-aligned.
    instances: tuple[InstanceMetrics, ...]
    #: Prompts waiting in the shared (late-binding) queues.
    queued: int
    #: One entry per pool, in the order the pools were given.
    pools: tuple[PoolMetrics, ...] = ()

    def instance(self, index: int) -> InstanceMetrics:
        """The metrics of instance *index* (an index may be missing after ``scale``)."""
        for metrics in self.instances:
            if metrics.index == index:
                return metrics
        raise KeyError(f"no instance {index} in this snapshot")

    def by_pool(self) -> dict[str, ClusterMetrics]:
        """The snapshot of each pool alone, by pool name: its instances and their totals."""
        return {
            pool.name: ClusterMetrics(
                instances=tuple(m for m in self.instances if m.tool == pool.name),
                queued=pool.queued,
                pools=(pool,),
            )
            for pool in self.pools
        }

    @property
    def failovers(self) -> int:
        """Prompts and leases that moved to another pool."""
        return sum(pool.failovers_out for pool in self.pools)

    @property
    def sent(self) -> int:
        return sum(m.sent for m in self.instances)

    @property
    def completed(self) -> int:
        return sum(m.completed for m in self.instances)

    @property
    def failed(self) -> int:
        return sum(m.failed for m in self.instances)

    @property
    def restarts(self) -> int:
        return sum(m.restarts for m in self.instances)

    @property
    def rate_limited(self) -> int:
        return sum(m.rate_limited for m in self.instances)

    @property
    def usage(self) -> Usage:
        return total(m.usage for m in self.instances)

    @property
    def tool_retries(self) -> int:
        return sum(m.tool_retries for m in self.instances)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "completed": self.completed,
            "failed": self.failed,
            "restarts": self.restarts,
            "queued": self.queued,
            "rate_limited": self.rate_limited,
            "tool_retries": self.tool_retries,
            "usage": self.usage.as_dict(),
            "failovers": self.failovers,
            "pools": [p.as_dict() for p in self.pools],
            "instances": [m.as_dict() for m in self.instances],
        }
