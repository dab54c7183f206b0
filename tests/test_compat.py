"""The synchronous prototype's own snippets, unchanged apart from the import line."""

from __future__ import annotations

import pytest

import aimcluster
from aimcluster.compat import ToolProcessPool, launch_cluster

from .conftest import wait_gone

backends = pytest.mark.parametrize("backend", ["asyncio", "trio"])


@backends
def test_the_prototype_pool_snippet(backend: str) -> None:
    pool = ToolProcessPool("mock", count=3, backend=backend)
    pool.send_prompt(0, "/add file1.py")
    # Its reply is collected by read_any, from instance 0.
    reply = pool.read_any(timeout=30)
    assert (reply.text, reply.instance) == ("No such file: file1.py", 0)
    pids = pool._cluster.pids
    pool.shutdown()
    assert wait_gone(pids) == []


@backends
def test_the_prototype_cluster_snippet(backend: str) -> None:
    cluster = launch_cluster("mock", count=3, backend=backend)
    cluster.send("/add my_file.py")
    response = cluster.read_any(timeout=30)
    cluster.shutdown()
    assert response.text == "No such file: my_file.py"


@backends
def test_each_prompt_sent_is_collected_once_by_read_any(backend: str) -> None:
    with ToolProcessPool(aimcluster.tools.mock(delay=0.01), count=3, backend=backend) as pool:
        for index in range(3):
            for n in range(4):
                pool.send_prompt(index, f"{index}-{n}")
        replies = [pool.read_any(timeout=30) for _ in range(12)]
        assert sorted((r.instance, r.text) for r in replies) == sorted(
            (index, f"echo: {index}-{n}") for index in range(3) for n in range(4)
        )
        with pytest.raises(TimeoutError):
            pool.read_any(timeout=0.05)
        assert pool.count == 3
        assert pool.metrics().completed == 12


def test_a_crash_is_read_as_that_prompts_error() -> None:
    with launch_cluster("mock", count=1) as cluster:
        cluster.send("/crash 5")
        with pytest.raises(aimcluster.InstanceCrashedError, match="code 5"):
            cluster.read_any(timeout=30)
