"""Helpers for tests of code that uses aimcluster (and for aimcluster's own tests).

The ``cluster_factory`` pytest fixture comes from the plugin that is registered on install.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING

import anyio
import attrs

if TYPE_CHECKING:
    from ._core.cluster import Cluster

__all__ = ["ChaosMonkey", "chaos_monkey", "ray_loopback_only"]


@attrs.define
class ChaosMonkey:
    """What a :func:`chaos_monkey` did: how many processes it killed, and every pid it saw."""

    #: Process groups SIGKILLed.
    kills: int = 0
    #: Every instance pid seen while the monkey ran.
    pids: set[int] = attrs.field(factory=set)
    #: :func:`anyio.current_time` of the last kill.
    last_kill: float | None = None


@asynccontextmanager
async def chaos_monkey(
    cluster: Cluster,
    *,
    interval: tuple[float, float] = (0.05, 0.1),
    seed: int | None = None,
) -> AsyncIterator[ChaosMonkey]:
    """SIGKILL the process group of a random running instance every *interval* seconds
    (uniformly drawn) while the block runs, from outside the cluster, as the OOM killer
    would."""
    rng = random.Random(seed)
    monkey = ChaosMonkey()

    async def run() -> None:
        while True:
            await anyio.sleep(rng.uniform(*interval))
            running = [pid for pid in cluster.pids if pid is not None]
            monkey.pids.update(running)
            if not running:
                continue
            try:
                os.killpg(rng.choice(running), signal.SIGKILL)
            except ProcessLookupError:
                continue
            monkey.kills += 1
            monkey.last_kill = anyio.current_time()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        try:
            yield monkey
        finally:
            tg.cancel_scope.cancel()
            monkey.pids.update(pid for pid in cluster.pids if pid is not None)


@contextmanager
def ray_loopback_only() -> Iterator[None]:
    """Keep every process of a local Ray test cluster on 127.0.0.1.

    A test cluster has no business on the machine's other addresses. Ray takes its node
    address from this switch (read when ray is imported, so in this process the constant is
    patched as well) rather than from ``node_ip_address``, which it gives the GCS but not the
    address it advertises. Needs Ray (``pip install 'aimcluster[ray]'``).
    """
    from ray._private import ray_constants

    saved = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    saved_constant = ray_constants.ENABLE_RAY_CLUSTER
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_constant
        if saved is None:
            del os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"]
        else:
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = saved
