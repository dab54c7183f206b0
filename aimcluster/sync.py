"""The cluster for code that does not run an event loop: scripts, notebooks, the REPL.

A blocking layer over the async core, as httpx keeps a sync client beside its async one. Each
:class:`Cluster` runs an event loop of its own in a daemon thread and calls the async
:class:`aimcluster.Cluster` through an anyio blocking portal into it, so every call is the
async call, made in the loop that owns the cluster::

    from aimcluster.sync import launch_cluster

    with launch_cluster("python", 3) as cluster:
        print(cluster.send("6*7").text)  # '42'
        print([r.text for r in cluster.map(["1+1", "2**10"])])
        with cluster.lease() as session:
            session.send("x = 21")
            print(session.send("x * 2").text)

It works as a context manager and with an explicit :meth:`Cluster.shutdown`. Whatever ends the
program leaves no process behind: an exception or Ctrl-C in the ``with`` block shuts the
cluster down on the way out, interpreter exit shuts down every cluster still running (an
:mod:`atexit` hook), and a program that dies outright takes its tools with it, as every
cluster's tools do (see the README's containment notes).

The async API (:func:`aimcluster.launch_cluster`) stays the primary one; this layer adds a
thread hop to every call, about 50-100 µs. Code written against the synchronous prototype,
whose ``send`` returned at once, has :mod:`aimcluster.compat`.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from types import TracebackType
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from ._base.errors import ClusterClosedError
from ._base.lease import Session as AsyncSession
from ._base.metrics import ClusterMetrics
from ._base.request import Reply, Ticket
from ._base.spec import ToolSpec
from ._core import cluster as _cluster
from ._core.pool import Pool

__all__ = ["Cluster", "Session", "launch_cluster"]

_T = TypeVar("_T")

#: How long interpreter exit waits for each cluster still running to shut down.
_EXIT_GRACE = 30.0


class _LoopThread:
    """An event loop in a daemon thread, and a portal into it.

    A daemon thread, so that a program that forgot to shut down still exits: the atexit hook
    below shuts its clusters down first, while the thread still runs.
    """

    def __init__(self, backend: str) -> None:
        self.portal: BlockingPortal | None = None
        started = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            async with BlockingPortal() as portal:
                self.portal = portal
                started.set()
                await portal.sleep_until_stopped()

        def run() -> None:
            try:
                anyio.run(serve, backend=backend)
            except BaseException as exc:  # an unknown backend, say: told to the caller
                failure.append(exc)
                started.set()

        self._thread = threading.Thread(target=run, name="aimcluster-loop", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]

    def call(self, func: Callable[[], Awaitable[_T]]) -> _T:
        """What *func* returns, awaited in the loop."""
        assert self.portal is not None
        return self.portal.call(func)

    def call_sync(self, func: Callable[[], _T]) -> _T:
        """What *func* returns, called in the loop's thread."""
        assert self.portal is not None
        return self.portal.call(func)

    def stop(self) -> None:
        if self.portal is not None and self._thread.is_alive():
            try:
                self.portal.call(self.portal.stop, True)
            except RuntimeError:
                pass  # the loop is gone already
        self._thread.join(timeout=_EXIT_GRACE)


class Session:
    """One instance held exclusively (see :meth:`aimcluster.Cluster.lease`), from a thread."""

    def __init__(self, cluster: Cluster, session: AsyncSession) -> None:
        self._cluster = cluster
        self._session = session

    @property
    def instance(self) -> int:
        """The index of the instance held."""
        return self._session.instance

    @property
    def tool(self) -> str:
        """The name of the held instance's pool."""
        return self._session.tool

    def send(self, prompt: str, *, timeout: float | None = None) -> Reply:
        """Send *prompt* to the held instance and return its reply."""
        return self._cluster._call(partial(self._session.send, prompt, timeout=timeout))


