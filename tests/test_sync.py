"""The blocking layer: a cluster called from code that runs no event loop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import aimcluster
from aimcluster import tools
from aimcluster.sync import launch_cluster

from .conftest import wait_gone

backends = pytest.mark.parametrize("backend", ["asyncio", "trio"])


@backends
def test_every_call_of_the_async_cluster_is_there_blocking(backend: str) -> None:
    with launch_cluster("python", 2, backend=backend) as cluster:
        assert cluster.send("6*7").text == "42"
        assert [r.text for r in cluster.map(["1+1", "2**10", "'x' * 3"])] == ["2", "1024", "'xxx'"]
        tickets = [cluster.submit(f"{n} * 2") for n in range(4)]
        assert sorted(cluster.read_any(timeout=30).text for _ in tickets) == ["0", "2", "4", "6"]
        ticket = cluster.submit("'waited'")
        assert cluster.wait(ticket).text == "'waited'"
        with cluster.lease() as session:
            session.send("x = 21")
            assert session.send("x * 2").text == "42"
            held = session.instance
        assert cluster.send("x * 2", instance=held).text == "42"  # the same process, state kept
        metrics = cluster.metrics()
        assert (metrics.completed, metrics.failed) == (12, 0)
        assert cluster.size == 2
        pids = cluster.pids
    assert wait_gone(pids) == []
    assert cluster.metrics().completed == 12  # still readable, from any thread
    with pytest.raises(aimcluster.ClusterClosedError):
        cluster.send("1")


@backends
def test_an_explicit_shutdown_is_enough_and_can_be_repeated(backend: str) -> None:
    cluster = launch_cluster("mock", 2, backend=backend)
    assert cluster.send("hi").text == "echo: hi"
    pids = cluster.pids
    cluster.shutdown()
    cluster.shutdown()
    assert wait_gone(pids) == []


@backends
def test_an_error_in_the_block_leaves_no_process(backend: str) -> None:
    pids: list[int | None] = []

    def fail() -> None:
        with launch_cluster("mock", 2, backend=backend) as cluster:
            pids.extend(cluster.pids)
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        fail()
    assert len(pids) == 2
    assert wait_gone(pids) == []


@backends
def test_a_tool_error_is_raised_as_itself(backend: str) -> None:
    with launch_cluster(tools.mock(), 1, backend=backend) as cluster:
        with pytest.raises(aimcluster.InstanceCrashedError, match="exited with code 4"):
            cluster.send("/crash 4")
        with pytest.raises(TimeoutError):
            cluster.read_any(timeout=0.05)


@backends
def test_ctrl_c_during_a_send_shuts_the_cluster_down(backend: str) -> None:
    with launch_cluster(tools.mock(), 1, backend=backend) as cluster:
        pids = cluster.pids
        # Ctrl-C (SIGINT) while the main thread waits for a reply that takes a while.
        timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        started = time.monotonic()
        try:
            with pytest.raises(KeyboardInterrupt):
                cluster.send("/sleep 30")
        finally:
            timer.cancel()
    assert time.monotonic() - started < 20
    assert wait_gone(pids) == []


@pytest.mark.parametrize("ending", ["return", "exception", "sys.exit"])
def test_interpreter_exit_without_a_shutdown_leaves_no_process(ending: str) -> None:
    # The program forgets to shut the cluster down: it still exits at once, and its tools
    # are shut down on the way out.
    end = {"return": "", "exception": "raise SystemError('boom')", "sys.exit": "sys.exit(3)"}
    script = (
        "import sys\n"
        "from aimcluster.sync import launch_cluster\n"
        "cluster = launch_cluster('mock', 2)\n"
        "print(*cluster.pids, flush=True)\n"
        f"{end[ending]}\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    pids = [int(pid) for pid in done.stdout.split()]
    assert len(pids) == 2, done.stderr
    assert done.returncode == {"return": 0, "exception": 1, "sys.exit": 3}[ending]
    assert wait_gone(pids) == []


def test_a_program_killed_outright_takes_its_tools_along() -> None:
    script = (
        "import os, signal\n"
        "from aimcluster.sync import launch_cluster\n"
        "cluster = launch_cluster('mock', 2)\n"
        "print(*cluster.pids, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    pids = [int(pid) for pid in done.stdout.split()]
    assert len(pids) == 2, done.stderr
    assert wait_gone(pids) == []


def test_bad_arguments_fail_before_any_thread_starts() -> None:
    threads = threading.active_count()
    with pytest.raises(ValueError, match="count must be"):
        launch_cluster("mock", 0)
    with pytest.raises(ValueError, match="unknown tool"):
        launch_cluster("no-such-tool")
    assert threading.active_count() == threads


def test_a_tool_that_does_not_start_raises_and_leaves_no_thread() -> None:
    threads = threading.active_count()
    spec = aimcluster.ToolSpec(name="gone", argv=[sys.executable, "-c", "pass"], ready="> ")
    with pytest.raises(aimcluster.StartupError):
        launch_cluster(spec, 1, restart=False)
    assert threading.active_count() == threads  # the loop thread was joined


def test_a_session_kept_after_shutdown_says_the_cluster_is_shut_down() -> None:
    cluster = launch_cluster("mock", 1)
    with cluster.lease() as session:
        assert session.send("hi").text == "echo: hi"
    cluster.shutdown()
    with pytest.raises(aimcluster.ClusterClosedError):
        session.send("again")


def test_a_cluster_of_several_pools_is_routed_by_tool_from_a_thread() -> None:
    with launch_cluster({"mock": 1, "python": 1}) as cluster:
        assert cluster.send("6*7", tool="python").text == "42"
        assert [r.tool for r in cluster.map(["1", "2"], tool="python")] == ["python"] * 2
        ticket = cluster.submit("hello", tool="mock")
        assert cluster.wait(ticket).tool == "mock"
        with cluster.lease(tool="python") as session:
            assert session.tool == "python"
            assert session.send("1+1").text == "2"
        cluster.scale(2, tool="python")
        assert cluster.size == 3
