"""Supervision of single instances: crashes, hangs, floods and the classic subprocess bugs."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import attrs
import pytest
from structlog.testing import capture_logs

import aimcluster
from aimcluster import tools

from .conftest import alive, wait_gone

pytestmark = pytest.mark.anyio

FAST_RESTART = aimcluster.RestartPolicy(initial_delay=0.01, max_delay=0.05)


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_crash_fails_the_prompt_with_exit_code_and_partial_output(cluster_factory) -> None:
    cluster = await cluster_factory("mock", restart=FAST_RESTART)
    with pytest.raises(aimcluster.InstanceCrashedError) as info:
        await cluster.send("/crash 7")
    assert info.value.exit_code == 7
    assert info.value.partial_output == "crashing\n"
    assert info.value.instance == 0
    assert info.value.prompt == "/crash 7"


async def test_crashed_instance_is_restarted_and_serves_again(cluster_factory) -> None:
    cluster = await cluster_factory("mock", restart=FAST_RESTART)
    old_pid = cluster.pids[0]
    with pytest.raises(aimcluster.InstanceCrashedError):
        await cluster.send("/crash")
    assert (await cluster.send("back")).text == "echo: back"
    assert cluster.pids[0] not in (None, old_pid)
    metrics = cluster.metrics().instances[0]
    assert (metrics.restarts, metrics.sent, metrics.completed, metrics.failed) == (1, 2, 1, 1)
    assert alive([old_pid]) == []


async def test_prompts_queued_for_a_crashing_instance_are_delivered_after_restart(
    cluster_factory,
) -> None:
    cluster = await cluster_factory("mock", count=2, restart=FAST_RESTART)
    async with anyio.create_task_group() as tg:
        crash = await cluster.submit("/crash", instance=0)
        queued = [await cluster.submit(f"q{i}", instance=0) for i in range(3)]
        with pytest.raises(aimcluster.InstanceCrashedError):
            await crash
        replies = [await ticket for ticket in queued]
        tg.cancel_scope.cancel()
    assert [r.text for r in replies] == ["echo: q0", "echo: q1", "echo: q2"]
    assert {r.instance for r in replies} == {0}


async def test_idle_crash_is_detected_and_restarted_without_a_prompt(cluster_factory) -> None:
    cluster = await cluster_factory("mock", restart=FAST_RESTART)
    with capture_logs() as logs:
        cluster.restart_instance(0)
        await cluster.wait_for(
            lambda m: m.instances[0].restarts == 1 and m.instances[0].state == "ready",
            timeout=10,
        )
    assert [e["exit_code"] for e in logs if e["event"] == "instance_exited"] == [-9]
    assert (await cluster.send("hello")).text == "echo: hello"


async def test_four_megabyte_reply_comes_back_whole(cluster_factory) -> None:
    cluster = await cluster_factory("mock")
    reply = await cluster.send("/big 4194304")
    # Lines of 79 'x' and a newline; the trailing newline is stripped.
    assert len(reply.text) == 4194304 - 1
    assert set(reply.text) == {"x", "\n"}
    assert (await cluster.send("after")).text == "echo: after"


async def test_reply_over_the_cap_is_a_clear_error_and_the_instance_restarts(
    cluster_factory,
) -> None:
    spec = attrs.evolve(tools.mock(), max_reply_bytes=100_000)
    cluster = await cluster_factory(spec, restart=FAST_RESTART)
    with pytest.raises(aimcluster.ReplyTooLargeError, match="more than 100000 bytes"):
        await cluster.send("/big 300000")
    assert (await cluster.send("after")).text == "echo: after"
    assert cluster.metrics().instances[0].restarts == 1


async def test_output_flood_does_not_grow_parent_memory_past_the_cap(cluster_factory) -> None:
    spec = attrs.evolve(tools.mock(), max_reply_bytes=1 << 20)
    cluster = await cluster_factory(spec, restart=FAST_RESTART)
    await _flood_is_capped(cluster)


async def _flood_is_capped(cluster: aimcluster.Cluster) -> None:
    """A 100 MB flood fails its prompt alone, without growing the parent; the next prompt is
    answered."""
    before = _rss_kib()
    with pytest.raises(aimcluster.ReplyTooLargeError) as info:
        await cluster.send("/flood 100000000")
    growth_kib = _rss_kib() - before
    assert len(info.value.partial_output) <= 65536
    assert growth_kib < 16 * 1024, f"parent grew by {growth_kib} KiB during a 100 MB flood"
    assert (await cluster.send("after")).text == "echo: after"


@pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param(("trio", {}), id="trio"),
    ],
)
async def test_a_flood_read_eagerly_is_capped_and_spoils_no_other_instance(
    cluster_factory,
) -> None:
    """With another instance busy (leased), the flooding one's output is read in the event
    loop's callback on asyncio and uvloop (see ProcessHandle.receive_joined): still capped,
    still the flooding prompt's error alone, and the lease's instance goes on answering."""
    spec = attrs.evolve(tools.mock(), max_reply_bytes=1 << 20)
    cluster = await cluster_factory(spec, 2, restart=FAST_RESTART)
    async with cluster.lease() as session:
        assert (await session.send("held")).text == "echo: held"
        await _flood_is_capped(cluster)
        assert (await session.send("still held")).text == "echo: still held"


async def test_stalled_reply_is_killed_by_the_watchdog_and_restarted(cluster_factory) -> None:
    spec = attrs.evolve(tools.mock(), stall_timeout=0.3)
    cluster = await cluster_factory(spec, restart=FAST_RESTART)
    with pytest.raises(aimcluster.InstanceStalledError, match=r"printed nothing for 0\.3 s"):
        await cluster.send("/hang")
    assert (await cluster.send("after")).text == "echo: after"


async def test_watchdog_spares_a_slow_reply_that_keeps_printing(cluster_factory) -> None:
    # Twice as long as the watchdog's limit in all, a fifth of it between prints.
    spec = attrs.evolve(tools.python(), stall_timeout=1)
    cluster = await cluster_factory(spec, restart=FAST_RESTART)
    reply = await cluster.send(
        "[print(i, flush=True) or __import__('time').sleep(0.2) for i in range(10)] and None"
    )
    assert reply.text == "\n".join(str(i) for i in range(10))


async def test_cancelled_send_does_not_leak_its_reply_into_the_next_prompt(
    cluster_factory,
) -> None:
    cluster = await cluster_factory("mock")
    with anyio.move_on_after(0.1):
        await cluster.send("/sleep 0.4")
    assert (await cluster.send("next")).text == "echo: next"


async def test_cancelled_before_delivery_is_never_sent(cluster_factory) -> None:
    cluster = await cluster_factory("mock")
    async with anyio.create_task_group() as tg:
        tg.start_soon(cluster.send, "/sleep 2")
        await anyio.wait_all_tasks_blocked()
        with anyio.move_on_after(0.05):
            await cluster.send("/crash")
        tg.cancel_scope.cancel()
    assert (await cluster.send("alive")).text == "echo: alive"
    assert cluster.metrics().instances[0].restarts == 0


async def test_grandchild_holding_stdout_does_not_delay_exit_detection(cluster_factory) -> None:
    cluster = await cluster_factory("mock", restart=FAST_RESTART)
    grandchild = int((await cluster.send("/spawn")).text)
    with anyio.fail_after(5), pytest.raises(aimcluster.InstanceCrashedError) as info:
        await cluster.send("/crash 3")
    assert info.value.exit_code == 3
    assert wait_gone([grandchild]) == []
    assert (await cluster.send("after")).text == "echo: after"


async def test_child_ignoring_sigterm_is_sigkilled_after_the_grace_period() -> None:
    spec = attrs.evolve(tools.mock(), exit_command=None, shutdown_grace=0.2)
    with capture_logs() as logs:
        async with aimcluster.launch_cluster(spec) as cluster:
            assert (await cluster.send("/ignore-term")).text == "ignoring SIGTERM"
            pid = cluster.pids[0]
    assert alive([pid]) == []
    shutdown = next(e for e in logs if e["event"] == "cluster_shutdown")
    assert (shutdown["how"], shutdown["exit_code"]) == ("sigkill", -9)


async def test_sigterm_stops_a_tool_without_exit_command() -> None:
    spec = attrs.evolve(tools.mock(), exit_command=None)
    with capture_logs() as logs:
        async with aimcluster.launch_cluster(spec) as cluster:
            pid = cluster.pids[0]
    assert alive([pid]) == []
    shutdown = next(e for e in logs if e["event"] == "cluster_shutdown")
    assert (shutdown["how"], shutdown["exit_code"]) == ("sigterm", -15)


async def test_child_blocked_on_a_full_pipe_is_stopped_at_shutdown() -> None:
    spec = attrs.evolve(tools.mock(), shutdown_grace=0.2)
    async with aimcluster.launch_cluster(spec) as cluster:
        pid = cluster.pids[0]
        # The reply is far bigger than a pipe; nobody reads it once we stop.
        await cluster.submit("/big 50000000")
        await anyio.wait_all_tasks_blocked()
    assert wait_gone([pid]) == []


async def test_instance_that_exits_instantly_forever_runs_out_of_budget() -> None:
    spec = aimcluster.ToolSpec(
        name="flaky",
        argv=[sys.executable, "-c", "print('> ', end='', flush=True)"],
        ready="> ",
    )
    policy = aimcluster.RestartPolicy(initial_delay=0.01, max_restarts=3, window=60)
    with capture_logs() as logs:
        async with aimcluster.launch_cluster(spec, count=2, restart=policy) as cluster:
            with anyio.fail_after(10), pytest.raises(aimcluster.NoHealthyInstancesError):  # noqa: PT012
                while True:
                    try:
                        await cluster.send("x")
                    except aimcluster.InstanceCrashedError:
                        pass  # a prompt that reached a dying process; keep going
            states = [m.state for m in cluster.metrics().instances]
            restarts = [m.restarts for m in cluster.metrics().instances]
    assert states == ["failed", "failed"]
    assert restarts == [3, 3]
    assert sum(e["event"] == "instance_failed" for e in logs) == 2


async def test_without_restarts_a_crash_fails_the_instance_for_good() -> None:
    async with aimcluster.launch_cluster("mock", count=1, restart=False) as cluster:
        with pytest.raises(aimcluster.InstanceCrashedError):
            await cluster.send("/crash")
        await cluster.wait_for(lambda m: m.instances[0].state == "failed", timeout=5)
        with pytest.raises(aimcluster.NoHealthyInstancesError, match="all 1 instances"):
            await cluster.send("x")


async def test_queued_prompts_fail_typed_when_the_last_instance_fails() -> None:
    async with aimcluster.launch_cluster("mock", count=1, restart=False) as cluster:
        crash = await cluster.submit("/crash")
        waiting = [await cluster.submit(f"w{i}") for i in range(3)]
        with pytest.raises(aimcluster.InstanceCrashedError):
            await crash
        for ticket in waiting:
            with anyio.fail_after(5), pytest.raises(aimcluster.NoHealthyInstancesError):
                await ticket


async def test_failed_instance_traffic_moves_to_healthy_instances() -> None:
    async with aimcluster.launch_cluster(
        "mock", count=2, routing="round_robin", restart=False
    ) as cluster:
        with pytest.raises(aimcluster.InstanceCrashedError):
            await cluster.send("/crash", instance=0)
        await cluster.wait_for(lambda m: m.instances[0].state == "failed", timeout=5)
        replies = await cluster.map(["a", "b", "c"])
        assert {r.instance for r in replies} == {1}
        with pytest.raises(aimcluster.NoHealthyInstancesError, match="instance 0 has failed"):
            await cluster.send("x", instance=0)


async def test_retries_resend_a_prompt_whose_instance_crashed(cluster_factory) -> None:
    # Unseeded: a seeded agent would replay the same crash after every restart.
    spec = tools.mock(crash_rate=0.3)
    policy = attrs.evolve(FAST_RESTART, max_restarts=1000)
    cluster = await cluster_factory(spec, count=2, restart=policy)
    # 60 prompts: the chance that none crashes (0.7 ** 60) is below 1e-9.
    replies = await cluster.map([f"p{i}" for i in range(60)], retries=60)
    assert [r.text for r in replies] == [f"echo: p{i}" for i in range(60)]
    assert max(r.attempts for r in replies) > 1
