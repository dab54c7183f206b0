"""Supervision policy at the cluster level: probes, recycling, graceful restart, scaling,
quarantine."""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

import anyio
import attrs
import pytest
import structlog
from structlog.testing import capture_logs

import aimcluster
from aimcluster import tools
from aimcluster._base.routing import rendezvous

from .conftest import wait_gone

pytestmark = pytest.mark.anyio

FAST_RESTART = aimcluster.RestartPolicy(initial_delay=0.01, max_delay=0.05)


def _all_ready(metrics: aimcluster.ClusterMetrics) -> bool:
    return all(m.state == "ready" for m in metrics.instances)


async def test_failing_probe_restarts_an_idle_instance(cluster_factory) -> None:
    probe = aimcluster.Probe(command="/echo pong", expect="^ping$", interval=0.1, timeout=1)
    spec = attrs.evolve(tools.mock(), probe=probe)
    cluster = await cluster_factory(spec, restart=FAST_RESTART)
    with capture_logs() as logs:
        await cluster.wait_for(lambda m: m.instances[0].restarts >= 1, timeout=10)
    failed = next(e for e in logs if e["event"] == "probe_failed")
    assert failed["reply"] == "pong"
    # Probes are not user prompts: they do not show in the counters.
    assert cluster.metrics().sent == 0


async def test_passing_probe_keeps_the_instance(cluster_factory) -> None:
    probe = aimcluster.Probe(command="/echo pong", expect="^pong$", interval=0.05, timeout=1)
    spec = attrs.evolve(tools.mock(), probe=probe)
    passed = 0
    three_passed = anyio.Event()

    def count_passes(_logger: object, _method: str, event: dict[str, object]) -> NoReturn:
        nonlocal passed
        if event["event"] == "probe_passed":
            passed += 1
            if passed == 3:
                three_passed.set()
        raise structlog.DropEvent

    logger = structlog.wrap_logger(
        None,
        processors=[count_passes],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
    cluster = await cluster_factory(spec, restart=FAST_RESTART, logger=logger)
    with anyio.fail_after(10):
        await three_passed.wait()
    assert cluster.metrics().instances[0].restarts == 0
    assert (await cluster.send("hi")).text == "echo: hi"


async def test_hung_probe_times_out_and_restarts(cluster_factory) -> None:
    probe = aimcluster.Probe(command="/hang", expect="never", interval=0.05, timeout=0.2)
    spec = attrs.evolve(tools.mock(), probe=probe)
    cluster = await cluster_factory(spec, restart=FAST_RESTART)
    await cluster.wait_for(lambda m: m.instances[0].restarts >= 1, timeout=10)


async def test_instance_is_recycled_after_max_prompts(cluster_factory) -> None:
    spec = attrs.evolve(tools.mock(), max_prompts=3, recycle_jitter=0)
    cluster = await cluster_factory(spec)
    first_pid = cluster.pids[0]
    with capture_logs() as logs:
        for i in range(3):
            assert (await cluster.send(f"p{i}")).text == f"echo: p{i}"
        await cluster.wait_for(lambda m: m.instances[0].restarts == 1 and _all_ready(m), timeout=10)
    assert cluster.pids[0] != first_pid
    recycled = next(e for e in logs if e["event"] == "instance_recycled")
    assert (recycled["how"], recycled["exit_code"]) == ("exit_command", 0)
    assert wait_gone([first_pid]) == []


async def test_instance_is_recycled_after_max_age(cluster_factory) -> None:
    spec = attrs.evolve(tools.mock(), max_age=0.3, recycle_jitter=0)
    cluster = await cluster_factory(spec)
    await cluster.wait_for(lambda m: m.instances[0].restarts >= 1, timeout=10)
    assert (await cluster.send("x")).text == "echo: x"


async def test_recycle_jitter_spreads_max_prompts() -> None:
    spec = attrs.evolve(tools.mock(), max_prompts=100, recycle_jitter=0.5)
    seen = set()
    async with aimcluster.launch_cluster(spec, count=6) as cluster:
        for instance in cluster._instances:
            recycle_after = instance._upkeep.recycle_after
            assert recycle_after is not None
            assert 50 <= recycle_after <= 150
            seen.add(recycle_after)
    assert len(seen) > 1


async def test_restart_waits_for_the_prompt_in_flight_then_restarts(cluster_factory) -> None:
    cluster = await cluster_factory("mock", restart=FAST_RESTART)
    old_pid = cluster.pids[0]
    ticket = await cluster.submit("/sleep 0.3")
    await anyio.wait_all_tasks_blocked()
    await cluster.restart(0, timeout=10)
    assert (await ticket).text == "slept 0.3"
    assert cluster.pids[0] != old_pid
    assert cluster.metrics().instances[0].restarts == 1
    assert (await cluster.send("x")).text == "echo: x"


async def test_scale_up_adds_ready_instances(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=2)
    await cluster.scale(4)
    assert cluster.size == 4
    assert _all_ready(cluster.metrics())
    replies = await cluster.map(["/sleep 0.3"] * 4)
    assert sorted(r.instance for r in replies) == [0, 1, 2, 3]
    assert (await cluster.send("x", instance=3)).instance == 3


async def test_scale_down_drains_in_flight_prompts_first(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=3, routing="round_robin")
    pids = cluster.pids
    tickets = [await cluster.submit("/sleep 0.3", instance=i) for i in range(3)]
    await anyio.wait_all_tasks_blocked()
    await cluster.scale(1)
    assert cluster.size == 1
    assert [(await t).text for t in tickets] == ["slept 0.3"] * 3
    assert wait_gone(pids[1:]) == []
    assert [m.index for m in cluster.metrics().instances] == [0]
    with pytest.raises(ValueError, match=r"instance must be in range\(0, 1\), got 2"):
        await cluster.send("x", instance=2)


async def test_scale_down_moves_queued_work_to_remaining_instances(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=2, routing="round_robin")
    busy = [await cluster.submit("/sleep 0.3", instance=i) for i in range(2)]
    queued = [await cluster.submit(f"q{i}") for i in range(4)]
    await anyio.wait_all_tasks_blocked()
    await cluster.scale(1)
    assert [(await t).text for t in queued] == [f"echo: q{i}" for i in range(4)]
    assert {(await t).instance for t in queued} == {0}
    for ticket in busy:
        await ticket


async def test_scaling_moves_only_the_sticky_keys_of_removed_instances(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=4, routing="sticky")
    keys = [f"file{i}.py" for i in range(40)]
    before = {r.key: r.instance for r in await cluster.map(["x"] * 40, keys=keys)}
    await cluster.scale(3)
    after = {r.key: r.instance for r in await cluster.map(["x"] * 40, keys=keys)}
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == 3}
    assert all(after[k] == rendezvous(k, range(3)) for k in keys)


