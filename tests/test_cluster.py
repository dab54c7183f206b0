"""The public cluster API against real processes: the mock agent and ``python -i``."""

from __future__ import annotations

import json
import os
import signal
import sys

import anyio
import anyio.lowlevel
import attrs
import pytest
import structlog
from structlog.testing import capture_logs

import aimcluster
from aimcluster import tools
from aimcluster._base.natives import loop_natives

from .conftest import alive, wait_gone

pytestmark = pytest.mark.anyio


async def test_python_repl_send_returns_the_bare_result(cluster_factory) -> None:
    cluster = await cluster_factory("python", count=1)
    reply = await cluster.send("1+1")
    assert reply.text == "2"
    assert reply.instance == 0
    assert reply.prompt == "1+1"
    assert reply.key is None
    assert reply.elapsed > 0
    assert reply.attempts == 1


async def test_multiline_output_keeps_inner_newlines(cluster_factory) -> None:
    cluster = await cluster_factory("python")
    reply = await cluster.send("print('a\\nb')")
    assert reply.text == "a\nb"


async def test_the_cluster_reads_the_clock_anyio_reads() -> None:
    # Deadlines made with it are compared with anyio's (cancel scopes): one clock.
    clock = loop_natives(anyio.lowlevel.current_token()).clock
    before = anyio.current_time()
    now = clock()
    assert before <= now <= anyio.current_time()


async def test_the_cluster_finds_its_loop_as_anyio_does() -> None:
    # The caller check compares what this returns with the token's native token.
    token = anyio.lowlevel.current_token()
    assert loop_natives(token).current_token() is token.native_token


async def test_the_cluster_passes_the_loop_as_anyio_does() -> None:
    # The pass a lone caller and a reader take: other tasks run, and a cancelled scope
    # cancels it, as anyio.lowlevel.checkpoint() does.
    checkpoint = loop_natives(anyio.lowlevel.current_token()).checkpoint
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    async with anyio.create_task_group() as tg:
        tg.start_soon(other)
        # Two passes: trio runs each batch of ready tasks in a random order, so the new task
        # may come after this one in the first batch; it has run by the second.
        await checkpoint()
        await checkpoint()
        assert ran == ["other"]
    with anyio.CancelScope() as scope:
        scope.cancel()
        await checkpoint()
        ran.append("not cancelled")
    assert scope.cancelled_caught
    assert ran == ["other"]


async def test_the_cluster_waits_on_the_event_anyio_wraps() -> None:
    # The loop's own event, as anyio.Event makes it: cancelled by anyio's scopes, and woken
    # by a set() from another task.
    event = loop_natives(anyio.lowlevel.current_token()).new_event()
    assert type(event).__module__.split(".")[0] in ("asyncio", "trio")
    with anyio.move_on_after(0.01) as scope:
        await event.wait()
    assert scope.cancelled_caught
    async with anyio.create_task_group() as tg:
        tg.start_soon(event.wait)
        await anyio.lowlevel.checkpoint()
        event.set()
    with anyio.fail_after(1):
        await event.wait()  # already set: at once


async def test_async_with_returns_once_every_instance_is_ready() -> None:
    async with aimcluster.launch_cluster("mock", count=3) as cluster:
        metrics = cluster.metrics()
        assert [m.state for m in metrics.instances] == ["ready"] * 3
        assert all(m.pid is not None for m in metrics.instances)
        assert cluster.size == 3


async def test_round_robin_cycles_through_instances_in_order(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=3, routing="round_robin")
    instances = [(await cluster.send(f"p{i}")).instance for i in range(7)]
    assert instances == [0, 1, 2, 0, 1, 2, 0]


async def test_sticky_key_always_goes_to_the_same_instance(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=4, routing="sticky")
    for key in ("a.py", "b.py", "c.py", "d.py", "e.py"):
        expected = aimcluster._base.routing.rendezvous(key, range(4))
        seen = {(await cluster.send("x", key=key)).instance for _ in range(3)}
        assert seen == {expected}


