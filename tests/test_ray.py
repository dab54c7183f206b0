"""RayTransport on a local Ray cluster: a head and two more nodes, all on this machine.

The cluster is started once per module, before any test's process snapshot (a fixture of wider
scope is set up first), so conftest's ``no_leaked_processes`` sees only what a test itself
leaves behind: Ray's worker processes for the test's actors, and the tools they host.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

if os.environ.get("AIMCLUSTER_REQUIRE_RAY") != "1":
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'aimcluster[ray]')")

import ray
from ray.cluster_utils import Cluster as RayCluster

import aimcluster
from aimcluster import tools
from aimcluster._base.framing import OneshotFraming  # not exported from aimcluster yet
from aimcluster.ray import RayTransport, ToolHost, _Exited, _Started
from aimcluster.testing import ray_loopback_only

from .conftest import alive, wait_gone

pytestmark = [pytest.mark.ray, pytest.mark.anyio]

# Ray's minimum object store; one CPU each, as on a small machine.
NODE: dict[str, Any] = {"num_cpus": 1, "object_store_memory": 75 * 1024 * 1024}
# A custom resource only the last node has, for pinning by resources.
SLOT = "aimcluster_test_slot"
FAST_RESTART = aimcluster.RestartPolicy(initial_delay=0.01, jitter=0, max_restarts=5)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    with ray_loopback_only():
        cluster = RayCluster(
            initialize_head=True, head_node_args={**NODE, "include_dashboard": False}
        )
        try:
            cluster.add_node(**NODE)
            cluster.add_node(**NODE, resources={SLOT: 2})
            ray.init(address=cluster.address, log_to_driver=False)
            yield cluster
        finally:
            ray.shutdown()
            cluster.shutdown()


def node_id_of(node: Any) -> str:
    """The Ray node id of a ``cluster_utils`` node (Ray 2.10's has no ``node_id`` attribute)."""
    socket = node.plasma_store_socket_name
    return next(info["NodeID"] for info in ray.nodes() if info["ObjectStoreSocketName"] == socket)


def alive_node_ids() -> list[str]:
    return [node["NodeID"] for node in ray.nodes() if node["Alive"]]


def live_tool_hosts() -> list[str]:
    """The ToolHost actors the GCS does not list as dead yet."""
    return [
        actor_id
        for actor_id, info in ray._private.state.actors().items()
        if info["ActorClassName"] == "ToolHost" and info["State"] != "DEAD"
    ]


def wait_no_tool_hosts(timeout: float = 10.0) -> list[str]:
    """ray.kill returns before the GCS has seen the actor die: give it a moment.

    The GCS's actor table has no event to wait on, so this polls it, within a deadline.
    """
    deadline = time.monotonic() + timeout
    while (hosts := live_tool_hosts()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return hosts


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


# -- placement --------------------------------------------------------------------------------


async def test_instances_spread_one_per_node(ray_cluster: RayCluster) -> None:
    async with aimcluster.launch_cluster(tools.mock(), 3, transport=RayTransport()) as cluster:
        nodes = [instance.node for instance in cluster.metrics().instances]
        assert sorted(nodes) == sorted(alive_node_ids())  # type: ignore[type-var]


async def test_node_ids_pin_instances(ray_cluster: RayCluster) -> None:
    head = node_id_of(ray_cluster.head_node)
    transport = RayTransport(node_ids=[head])
    async with aimcluster.launch_cluster(tools.mock(), 2, transport=transport) as cluster:
        assert [instance.node for instance in cluster.metrics().instances] == [head, head]


async def test_resources_pin_instances_to_the_nodes_that_have_them(
    ray_cluster: RayCluster,
) -> None:
    slot_node = [
        node["NodeID"] for node in ray.nodes() if node["Alive"] and SLOT in node["Resources"]
    ]
    transport = RayTransport(resources={SLOT: 1})
    async with aimcluster.launch_cluster(tools.mock(), 2, transport=transport) as cluster:
        assert [instance.node for instance in cluster.metrics().instances] == slot_node * 2


async def test_ray_default_placement_runs_instances(ray_cluster: RayCluster) -> None:
    transport = RayTransport(placement="default")
    async with aimcluster.launch_cluster(tools.mock(), 2, transport=transport) as cluster:
        nodes = {instance.node for instance in cluster.metrics().instances}
        assert nodes <= set(alive_node_ids())
        assert (await cluster.send("hi")).text == "echo: hi"


async def test_resources_no_node_has_fail_the_start(ray_cluster: RayCluster) -> None:
    transport = RayTransport(resources={"no_such_resource": 1})
    with pytest.raises(aimcluster.StartupError, match="no alive Ray node has the resources"):
        async with aimcluster.launch_cluster(tools.mock(), 1, transport=transport, restart=False):
            pass


async def test_actor_ray_cannot_place_times_out(ray_cluster: RayCluster) -> None:
    # Ray's own scheduler keeps an infeasible actor pending for ever: the start times out.
    spec = attrs.evolve(tools.mock(), startup_timeout=1)
    transport = RayTransport(placement="default", resources={"no_such_resource": 1})
    with pytest.raises(aimcluster.StartupError, match="Ray placed no actor for instance 0 within"):
        async with aimcluster.launch_cluster(spec, 1, transport=transport, restart=False):
            pass
    assert wait_no_tool_hosts() == []


async def test_no_live_pinned_node_fails_the_start(ray_cluster: RayCluster) -> None:
    transport = RayTransport(node_ids=["ab" * 28])
    with pytest.raises(aimcluster.StartupError, match="no alive Ray node of"):
        async with aimcluster.launch_cluster(tools.mock(), 1, transport=transport, restart=False):
            pass


# -- the data path ----------------------------------------------------------------------------


async def test_prompts_round_trip_through_the_actors(ray_cluster: RayCluster) -> None:
    spec = tools.mock(env={"SLOT": "slot-{instance}"})
    async with aimcluster.launch_cluster(spec, 3, transport=RayTransport()) as cluster:
        assert (await cluster.send("hello")).text == "echo: hello"
        replies = await cluster.map([f"p{i}" for i in range(30)])
        assert [reply.text for reply in replies] == [f"echo: p{i}" for i in range(30)]
        for index in range(3):
            assert (await cluster.send("/pid", instance=index)).text == str(cluster.pids[index])
            assert (await cluster.send("/env SLOT", instance=index)).text == f"slot-{index}"


async def test_one_shot_tool_runs_a_process_per_prompt_on_the_nodes(
    ray_cluster: RayCluster,
) -> None:
    # Regression: the actor rebuilt the spec with attrs.evolve, whose validation rejects a
    # one-shot process's spec (its {prompt} already filled in).
    spec = aimcluster.ToolSpec(
        name="say",
        argv=[sys.executable, "-c", "import os, sys; print(os.getpid(), sys.argv[1])", "{prompt}"],
        framing=OneshotFraming(),
    )
    async with aimcluster.launch_cluster(spec, 2, transport=RayTransport()) as cluster:
        replies = await cluster.map(["a b", "c"])
    pids = [int(reply.text.split()[0]) for reply in replies]
    assert [reply.text.split(maxsplit=1)[1] for reply in replies] == ["a b", "c"]
    assert wait_gone(pids) == []
    assert wait_no_tool_hosts() == []


async def test_large_output_arrives_whole(ray_cluster: RayCluster) -> None:
    async with aimcluster.launch_cluster(tools.mock(), 1, transport=RayTransport()) as cluster:
        reply = await cluster.send("/big 3000000")
        lines = reply.text.split("\n")
        assert len(reply.text) == 3_000_000 - 1  # the reply's last newline is the frame's
        assert lines[0] == "x" * 79
        assert set(lines[-1]) == {"x"}


async def test_small_read_size_still_delivers_everything(ray_cluster: RayCluster) -> None:
    transport = RayTransport(read_size=1000)
    async with aimcluster.launch_cluster(tools.mock(), 1, transport=transport) as cluster:
        assert len((await cluster.send("/big 50000")).text) == 50000 - 1


async def test_pty_tool_on_a_node(ray_cluster: RayCluster) -> None:
    async with aimcluster.launch_cluster("bash", 1, transport=RayTransport()) as cluster:
        assert (await cluster.send("tty >/dev/null && echo has-ctty")).text == "has-ctty"
        assert (await cluster.send("echo $$")).text == str(cluster.pids[0])


async def test_separate_stderr_reaches_the_startup_error(ray_cluster: RayCluster) -> None:
    spec = aimcluster.ToolSpec(
        name="grumpy",
        argv=[sys.executable, "-c", "import sys; sys.stderr.write('no model key'); sys.exit(3)"],
        ready="> ",
        merge_stderr=False,
    )
    with pytest.raises(aimcluster.StartupError) as caught:
        async with aimcluster.launch_cluster(spec, 1, transport=RayTransport(), restart=False):
            pass
    assert caught.value.exit_code == 3
    assert "no model key" in caught.value.output


async def test_missing_executable_fails_the_start(ray_cluster: RayCluster) -> None:
    spec = attrs.evolve(tools.mock(), argv=["aimcluster-no-such-tool"])
    with pytest.raises(aimcluster.StartupError, match="'aimcluster-no-such-tool' is not on PATH"):
        async with aimcluster.launch_cluster(spec, 1, transport=RayTransport(), restart=False):
            pass
    assert wait_no_tool_hosts() == []


# -- faults -----------------------------------------------------------------------------------


async def test_node_loss_moves_its_instances_and_loses_no_prompt(ray_cluster: RayCluster) -> None:
    extra = ray_cluster.add_node(**NODE)  # removed below, so the module's cluster stays as it was
    extra_id = node_id_of(extra)
    spec = tools.mock(delay=0.02)
    transport = RayTransport()
    async with aimcluster.launch_cluster(spec, 4, transport=transport, restart=FAST_RESTART) as cl:
        on_extra = [i.index for i in cl.metrics().instances if i.node == extra_id]
        assert len(on_extra) == 1
        lost_pid = cl.pids[on_extra[0]]
        half_done = anyio.Event()
        prompts = [f"p{i}" for i in range(120)]
        replies = []

        async def load() -> None:
            for start in (0, 60):
                replies.extend(await cl.map(prompts[start : start + 60], retries=3))
                half_done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(load)
            await half_done.wait()
            await anyio.to_thread.run_sync(ray_cluster.remove_node, extra)
        assert [reply.text for reply in replies] == [f"echo: {p}" for p in prompts]
        metrics = await cl.wait_for(
            lambda m: all(i.state == "ready" for i in m.instances), timeout=30
        )
        moved = metrics.instances[on_extra[0]]
        assert moved.restarts == 1
        assert moved.node in alive_node_ids()
        assert moved.node != extra_id
        assert (await cl.send("still there", instance=on_extra[0])).text == "echo: still there"
    assert wait_gone([lost_pid]) == []


# Ray takes its health check's 15 s to fail the actor placed on the dead node: one backend
# only, as nothing in the placement depends on the event loop.
@pytest.mark.parametrize("anyio_backend", [("asyncio", {})])
async def test_start_on_a_node_that_died_unnoticed_goes_elsewhere(
    ray_cluster: RayCluster, anyio_backend: object
) -> None:
    doomed = ray_cluster.add_node(**NODE)
    doomed_id = node_id_of(doomed)
    head = node_id_of(ray_cluster.head_node)
    ray_cluster.remove_node(doomed, allow_graceful=False)  # Ray lists it as alive for a while
    assert doomed_id in alive_node_ids()
    transport = RayTransport(node_ids=[doomed_id, head])
    async with aimcluster.launch_cluster(tools.mock(), 2, transport=transport) as cluster:
        assert [instance.node for instance in cluster.metrics().instances] == [head, head]
        assert (await cluster.send("hi")).text == "echo: hi"


async def test_killed_actor_restarts_in_a_new_actor_and_its_tool_dies(
    ray_cluster: RayCluster,
) -> None:
    async with aimcluster.launch_cluster(
        tools.mock(), 1, transport=RayTransport(), restart=FAST_RESTART
    ) as cluster:
        pid = cluster.pids[0]
        assert pid is not None
        host = parent_of(pid)
        # A hung tool reads no more input, so EOF on its stdin would not end it: only
        # PR_SET_PDEATHSIG does when its actor's worker process is SIGKILLed.
        hung = await cluster.submit("/hang", retries=0)
        await cluster.wait_for(lambda m: m.instances[0].in_flight == 1, timeout=10)
        os.kill(host, signal.SIGKILL)
        with pytest.raises(aimcluster.InstanceCrashedError) as crashed:
            await hung
        assert crashed.value.exit_code == -signal.SIGKILL
        assert wait_gone([pid]) == []
        await cluster.wait_for(lambda m: m.instances[0].state == "ready", timeout=30)
        assert cluster.pids[0] != pid
        assert parent_of(cluster.pids[0]) != host  # type: ignore[arg-type]
        assert (await cluster.send("again")).text == "echo: again"


async def test_tool_host_reports_an_exit_after_its_node_went(ray_cluster: RayCluster) -> None:
    # When a raylet dies, Ray's worker shutdown kills the tool and the actor may still report
    # the exit, with no Ray error: the report must say that the node is gone. The actor's code,
    # run here in this process rather than in an actor.
    host = ToolHost()
    started = await host.start(tools.mock(), 0, 65536)
    assert isinstance(started, _Started)
    async with anyio.create_task_group() as tg:
        tg.start_soon(host.serve)
        host._raylet = -1  # the parent it started under is gone
        await host.signal_group(signal.SIGKILL)
        exited = await host.wait()
    await host.close()
    assert exited == _Exited(-signal.SIGKILL, node_alive=False)
    assert wait_gone([started.pid]) == []


async def test_restart_instance_runs_a_new_process(ray_cluster: RayCluster) -> None:
    async with aimcluster.launch_cluster(
        tools.mock(), 1, transport=RayTransport(), restart=FAST_RESTART
    ) as cluster:
        first = cluster.pids[0]
        cluster.restart_instance(0)
        await cluster.wait_for(
            lambda m: m.instances[0].restarts == 1 and m.instances[0].state == "ready", timeout=30
        )
        assert cluster.pids[0] != first
        assert wait_gone([first]) == []


async def test_shutdown_leaves_no_actor_and_no_process(ray_cluster: RayCluster) -> None:
    async with aimcluster.launch_cluster(tools.mock(), 3, transport=RayTransport()) as cluster:
        pids = list(cluster.pids)
        grandchildren = [await cluster.send("/spawn", instance=i) for i in range(3)]
        assert len(live_tool_hosts()) == 3
    spawned = [int(reply.text) for reply in grandchildren]
    assert wait_gone([*pids, *spawned]) == []
    assert alive(pids) == []
    assert wait_no_tool_hosts() == []


async def test_cancelled_cluster_start_leaves_no_actor(ray_cluster: RayCluster) -> None:
    spec = attrs.evolve(tools.mock(startup_delay=30), shutdown_grace=0.2)
    with anyio.move_on_after(0.1):
        async with aimcluster.launch_cluster(spec, 2, transport=RayTransport()):
            pytest.fail("the cluster should not have started")
    assert wait_no_tool_hosts() == []


async def test_cancelled_spawn_kills_its_actor(ray_cluster: RayCluster) -> None:
    # Ray keeps an actor nobody can host pending: the spawn is surely waiting when cancelled.
    transport = RayTransport(placement="default", resources={"no_such_resource": 1})
    with anyio.move_on_after(0.2):
        await transport.spawn(tools.mock(), instance=0)
        pytest.fail("the spawn should not have returned")
    assert wait_no_tool_hosts() == []


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"placement": "pack"}, "placement must be 'spread', 'default' or a Ray scheduling"),
        ({"node_ids": []}, "node_ids must name at least one node"),
        ({"node_ids": "abc"}, "node_ids must be a sequence of Ray node id strings"),
        ({"resources": {"GPU": 0}}, "resources must map resource names to amounts > 0"),
        ({"num_cpus": -1}, "num_cpus must be >= 0, got -1"),
        ({"read_size": 0}, "read_size must be >= 1, got 0"),
        (
            {"placement": "default", "node_ids": ["ab"]},
            "node_ids works with placement='spread' only",
        ),
    ],
)
def test_bad_options_are_rejected(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RayTransport(**options)


def test_core_does_not_import_ray() -> None:
    code = "import sys, aimcluster, aimcluster.tools; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_ray_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "try:\n    import aimcluster.ray\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    assert result.stdout == (
        "aimcluster.ray needs Ray, which is not installed: pip install 'aimcluster[ray]'\n"
    )
