"""The cluster_factory fixture, as a user's test suite sees it (through pytester)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = """
import os
import pytest

pytestmark = pytest.mark.anyio

@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param

async def test_two_clusters(cluster_factory, tmp_path_factory):
    mock = await cluster_factory("mock", count=2)
    repl = await cluster_factory("python")
    assert (await mock.send("hi")).text == "echo: hi"
    assert (await repl.send("6*7")).text == "42"
    pids = [p for p in (*mock.pids, *repl.pids)]
    (tmp_path_factory.getbasetemp() / f"pids-{os.getpid()}").write_text(" ".join(map(str, pids)))
"""


def test_cluster_factory_shuts_every_cluster_down_at_teardown(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--basetemp=bt")
    result.assert_outcomes(passed=2)
    pid_files = list((pytester.path / "bt").glob("pids-*"))
    assert len(pid_files) == 1
    pids = [int(p) for p in pid_files[0].read_text().split()]
    assert len(pids) == 3
    from .conftest import alive

    assert alive(pids) == []