@pytest.mark.parametrize("how", ["sigkill", "restart"])
async def test_sticky_key_goes_back_to_its_instance_after_a_restart(cluster_factory, how) -> None:
    cluster = await cluster_factory("mock", count=3, routing="sticky")
    key = "a.py"
    home = aimcluster._base.routing.rendezvous(key, range(3))
    before = await cluster.send("/pid", key=key)
    old_pid = int(before.text)
    assert (before.instance, cluster.pids[home]) == (home, old_pid)
    restarts = cluster.metrics().instances[home].restarts
    if how == "sigkill":
        os.kill(old_pid, signal.SIGKILL)
    else:
        await cluster.restart(home, timeout=30)
    await cluster.wait_for(
        lambda m: m.instances[home].restarts > restarts and m.instances[home].state == "ready",
        timeout=30,
    )
    after = await cluster.send("/pid", key=key)
    assert after.instance == home
    assert int(after.text) == cluster.pids[home]
    assert int(after.text) != old_pid
    assert wait_gone([old_pid]) == []


async def test_wait_for_sees_the_per_prompt_flips_between_ready_and_busy(
    cluster_factory,
) -> None:
    # Nobody watching, an instance does not report these flips: a wait_for must still see
    # them, each one, however often the instance flipped before it started waiting.
    cluster = await cluster_factory("mock", count=1)
    for n in range(3):
        assert (await cluster.send(f"/echo {n}")).text == str(n)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(cluster.send, "/sleep 0.5")
            busy = await cluster.wait_for(lambda m: m.instances[0].state == "busy")
            assert busy.instances[0].in_flight == 1
            ready = await cluster.wait_for(lambda m: m.instances[0].state == "ready")
            assert ready.instances[0].in_flight == 0
        assert (await cluster.send("/echo after")).text == "after"


async def test_sticky_send_without_key_falls_back_to_least_busy(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=2, routing="sticky")
    async with anyio.create_task_group() as tg:
        tg.start_soon(cluster.send, "/sleep 30")
        await anyio.wait_all_tasks_blocked()
        busy = next(m.index for m in cluster.metrics().instances if m.in_flight)
        reply = await cluster.send("quick")
        assert reply.instance != busy
        tg.cancel_scope.cancel()


async def test_explicit_instance_overrides_routing(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=3, routing="sticky")
    assert (await cluster.send("x", key="k", instance=2)).instance == 2
    assert (await cluster.send("x", instance=1)).instance == 1


async def test_least_busy_slow_prompt_does_not_hold_up_others(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=2, routing="least_busy")
    async with anyio.create_task_group() as tg:
        tg.start_soon(cluster.send, "/sleep 30")
        await anyio.wait_all_tasks_blocked()
        replies = [await cluster.send(f"q{i}") for i in range(5)]
        assert len({r.instance for r in replies}) == 1
        tg.cancel_scope.cancel()


async def test_send_timeout_raises_reply_timeout_and_instance_serves_again(
    cluster_factory,
) -> None:
    cluster = await cluster_factory("mock", count=1)
    old_pid = cluster.pids[0]
    with pytest.raises(aimcluster.ReplyTimeoutError) as info:
        await cluster.send("/hang", timeout=0.5)
    assert info.value.instance == 0
    assert info.value.prompt == "/hang"
    assert (await cluster.send("after")).text == "echo: after"
    assert cluster.pids[0] != old_pid
    metrics = cluster.metrics().instances[0]
    assert (metrics.timeouts, metrics.restarts) == (1, 1)


