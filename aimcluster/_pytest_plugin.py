"""pytest plugin (entry point ``pytest11``): the ``cluster_factory`` fixture.

Use it from anyio tests::

    @pytest.mark.anyio
    async def test_repl(cluster_factory):
        cluster = await cluster_factory("python", count=2)
        assert (await cluster.send("1+1")).text == "2"

Every cluster the factory made is shut down at teardown, and its processes are gone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack
from typing import Any, Protocol

import pytest

from ._base.spec import ToolSpec
from ._core.cluster import Cluster, launch_cluster

__all__ = ["ClusterFactory", "cluster_factory"]


class ClusterFactory(Protocol):
    def __call__(self, tool: str | ToolSpec, count: int = 1, **options: Any) -> Awaitable[Cluster]:
        """Launch a cluster (as :func:`aimcluster.launch_cluster`) that ends with the test."""
        ...


@pytest.fixture
async def cluster_factory(anyio_backend: object) -> AsyncIterator[ClusterFactory]:
    async with AsyncExitStack() as stack:

        async def factory(tool: str | ToolSpec, count: int = 1, **options: Any) -> Cluster:
            return await stack.enter_async_context(launch_cluster(tool, count, **options))

        yield factory
