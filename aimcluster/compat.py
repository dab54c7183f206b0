"""The synchronous prototype's API, for the code written against it.

The prototype sent a prompt and returned at once, and collected replies later with
``read_any``; its pool addressed instance *i* by number. These two classes keep exactly that,
on the blocking layer (:mod:`aimcluster.sync`)::

    from aimcluster.compat import ToolProcessPool, launch_cluster

    pool = ToolProcessPool("aider", count=3)
    pool.send_prompt(0, "/add file1.py")
    print(pool.read_any(timeout=30).text)
    pool.shutdown()

    cluster = launch_cluster("aider", count=3)
    cluster.send("/add my_file.py")  # routed; returns at once
    response = cluster.read_any(timeout=30)  # the next reply to complete
    cluster.shutdown()

Every prompt sent is answered by exactly one ``read_any`` (its reply, or its error raised).
New code should use :mod:`aimcluster.sync` or, better, the async API.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from ._base.metrics import ClusterMetrics
from ._base.request import Reply, Ticket
from ._base.spec import ToolSpec
from .sync import Cluster
from .sync import launch_cluster as _launch

__all__ = ["ClusterManager", "ToolProcessPool", "launch_cluster"]


class ClusterManager:
    """A cluster whose :meth:`send` returns at once; :meth:`read_any` collects the replies."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster

    def send(self, prompt: str, *, key: str | None = None) -> Ticket:
        """Route *prompt* (with the cluster's routing) and return without waiting."""
        return self._cluster.submit(prompt, key=key)

    def read_any(self, timeout: float | None = None) -> Reply:
        """The next reply to complete, of any prompt sent.

        :raises TimeoutError: if none completes within *timeout* seconds
        """
        return self._cluster.read_any(timeout)

    def metrics(self) -> ClusterMetrics:
        return self._cluster.metrics()

    def shutdown(self) -> None:
        """Stop every instance. Idempotent."""
        self._cluster.shutdown()

    def __enter__(self) -> ClusterManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


class ToolProcessPool(ClusterManager):
    """*count* instances of *tool*, each addressed by its number."""

    def __init__(self, tool: str | ToolSpec, count: int = 1, **options: Any) -> None:
        super().__init__(_launch(tool, count, **options))

    @property
    def count(self) -> int:
        return self._cluster.size

    def send_prompt(self, index: int, prompt: str) -> Ticket:
        """Send *prompt* to instance *index* and return without waiting; :meth:`read_any`
        collects the reply."""
        return self._cluster.submit(prompt, instance=index)


def launch_cluster(tool: str | ToolSpec, count: int = 1, **options: Any) -> ClusterManager:
    """Start *count* instances of *tool*, as the prototype did: ``send`` returns at once and
    ``read_any`` collects the replies. *options* are those of :func:`aimcluster.sync.launch_cluster`
    (``routing``, ``backend``, ...)."""
    return ClusterManager(_launch(tool, count, **options))
