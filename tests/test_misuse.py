"""Wrong use fails fast: a cluster not entered, or used from another thread or event loop,
raises a clear RuntimeError at once, and the cluster still works for its own loop."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest

import aimcluster
from aimcluster import Cluster, Session

pytestmark = pytest.mark.anyio

NOT_ENTERED = re.escape("enter the cluster with `async with launch_cluster(...) as cluster:` first")
WRONG_LOOP = "a cluster belongs to the event loop that started it; from another thread use anyio"


async def _lease(cluster: Cluster) -> None:
    async with cluster.lease():
        pass  # pragma: no cover - entering must fail


async def _read_any(cluster: Cluster) -> None:
    await cluster.read_any(timeout=30)


async def _wait_for(cluster: Cluster) -> None:
    await cluster.wait_for(lambda m: False, timeout=30)


# Every public coroutine of Cluster, called as a user would.
COROUTINES: dict[str, Callable[[Cluster], Awaitable[object]]] = {
    "send": lambda c: c.send("hello"),
    "submit": lambda c: c.submit("hello"),
    "map": lambda c: c.map(["a", "b"]),
    "read_any": _read_any,
    "lease": _lease,
    "scale": lambda c: c.scale(2),
    "restart": lambda c: c.restart(0, timeout=30),
    "wait_for": _wait_for,
    "shutdown": lambda c: c.shutdown(),
}
# And its public methods that change or read the state.
METHODS: dict[str, Callable[[Cluster], object]] = {
    "metrics": lambda c: c.metrics(),
    "restart_instance": lambda c: c.restart_instance(0),
}


async def _still_works(cluster: Cluster) -> None:
    """Nothing the wrong caller tried left a trace: the cluster serves its own loop."""
    reply = await cluster.send("after")
    assert reply.text == "echo: after"
    metrics = cluster.metrics()
    assert metrics.queued == 0
    assert [(m.state, m.restarts, m.in_flight) for m in metrics.instances] == [("ready", 0, 0)]


@pytest.mark.parametrize("name", sorted(COROUTINES))
async def test_a_coroutine_of_a_cluster_not_entered_raises_runtime_error(name: str) -> None:
    cluster = aimcluster.launch_cluster("mock")
    with anyio.fail_after(5), pytest.raises(RuntimeError, match=NOT_ENTERED):
        await COROUTINES[name](cluster)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_method_of_a_cluster_not_entered_raises_runtime_error(name: str) -> None:
    cluster = aimcluster.launch_cluster("mock")
    with pytest.raises(RuntimeError, match=NOT_ENTERED):
        METHODS[name](cluster)


def _other_backend(anyio_backend: tuple[str, dict[str, object]]) -> str:
    return "trio" if anyio_backend[0] == "asyncio" else "asyncio"


async def _misuse(name: str, cluster: Cluster, session: Session) -> BaseException | None:
    """Call *name* on *cluster* (or *session*) as a user would; return what it raised."""
    try:
        if name in METHODS:
            METHODS[name](cluster)
        else:
            # Bounded: before the fix, asyncio waited here forever.
            with anyio.fail_after(5):
                if name == "Session.send":
                    await session.send("hello")
                else:
                    await COROUTINES[name](cluster)
    except BaseException as exc:
        return exc
    return None


@pytest.mark.parametrize("name", [*sorted(COROUTINES), *sorted(METHODS), "Session.send"])
@pytest.mark.parametrize("same_backend", [True, False], ids=["same-backend", "other-backend"])
async def test_a_cluster_used_from_another_event_loop_fails_fast(
    anyio_backend: tuple[str, dict[str, object]], same_backend: bool, name: str
) -> None:
    backend = anyio_backend[0] if same_backend else _other_backend(anyio_backend)
    async with aimcluster.launch_cluster("mock") as cluster:
        # A live session of this loop, used from the other one.
        async with cluster.lease() as session:
            with anyio.fail_after(30):
                error = await anyio.to_thread.run_sync(
                    lambda: anyio.run(_misuse, name, cluster, session, backend=backend),
                    abandon_on_cancel=True,
                )
        await _still_works(cluster)
    # Checked out here: before the fix, a cluster misused from another loop could swallow an
    # AssertionError raised inside its block on the way out.
    assert isinstance(error, RuntimeError), error
    assert "the cluster of 'mock' was used from another thread" in str(error)
    assert WRONG_LOOP in str(error)


@pytest.mark.parametrize("name", [*sorted(COROUTINES), *sorted(METHODS)])
async def test_a_cluster_called_from_a_plain_thread_fails_fast(name: str) -> None:
    async with aimcluster.launch_cluster("mock") as cluster:

        def misuse() -> BaseException | None:
            if name in METHODS:
                try:
                    METHODS[name](cluster)
                except BaseException as exc:
                    return exc
                return None
            # A coroutine stepped by hand, with no event loop at all in this thread.
            coroutine: Any = COROUTINES[name](cluster)
            if not hasattr(coroutine, "send"):  # lease(): an async context manager
                coroutine = coroutine.__aenter__()
            try:
                coroutine.send(None)
            except BaseException as exc:
                return exc
            finally:
                coroutine.close()
            return None

        with anyio.fail_after(30):
            error = await anyio.to_thread.run_sync(misuse, abandon_on_cancel=True)
        await _still_works(cluster)
    assert isinstance(error, RuntimeError), error
    assert WRONG_LOOP in str(error)


async def test_another_thread_uses_the_cluster_through_a_portal() -> None:
    async with aimcluster.launch_cluster("mock") as cluster:

        def use() -> tuple[str, int]:
            reply = anyio.from_thread.run(cluster.send, "via portal")
            metrics = anyio.from_thread.run_sync(cluster.metrics)
            return reply.text, len(metrics.instances)

        with anyio.fail_after(30):
            assert await anyio.to_thread.run_sync(use) == ("echo: via portal", 1)


async def test_metrics_may_be_read_from_any_thread_once_the_cluster_is_shut_down() -> None:
    async with aimcluster.launch_cluster("mock") as cluster:
        pass
    metrics = await anyio.to_thread.run_sync(cluster.metrics)
    assert [m.state for m in metrics.instances] == ["stopped"]