async def test_scale_rejects_bad_sizes(cluster_factory) -> None:
    cluster = await cluster_factory("mock")
    with pytest.raises(ValueError, match="count must be an integer >= 1, got 0"):
        await cluster.scale(0)


async def test_quarantined_instance_comes_back_with_a_fresh_budget(cluster_factory) -> None:
    policy = aimcluster.RestartPolicy(initial_delay=0.01, max_restarts=1, window=60, quarantine=2)
    cluster = await cluster_factory("mock", count=1, restart=policy)
    for _ in range(2):
        with pytest.raises(aimcluster.InstanceCrashedError):
            await cluster.send("/crash")
    await cluster.wait_for(lambda m: m.instances[0].state == "failed", timeout=5)
    with pytest.raises(aimcluster.NoHealthyInstancesError):
        await cluster.send("x")
    await cluster.wait_for(_all_ready, timeout=10)
    assert (await cluster.send("back")).text == "echo: back"


async def test_sticky_keys_of_a_failed_instance_move_to_healthy_ones() -> None:
    async with aimcluster.launch_cluster(
        "mock", count=3, routing="sticky", restart=False
    ) as cluster:
        key = next(k for k in (f"k{i}" for i in range(100)) if rendezvous(k, range(3)) == 1)
        with pytest.raises(aimcluster.InstanceCrashedError):
            await cluster.send("/crash", key=key)
        await cluster.wait_for(lambda m: m.instances[1].state == "failed", timeout=5)
        reply = await cluster.send("x", key=key)
        assert reply.instance == rendezvous(key, [0, 2])


async def test_backoff_grows_between_consecutive_restarts(cluster_factory) -> None:
    spec = aimcluster.ToolSpec(
        name="flaky", argv=[sys.executable, "-c", "print('> ', end='', flush=True)"], ready="> "
    )
    policy = aimcluster.RestartPolicy(
        initial_delay=0.01, multiplier=2, jitter=0, max_restarts=4, window=60
    )
    with capture_logs() as logs:
        cluster = await cluster_factory(spec, restart=policy)
        await cluster.wait_for(lambda m: m.instances[0].state == "failed", timeout=10)
    delays = [e["delay"] for e in logs if e["event"] == "instance_restarting"]
    assert delays == [0.01, 0.02, 0.04, 0.08]