class Cluster:
    """A running cluster, called from threads that run no event loop. Made by
    :func:`launch_cluster`; the methods are those of :class:`aimcluster.Cluster`, blocking."""

    def __init__(
        self,
        tool: str | ToolSpec | Mapping[str, int] | Sequence[Pool | tuple[str | ToolSpec, int]],
        count: int,
        backend: str,
        options: Any,
    ) -> None:
        # Raises ValueError for bad arguments before any thread starts.
        described = _cluster.launch_cluster(tool, count, **options)
        self._loop = _LoopThread(backend)
        self._lock = threading.Lock()
        self._stopped = False
        self._block: AbstractContextManager[_cluster.Cluster] | None = None
        try:
            assert self._loop.portal is not None
            # One task enters and leaves the async cluster: its task group must be left by
            # the task that entered it.
            block = self._loop.portal.wrap_async_context_manager(described)
            self._cluster = block.__enter__()
            self._block = block
        except BaseException:
            self._loop.stop()
            raise
        _running.add(self)

    # -- prompts ----------------------------------------------------------------------------

    def send(
        self,
        prompt: str,
        *,
        key: str | None = None,
        instance: int | None = None,
        tool: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
    ) -> Reply:
        """Send *prompt* and return its reply (see :meth:`aimcluster.Cluster.send`)."""
        send = partial(self._cluster.send, key=key, instance=instance, tool=tool)
        return self._call(partial(send, prompt, timeout=timeout, retries=retries))

    def submit(
        self,
        prompt: str,
        *,
        key: str | None = None,
        instance: int | None = None,
        tool: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
    ) -> Ticket:
        """Route *prompt* now; collect its reply with :meth:`read_any` or :meth:`wait`."""
        submit = partial(self._cluster.submit, key=key, instance=instance, tool=tool)
        return self._call(partial(submit, prompt, timeout=timeout, retries=retries))

    def wait(self, ticket: Ticket) -> Reply:
        """The reply of a submitted prompt, once it is there."""
        return self._call(ticket.wait)

    def read_any(self, timeout: float | None = None) -> Reply:
        """The next reply of a submitted prompt to complete, in completion order.

        :raises TimeoutError: if nothing completes within *timeout* seconds
        """
        return self._call(partial(self._cluster.read_any, timeout))

    def map(
        self,
        prompts: Iterable[str],
        *,
        keys: Iterable[str | None] | None = None,
        tool: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
    ) -> list[Reply]:
        """Send *prompts* concurrently; their replies in input order."""
        prompts = list(prompts)
        run = partial(self._cluster.map, keys=keys, tool=tool, timeout=timeout, retries=retries)
        return self._call(partial(run, prompts))

    @contextmanager
    def lease(
        self, key: str | None = None, *, instance: int | None = None, tool: str | None = None
    ) -> Iterator[Session]:
        """Hold one instance exclusively for the duration of the block."""
        self._check_running()
        assert self._loop.portal is not None
        held = self._loop.portal.wrap_async_context_manager(
            self._cluster.lease(key, instance=instance, tool=tool)
        )
        with held as session:
            yield Session(self, session)

    # -- observing and steering -------------------------------------------------------------

    def metrics(self) -> ClusterMetrics:
        """A snapshot of the cluster's and each instance's counters and state."""
        if self._stopped:
            try:
                return self._cluster.metrics()  # frozen once shut down: any thread may read it
            except RuntimeError:
                # Its shutdown was interrupted (Ctrl-C) before the cluster had closed.
                raise ClusterClosedError("the cluster is shut down") from None
        return self._call_sync(self._cluster.metrics)

    @property
    def size(self) -> int:
        return self._cluster.size

    @property
    def pids(self) -> list[int | None]:
        """Each instance's process id (``None`` while it has none)."""
        return self._call_sync(lambda: self._cluster.pids)

    def scale(self, count: int, *, tool: str | None = None) -> None:
        self._call(partial(self._cluster.scale, count, tool=tool))

    def restart(self, index: int, *, timeout: float | None = None) -> None:
        self._call(partial(self._cluster.restart, index, timeout=timeout))

    # -- life -----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop every instance and the cluster's event loop. Idempotent."""
        self._leave(None, None, None)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._leave(exc_type, exc, tb)

    def _leave(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        _running.discard(self)
        try:
            if self._block is not None:
                # Not the caller's exception: a KeyboardInterrupt or an error in the with block
                # is the caller's to see, and the cluster shuts down either way.
                self._block.__exit__(None, None, None)
        finally:
            self._loop.stop()

    def _check_running(self) -> None:
        if self._stopped:
            raise ClusterClosedError("the cluster is shut down")

    def _call(self, func: Callable[[], Awaitable[_T]]) -> _T:
        self._check_running()
        return self._loop.call(func)

    def _call_sync(self, func: Callable[[], _T]) -> _T:
        self._check_running()
        return self._loop.call_sync(func)


def launch_cluster(
    tool: str | ToolSpec | Mapping[str, int] | Sequence[Pool | tuple[str | ToolSpec, int]],
    count: int = 1,
    *,
    backend: str = "asyncio",
    **options: Any,
) -> Cluster:
    """Start a cluster of *count* instances of *tool* (or of several pools, as
    :func:`aimcluster.launch_cluster` takes them) and return it once every instance is ready;
    use it as a context manager or call :meth:`Cluster.shutdown` when done.

    *options* are those of :func:`aimcluster.launch_cluster` (``routing``, ``restart``,
    ``max_pending``, ``transport``, ``logger``, ``fallback``, ``failover_after``); *backend*
    is the event loop the cluster runs on in its thread (``"asyncio"`` or ``"trio"``).
    """
    return Cluster(tool, count, backend, options)


#: Clusters started and not yet shut down: interpreter exit shuts them down. (Held strongly:
#: a cluster dropped without a shutdown still runs, and must still be shut down.)
_running: set[Cluster] = set()


@atexit.register
def _shutdown_at_exit() -> None:
    for cluster in list(_running):
        try:
            cluster.shutdown()
        except Exception:
            pass  # exiting anyway: the tools die with this process regardless