async def test_timeout_while_queued_never_sends_the_prompt(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(cluster.send, "/sleep 1")
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(aimcluster.ReplyTimeoutError) as info:
            await cluster.send("never", timeout=0.2)
        assert info.value.instance is None
    assert cluster.metrics().instances[0].sent == 1


async def test_submit_then_read_any_returns_in_completion_order(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=3)
    await cluster.submit("/sleep 1")
    await cluster.submit("/sleep 0.5")
    await cluster.submit("/sleep 0")
    texts = [(await cluster.read_any(timeout=10)).text for _ in range(3)]
    assert texts == ["slept 0", "slept 0.5", "slept 1"]


async def test_read_any_times_out_with_builtin_timeout_error(cluster_factory) -> None:
    cluster = await cluster_factory("mock")
    with pytest.raises(TimeoutError):
        await cluster.read_any(timeout=0.1)


async def test_ticket_can_be_awaited_and_read_any_still_gets_it_once(cluster_factory) -> None:
    cluster = await cluster_factory("mock")
    ticket = await cluster.submit("hello")
    assert (await ticket).text == "echo: hello"
    assert (await cluster.read_any(timeout=5)).text == "echo: hello"
    with pytest.raises(TimeoutError):
        await cluster.read_any(timeout=0.1)


async def test_replies_to_send_and_map_do_not_reach_read_any(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=2)
    await cluster.send("a")
    await cluster.map(["b", "c"])
    with pytest.raises(TimeoutError):
        await cluster.read_any(timeout=0.1)


async def test_read_any_raises_the_error_of_a_failed_submit(cluster_factory) -> None:
    cluster = await cluster_factory("mock", restart=False)
    await cluster.submit("/crash 7")
    with pytest.raises(aimcluster.InstanceCrashedError) as info:
        await cluster.read_any(timeout=10)
    assert info.value.exit_code == 7


async def test_map_returns_results_in_input_order(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=3)
    prompts = ["/sleep 0.3", "/sleep 0", "/sleep 0.1", "x", "y"]
    replies = await cluster.map(prompts)
    assert [r.prompt for r in replies] == prompts
    assert [r.text for r in replies] == ["slept 0.3", "slept 0", "slept 0.1", "echo: x", "echo: y"]


async def test_sends_cancelled_while_waiting_for_room_strand_nobody(cluster_factory) -> None:
    # The lease holds the only instance, so the first send holds the one queue slot and the
    # others wait in line for room; half of them give up. The rest are all answered.
    cluster = await cluster_factory("mock", count=1, max_pending=1)
    scopes: dict[int, anyio.CancelScope] = {}
    replies: dict[int, str] = {}

    async def send(number: int) -> None:
        with anyio.CancelScope() as scopes[number]:
            replies[number] = (await cluster.send(f"p{number}")).text

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg, cluster.lease():
            for number in range(10):
                tg.start_soon(send, number)
            await anyio.wait_all_tasks_blocked()
            assert cluster.metrics().queued == 1
            for number in range(1, 10, 2):
                scopes[number].cancel()
            await anyio.wait_all_tasks_blocked()
    assert replies == {number: f"echo: p{number}" for number in range(0, 10, 2)}
    assert (await cluster.send("after")).text == "echo: after"


async def test_map_runs_prompts_concurrently(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=4)
    replies = await cluster.map(["/sleep 0.5"] * 4)
    assert sorted(r.instance for r in replies) == [0, 1, 2, 3]


async def test_map_with_keys_routes_each_prompt_by_its_key(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=3, routing="sticky")
    keys = ["a", "b", "c", "a", "b", "c"]
    replies = await cluster.map(["x"] * 6, keys=keys)
    for reply, key in zip(replies, keys, strict=True):
        assert reply.key == key
        assert reply.instance == aimcluster._base.routing.rendezvous(key, range(3))


async def test_map_rejects_keys_of_the_wrong_length(cluster_factory) -> None:
    cluster = await cluster_factory("mock")
    with pytest.raises(ValueError, match="got 1 keys for 2 prompts"):
        await cluster.map(["a", "b"], keys=["k"])


async def test_map_raises_first_error_and_withdraws_unsent_prompts(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=1, restart=False)
    with pytest.raises(aimcluster.InstanceCrashedError):
        await cluster.map(["/crash 5", "never sent 1", "never sent 2"])
    assert cluster.metrics().sent == 1


async def test_map_return_exceptions_keeps_partial_results(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=2, routing="round_robin")
    ok, crashed, fine = await cluster.map(["ok", "/crash 4", "fine"], return_exceptions=True)
    assert isinstance(ok, aimcluster.Reply)
    assert (ok.text, ok.prompt, ok.instance) == ("echo: ok", "ok", 0)
    assert isinstance(crashed, aimcluster.InstanceCrashedError)
    assert (crashed.instance, crashed.exit_code, crashed.prompt) == (1, 4, "/crash 4")
    assert crashed.partial_output == "crashing\n"
    assert isinstance(fine, aimcluster.Reply)
    assert (fine.text, fine.prompt, fine.instance) == ("echo: fine", "fine", 0)


async def test_map_of_nothing_is_empty(cluster_factory) -> None:
    cluster = await cluster_factory("mock")
    assert await cluster.map([]) == []


async def test_lease_holds_one_instance_exclusively(cluster_factory, tmp_path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    cluster = await cluster_factory(tools.mock(cwd=tmp_path), count=2)
    async with cluster.lease() as session:
        held = session.instance
        assert (await session.send("/add a.py")).text == "Added a.py to the chat"
        # Everything else goes to the other instance while the lease is held.
        others = {r.instance for r in await cluster.map(["/ls"] * 6)}
        assert others == {1 - held}
        assert (await session.send("/ls")).text == "a.py"
        assert (await session.send("Add a DOC_ID header")).text == "Added DOC_ID header to a.py"
        await session.send("/drop a.py")
    assert (tmp_path / "a.py").read_text().startswith("# DOC_ID: ")
    # Released: the instance takes ordinary prompts again.
    replies = await cluster.map(["/sleep 0.2"] * 2)
    assert sorted(r.instance for r in replies) == [0, 1]


async def test_lease_with_key_uses_sticky_routing(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=4, routing="sticky")
    async with cluster.lease(key="file7.py") as session:
        assert session.instance == aimcluster._base.routing.rendezvous("file7.py", range(4))
        assert session.key == "file7.py"
        assert (await session.send("x")).key == "file7.py"


async def test_lease_waits_for_a_free_instance(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=1)
    order: list[str] = []

    async def hold() -> None:
        async with cluster.lease() as session:
            order.append("first granted")
            await session.send("/sleep 0.2")
            order.append("first done")

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold)
        await anyio.wait_all_tasks_blocked()
        async with cluster.lease():
            order.append("second granted")
    assert order == ["first granted", "first done", "second granted"]


async def test_lease_lost_when_its_instance_crashes(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=1)
    async with cluster.lease() as session:
        with pytest.raises(aimcluster.InstanceCrashedError) as info:
            await session.send("/crash 9")
        assert info.value.exit_code == 9
        # The chat state went with the process, so the lease stays broken.
        with pytest.raises(aimcluster.InstanceCrashedError):
            await session.send("/ls")
    assert (await cluster.send("again")).text == "echo: again"


async def test_prompts_waiting_in_a_lost_lease_fail_too(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=1)
    async with cluster.lease() as session:
        codes: list[int | None] = []

        async def send(prompt: str) -> None:
            with pytest.raises(aimcluster.InstanceCrashedError) as info:
                await session.send(prompt)
            codes.append(info.value.exit_code)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(send, "/hang")
                await anyio.wait_all_tasks_blocked()
                # Waits in the lease behind the hung prompt: it must fail with it, not wait
                # forever.
                tg.start_soon(send, "/ls")
                await anyio.wait_all_tasks_blocked()
                pid = cluster.pids[0]
                assert pid is not None
                os.killpg(pid, signal.SIGKILL)
    assert codes == [-9, -9]


async def test_metrics_snapshot_is_complete_and_json_serialisable(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=2, routing="round_robin")
    await cluster.map(["a", "b", "c"])
    metrics = cluster.metrics()
    assert isinstance(metrics, aimcluster.ClusterMetrics)
    assert (metrics.sent, metrics.completed, metrics.failed, metrics.restarts) == (3, 3, 0, 0)
    assert [m.index for m in metrics.instances] == [0, 1]
    first = metrics.instances[0]
    assert isinstance(first, aimcluster.InstanceMetrics)
    assert (first.sent, first.completed, first.in_flight, first.queued) == (2, 2, 0, 0)
    assert first.latency_p50 is not None
    assert first.latency_p95 is not None
    assert first.latency_p50 <= first.latency_p95
    data = json.loads(json.dumps(metrics.as_dict()))
    assert data["sent"] == 3
    assert set(data["instances"][0]) == {
        "index", "pid", "state", "node", "sent", "completed", "failed", "timeouts",
        "restarts", "in_flight", "queued", "latency_p50", "latency_p95", "rate_limited",
        "usage", "tool_retries", "tool",
    }  # fmt: skip


async def test_metrics_show_busy_and_queued(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(cluster.send, "/sleep 30")
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(cluster.send, "later")
        await anyio.wait_all_tasks_blocked()
        metrics = cluster.metrics()
        assert metrics.instances[0].state == "busy"
        assert metrics.instances[0].in_flight == 1
        assert metrics.queued == 1
        tg.cancel_scope.cancel()


async def test_shutdown_is_idempotent_and_later_use_raises_cluster_closed() -> None:
    async with aimcluster.launch_cluster("mock", count=2) as cluster:
        pids = list(cluster.pids)
        await cluster.shutdown()
        await cluster.shutdown()
        assert alive(pids) == []
        assert [m.state for m in cluster.metrics().instances] == ["stopped", "stopped"]
        with pytest.raises(aimcluster.ClusterClosedError):
            await cluster.send("x")
        with pytest.raises(aimcluster.ClusterClosedError):
            await cluster.submit("x")
        with pytest.raises(aimcluster.ClusterClosedError):
            async with cluster.lease():
                pass
        with pytest.raises(aimcluster.ClusterClosedError):
            await cluster.read_any(timeout=1)


async def test_shutdown_fails_queued_and_in_flight_prompts() -> None:
    async with aimcluster.launch_cluster("mock", count=1) as cluster:
        in_flight = await cluster.submit("/sleep 30")
        queued = await cluster.submit("queued")
        await anyio.wait_all_tasks_blocked()
        await cluster.shutdown()
        with pytest.raises(aimcluster.ClusterClosedError):
            await in_flight
        with pytest.raises(aimcluster.ClusterClosedError):
            await queued


async def test_no_process_survives_the_async_with_block() -> None:
    async with aimcluster.launch_cluster("mock", count=3) as cluster:
        pids = list(cluster.pids)
        grandchild = int((await cluster.send("/spawn", instance=0)).text)
        assert alive([*pids, grandchild]) == [*pids, grandchild]
    assert wait_gone([*pids, grandchild]) == []


async def test_cancellation_in_the_middle_of_a_send_leaves_nothing_running() -> None:
    with anyio.CancelScope() as scope:
        async with aimcluster.launch_cluster("mock", count=2) as cluster:
            pids = list(cluster.pids)
            grandchild = int((await cluster.send("/spawn")).text)
            # Cancelled while the reply is awaited, however long the start took.
            scope.deadline = anyio.current_time() + 0.2
            await cluster.send("/hang")
    assert scope.cancelled_caught
    assert wait_gone([*pids, grandchild]) == []


async def test_an_error_in_the_block_propagates_as_itself() -> None:
    with pytest.raises(KeyError, match="boom"):  # noqa: PT012 - the block is what is tested
        async with aimcluster.launch_cluster("mock") as cluster:
            pids = list(cluster.pids)
            raise KeyError("boom")
    assert alive(pids) == []


def test_unknown_tool_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown tool 'nope'") as info:
        aimcluster.launch_cluster("nope")
    for name in ("bash", "mock", "python"):
        assert name in str(info.value)


def test_unknown_routing_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown routing 'fastest'") as info:
        aimcluster.launch_cluster("mock", routing="fastest")
    for name in ("round_robin", "least_busy", "sticky"):
        assert name in str(info.value)


@pytest.mark.parametrize("count", [0, -1])
def test_count_below_one_is_rejected(count: int) -> None:
    with pytest.raises(ValueError, match=f"count must be an integer >= 1, got {count}"):
        aimcluster.launch_cluster("mock", count=count)


async def test_missing_executable_raises_before_anything_starts() -> None:
    spec = aimcluster.ToolSpec(name="ghost", argv=["no-such-tool-xyz", "-i"], ready="> ")
    with pytest.raises(aimcluster.ToolNotFoundError, match="no-such-tool-xyz"):
        async with aimcluster.launch_cluster(spec, count=2):
            pytest.fail("must not start")


async def test_no_ready_prompt_raises_startup_error_with_output_and_cleans_up() -> None:
    spec = aimcluster.ToolSpec(
        name="silent",
        argv=[sys.executable, "-c", "print('booting', flush=True); import time; time.sleep(60)"],
        ready=r"READY> ",
        startup_timeout=2,
    )
    with pytest.raises(aimcluster.StartupError) as info:
        async with aimcluster.launch_cluster(spec, count=3):
            pytest.fail("must not start")
    assert "showed no ready prompt matching 'READY> ' within 2 s" in str(info.value)
    assert info.value.output == "booting\n"
    assert info.value.exit_code is None


async def test_wrong_argument_raises_startup_error_naming_the_exit() -> None:
    spec = attrs.evolve(tools.python(), argv=[sys.executable, "--no-such-flag"])
    with pytest.raises(aimcluster.StartupError) as info:
        async with aimcluster.launch_cluster(spec):
            pytest.fail("must not start")
    assert info.value.exit_code == 2
    assert "exited with code 2 before showing a ready prompt" in str(info.value)
    assert "--no-such-flag" in info.value.output


async def test_bad_send_arguments_raise_value_errors(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=2)
    with pytest.raises(ValueError, match=r"instance must be in range\(0, 2\), got 5"):
        await cluster.send("x", instance=5)
    with pytest.raises(ValueError, match="timeout must be > 0, got 0"):
        await cluster.send("x", timeout=0)
    with pytest.raises(ValueError, match="retries must be >= 0, got -1"):
        await cluster.send("x", retries=-1)
    with pytest.raises(TypeError, match="prompt must be a str, got bytes"):
        await cluster.send(b"x")  # type: ignore[arg-type]


async def test_lifecycle_events_are_logged_with_instance_and_pid() -> None:
    with capture_logs() as logs:
        async with aimcluster.launch_cluster(
            "mock", count=1, logger=structlog.get_logger("t")
        ) as cluster:
            pid = cluster.pids[0]
            await cluster.send("hi")
    events = [entry["event"] for entry in logs]
    for name in (
        "instance_started",
        "instance_ready",
        "prompt_sent",
        "reply_received",
        "cluster_shutdown",
        "instance_exited",
    ):
        assert name in events, name
        entry = next(e for e in logs if e["event"] == name)
        assert (entry["instance"], entry["pid"]) == (0, pid)
    exited = next(e for e in logs if e["event"] == "instance_exited")
    assert exited["exit_code"] == 0
    received = next(e for e in logs if e["event"] == "reply_received")
    assert received["elapsed"] > 0


async def test_restart_is_logged_with_attempt_and_delay(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=1)
    with capture_logs() as logs:
        with pytest.raises(aimcluster.InstanceCrashedError):
            await cluster.send("/crash 3")
        await cluster.send("back")
    restarting = next(e for e in logs if e["event"] == "instance_restarting")
    assert restarting["instance"] == 0
    assert restarting["attempt"] == 1
    assert restarting["delay"] >= 0
