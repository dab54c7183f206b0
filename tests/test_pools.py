"""Clusters of several pools: routing by tool and across pools, leases per tool, failover.

The pools here run a small line tool written for these tests: it answers ``<pool>: <prompt>``,
logs every prompt it reads with its verdict, and answers every prompt with a rate-limit error
once its pool's flag file exists, as a vendor that starts throttling for good would.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import anyio
import attrs
import pytest
import structlog

import aimcluster
from aimcluster import Job, Pool, RateLimitedError, run_jobs

pytestmark = pytest.mark.anyio

_TOOL = """
import os, sys, time

name, log, flag = sys.argv[1:4]
sys.stdout.write("> ")
sys.stdout.flush()
for line in sys.stdin:
    prompt = line.rstrip("\\n")
    if prompt == "crash":
        sys.exit(3)
    if prompt.startswith("sleep "):
        time.sleep(float(prompt.split()[1]))
    limited = os.path.exists(flag)
    with open(log, "a") as handle:
        handle.write(f"{name} {'429' if limited else 'ok'} {prompt}\\n")
    if limited:
        sys.stdout.write("Error: 429 Too Many Requests\\n> ")
    else:
        sys.stdout.write(f"{name}: {prompt}\\n> ")
    sys.stdout.flush()
"""


class Vendors:
    """The test tool's pools, their shared log, and a switch that rate-limits a pool."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.script = directory / "vendor.py"
        self.script.write_text(textwrap.dedent(_TOOL))
        self.log = directory / "prompts.log"

    def spec(self, name: str) -> aimcluster.ToolSpec:
        return aimcluster.ToolSpec(
            name=name,
            argv=[sys.executable, str(self.script), name, str(self.log), str(self.flag(name))],
            ready=r"> $",
            rate_limit=r"\b429\b",
            rate_limit_backoff=0.2,
            rate_limit_max_backoff=0.4,
            rate_limit_retries=2,
        )

    def flag(self, name: str) -> Path:
        return self.directory / f"{name}.limited"

    def throttle(self, name: str) -> None:
        self.flag(name).touch()

    def answered(self) -> Counter[str]:
        """How many times each prompt was answered (not rate-limited), over every pool."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return Counter(line.split(" ", 2)[2] for line in lines if line.split(" ", 2)[1] == "ok")

    def limited(self, name: str) -> int:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return sum(1 for line in lines if line.startswith(f"{name} 429 "))


@pytest.fixture
def vendors(tmp_path: Path) -> Vendors:
    return Vendors(tmp_path)


async def test_pools_number_their_instances_across_the_cluster(vendors: Vendors) -> None:
    pools = [Pool(vendors.spec("a"), 2), Pool(vendors.spec("b"), 1, tags={"second"})]
    async with aimcluster.launch_cluster(pools) as cluster:
        assert cluster.size == 3
        assert {name: info.instances for name, info in cluster.pools.items()} == {
            "a": (0, 1),
            "b": (2,),
        }
        assert cluster.pools["b"].tags == {"second"}
        assert [cluster.tool_of(i) for i in range(3)] == ["a", "a", "b"]
        assert cluster.spec_of(2).name == "b"
        metrics = cluster.metrics()
        assert [m.tool for m in metrics.instances] == ["a", "a", "b"]
        assert [(p.name, p.instances) for p in metrics.pools] == [("a", (0, 1)), ("b", (2,))]
        assert {name: len(m.instances) for name, m in metrics.by_pool().items()} == {
            "a": 2,
            "b": 1,
        }
        with pytest.raises(RuntimeError, match="several pools"):
            _ = cluster.spec
    assert cluster.metrics().as_dict()["pools"][1]["name"] == "b"


async def test_a_mapping_of_tool_names_to_counts_is_the_short_form() -> None:
    async with aimcluster.launch_cluster({"mock": 1, "python": 1}) as cluster:
        assert list(cluster.pools) == ["mock", "python"]
        reply = await cluster.send("6*7", tool="python")
        assert (reply.text, reply.tool, reply.instance) == ("42", "python", 1)
        reply = await cluster.send("hello", tool="mock")
        assert (reply.tool, reply.instance) == ("mock", 0)


async def test_send_by_pool_name_or_tag_reaches_only_that_pool(vendors: Vendors) -> None:
    pools = [
        Pool(vendors.spec("a"), 2, tags={"cheap"}),
        Pool(vendors.spec("b"), 2, tags={"cheap", "smart"}),
        Pool(vendors.spec("c"), 1, tags={"smart"}),
    ]
    async with aimcluster.launch_cluster(pools) as cluster:
        replies = await cluster.map([f"p{n}" for n in range(12)], tool="a")
        assert {r.tool for r in replies} == {"a"}
        assert all(r.text == f"a: {r.prompt}" and r.instance in (0, 1) for r in replies)
        replies = await cluster.map([f"q{n}" for n in range(12)], tool="smart")
        assert {r.tool for r in replies} <= {"b", "c"}
        assert all(r.text == f"{r.tool}: {r.prompt}" for r in replies)
        ticket = await cluster.submit("one", tool="c")
        assert (await ticket).instance == 4
        with pytest.raises(ValueError, match=r"no pool is named or tagged 'd'.*a, b, c, cheap"):
            await cluster.send("x", tool="d")
        with pytest.raises(ValueError, match="instance 0 is in pool 'a', not 'c'"):
            await cluster.send("x", tool="c", instance=0)


async def test_without_a_tool_least_busy_spreads_over_every_pool(vendors: Vendors) -> None:
    async with aimcluster.launch_cluster(
        [Pool(vendors.spec("a"), 2), Pool(vendors.spec("b"), 2)]
    ) as cluster:
        replies = await cluster.map([f"p{n}" for n in range(40)])
    assert {r.tool for r in replies} == {"a", "b"}
    assert all(r.text == f"{r.tool}: {r.prompt}" for r in replies)
    assert vendors.answered() == Counter(f"p{n}" for n in range(40))


async def test_round_robin_walks_every_instance_of_every_pool(vendors: Vendors) -> None:
    pools = [Pool(vendors.spec("a"), 2), Pool(vendors.spec("b"), 1)]
    async with aimcluster.launch_cluster(pools, routing="round_robin") as cluster:
        replies = [await cluster.send(f"p{n}") for n in range(6)]
        within = [await cluster.send(f"q{n}", tool="a") for n in range(4)]
    assert [(r.instance, r.tool) for r in replies] == [
        (0, "a"), (1, "a"), (2, "b"), (0, "a"), (1, "a"), (2, "b")
    ]  # fmt: skip
    assert {r.instance for r in within} == {0, 1}


async def test_a_sticky_key_keeps_its_instance_across_pools_and_a_restart(
    vendors: Vendors,
) -> None:
    pools = [Pool(vendors.spec("a"), 2), Pool(vendors.spec("b"), 2)]
    async with aimcluster.launch_cluster(pools, routing="sticky") as cluster:
        keys = [f"key-{n}" for n in range(12)]
        first = {k: (await cluster.send("x", key=k)).instance for k in keys}
        assert len(set(first.values())) > 1
        home = first["key-0"]
        await cluster.restart(home, timeout=30)
        again = {k: (await cluster.send("y", key=k)).instance for k in keys}
        assert again == first
        # Within one pool a key is as stable, on that pool's instances.
        in_b = {k: (await cluster.send("z", key=k, tool="b")).instance for k in keys}
        assert set(in_b.values()) <= {2, 3}
        before = cluster.metrics().instance(2).restarts
        cluster.restart_instance(2)
        await cluster.wait_for(
            lambda m: m.instance(2).restarts > before and m.instance(2).state == "ready"
        )
        assert {k: (await cluster.send("w", key=k, tool="b")).instance for k in keys} == in_b


async def test_a_lease_by_tool_holds_an_instance_of_that_pool(vendors: Vendors) -> None:
    pools = [Pool(vendors.spec("a"), 1), Pool(vendors.spec("b"), 2)]
    async with aimcluster.launch_cluster(pools) as cluster:
        async with cluster.lease(tool="b") as session:
            assert session.tool == "b"
            assert session.instance in (1, 2)
            assert session.spec.name == "b"
            reply = await session.send("held")
            assert (reply.text, reply.tool, reply.instance) == ("b: held", "b", session.instance)
            # The other instance of b and the one of a still serve.
            other = await cluster.send("free", tool="b")
            assert other.instance != session.instance
        async with cluster.lease(tool="a") as session:
            assert (session.tool, session.instance) == ("a", 0)


async def test_a_rate_limited_pool_hands_its_prompts_to_the_next_pool(vendors: Vendors) -> None:
    pools = [Pool(vendors.spec("a"), 2), Pool(vendors.spec("b"), 2)]
    prompts = [f"p{n}" for n in range(60)]
    with structlog.testing.capture_logs() as logs:
        async with aimcluster.launch_cluster(pools, fallback=["a", "b"]) as cluster:
            before = await cluster.map(prompts[:20], tool="a")
            vendors.throttle("a")
            after = await cluster.map(prompts[20:], tool="a", timeout=30)
            metrics = cluster.metrics()
    assert all(r.tool == "a" and not r.failovers for r in before)
    # Every prompt is answered once, by b once a throttles; the 429s were not answers.
    assert all(r.tool == "b" and r.failovers == ("a",) for r in after)
    assert all(r.text == f"b: {r.prompt}" for r in after)
    assert vendors.answered() == Counter(prompts)
    assert vendors.limited("a") >= 1
    a, b = metrics.by_pool()["a"], metrics.by_pool()["b"]
    assert a.pools[0].failovers_out == b.pools[0].failovers_in == 40
    assert metrics.failovers == 40
    assert a.rate_limited >= 1
    assert metrics.failed == 0
    moves = [e for e in logs if e["event"] == "failover"]
    assert len(moves) == 40
    assert {(e["pool"], e["to"]) for e in moves} == {("a", "b")}


async def test_without_a_failover_order_a_rate_limited_prompt_stays_in_its_pool(
    vendors: Vendors,
) -> None:
    pools = [Pool(vendors.spec("a"), 1), Pool(vendors.spec("b"), 1)]
    async with aimcluster.launch_cluster(pools) as cluster:
        vendors.throttle("a")
        # Its retries spent, the rate-limit reply is the reply (as in a cluster of one tool).
        reply = await cluster.send("p", tool="a", timeout=30)
    assert (reply.tool, reply.failovers, reply.text) == ("a", (), "Error: 429 Too Many Requests")
    assert vendors.limited("a") == 3
    assert vendors.answered() == Counter()


async def test_a_pinned_prompt_never_moves(vendors: Vendors) -> None:
    pools = [Pool(vendors.spec("a"), 1), Pool(vendors.spec("b"), 1)]
    async with aimcluster.launch_cluster(pools, fallback=["a", "b"]) as cluster:
        vendors.throttle("a")
        reply = await cluster.send("p", instance=0, timeout=30)
    assert (reply.tool, reply.failovers) == ("a", ())
    assert vendors.limited("a") == 3


async def test_prompts_for_a_failed_pool_go_to_the_next_one(vendors: Vendors) -> None:
    pools = [Pool(vendors.spec("a"), 1, restart=False), Pool(vendors.spec("b"), 1)]
    async with aimcluster.launch_cluster(pools, fallback=["a", "b"]) as cluster:
        with pytest.raises(aimcluster.InstanceCrashedError):
            await cluster.send("crash", tool="a")
        await cluster.wait_for(lambda m: m.instance(0).state == "failed")
        replies = await cluster.map(["p1", "p2"], tool="a")
        assert [(r.tool, r.failovers) for r in replies] == [("b", ("a",)), ("b", ("a",))]
    # Without a failover order the same prompts fail as in a cluster of one tool.
    async with aimcluster.launch_cluster(pools) as cluster:
        with pytest.raises(aimcluster.InstanceCrashedError):
            await cluster.send("crash", tool="a")
        await cluster.wait_for(lambda m: m.instance(0).state == "failed")
        with pytest.raises(aimcluster.NoHealthyInstancesError, match="instances of 'a'"):
            await cluster.send("p3", tool="a")


async def test_a_prompt_queued_past_failover_after_moves_on(vendors: Vendors) -> None:
    pools = [Pool(vendors.spec("a"), 1), Pool(vendors.spec("b"), 1)]
    async with aimcluster.launch_cluster(pools, fallback=["a", "b"], failover_after=0.2) as cluster:
        busy = await cluster.submit("sleep 30", tool="a")
        started = anyio.current_time()
        reply = await cluster.send("waiting", tool="a", timeout=20)
        waited = anyio.current_time() - started
        busy.cancel()
    assert (reply.tool, reply.failovers, reply.text) == ("b", ("a",), "b: waiting")
    assert waited >= 0.2
    assert vendors.answered()["waiting"] == 1


async def test_a_job_moves_whole_to_the_next_pool_when_its_pool_is_rate_limited(
    vendors: Vendors,
) -> None:
    pools = [Pool(vendors.spec("a"), 1), Pool(vendors.spec("b"), 1)]
    jobs = [Job(item=f"item{n}", steps=[f"item{n} step1", f"item{n} step2"]) for n in range(6)]
    gate = vendors.directory / "gate"
    async with aimcluster.launch_cluster(pools, fallback=["a", "b"]) as cluster:
        results = []
        async with run_jobs(cluster, jobs) as run:
            async for result in run:
                results.append(result)
                if len(results) == 2 and not gate.exists():
                    gate.touch()
                    vendors.throttle("a")
    assert all(r.ok for r in results)
    moved = [r for r in results if r.failovers]
    assert moved
    for result in moved:
        # Every step of a moved job was answered on b: it started again from its first step.
        assert (result.tool, result.failovers, result.attempts) == ("b", ("a",), 1)
        assert result.replies == tuple(f"b: {step}" for step in result.job.steps)
    pools = {p.name: p for p in cluster.metrics().pools}
    assert pools["a"].failovers_out == pools["b"].failovers_in == len(moved)
    answered = vendors.answered()
    for job in jobs:
        # A step answered by a before the throttle may have run once there too; after the
        # move each step is answered once by b. Nothing ran more than that.
        assert all(answered[step] in (1, 2) for step in job.steps)


async def test_a_rate_limited_prompt_in_a_lease_fails_for_its_work_to_move(
    vendors: Vendors,
) -> None:
    pools = [Pool(vendors.spec("a"), 1), Pool(vendors.spec("b"), 1)]
    async with aimcluster.launch_cluster(pools, fallback=["a", "b"]) as cluster:
        async with cluster.lease(tool="a") as session:
            vendors.throttle("a")
            with pytest.raises(RateLimitedError, match="'a' rate-limited") as caught:
                await session.send("p")
        assert (caught.value.tool, caught.value.instance) == ("a", 0)
        # Without another pool to go to, a lease's prompt waits out the pause and retries.
        async with cluster.lease(tool="b") as session:
            assert (await session.send("q")).tool == "b"


async def test_scale_grows_and_shrinks_one_pool(vendors: Vendors) -> None:
    pools = [Pool(vendors.spec("a"), 1), Pool(vendors.spec("b"), 1)]
    async with aimcluster.launch_cluster(pools) as cluster:
        with pytest.raises(ValueError, match="several pools"):
            await cluster.scale(2)
        await cluster.scale(3, tool="a")
        assert cluster.pools["a"].instances == (0, 2, 3)
        replies = await cluster.map([f"p{n}" for n in range(9)], tool="a")
        assert {r.instance for r in replies} <= {0, 2, 3}
        await cluster.scale(1, tool="a")
        assert cluster.pools["a"].instances == (0,)
        assert cluster.size == 2
        assert [m.index for m in cluster.metrics().instances] == [0, 1]
        with pytest.raises(ValueError, match=r"in range\(0, 2\), got 3"):
            await cluster.send("x", instance=3)


@pytest.mark.parametrize(
    ("tool", "options", "message"),
    [
        ({"mock": 0}, {}, "count must be an integer >= 1"),
        ([("mock", 1), ("mock", 1)], {}, "two pools are named 'mock'"),
        ({"mock": 1}, {"fallback": ["python"]}, "fallback names no pool 'python'"),
        ({"mock": 1}, {"fallback": ["mock", "mock"]}, "names a pool twice"),
        ({"mock": 1}, {"failover_after": 1.0}, "needs a failover order"),
        ({"mock": 1}, {"fallback": ["mock"], "failover_after": 0}, "must be > 0"),
        ([Pool("mock", tags={"mock"})], {}, "a tag may not be a pool's name"),
        ({"nope": 1}, {}, "unknown tool 'nope'"),
        ({}, {}, "at least one pool"),
    ],
)
def test_bad_pool_arguments_are_refused_up_front(
    tool: object, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        aimcluster.launch_cluster(tool, **options)  # type: ignore[arg-type]


def test_count_goes_with_each_pool() -> None:
    with pytest.raises(ValueError, match="count is given per pool"):
        aimcluster.launch_cluster({"mock": 1}, 2)


def test_the_readme_example_of_several_tools_runs_as_printed() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("### Several tools", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    ran = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    printed = ["42 calc 2", "{'mock'}", "42", "[('mock', (0, 1)), ('calc', (2,))]"]
    assert ran.stdout.splitlines() == printed
    # What the README's comments say it prints.
    assert all(f"# {line}" in code for line in printed)


async def test_a_job_for_one_pool_moves_on_when_that_pool_is_rate_limited_for_good(
    vendors: Vendors,
) -> None:
    # Before, every new lease of the job went back to the pool it named (the only one it
    # could go to), failed with RateLimitedError, and so on, without end.
    pools = [Pool(vendors.spec("a"), 1), Pool(vendors.spec("b"), 1)]
    vendors.throttle("a")
    jobs = [Job(item=f"i{n}", steps=[f"i{n} one", f"i{n} two"], tool="a") for n in range(3)]
    async with aimcluster.launch_cluster(pools, fallback=["a", "b"]) as cluster:
        with anyio.fail_after(30):
            results = [r async for r in run_jobs(cluster, jobs)]
        metrics = cluster.metrics()
    assert all(r.ok and (r.tool, r.failovers) == ("b", ("a",)) for r in results)
    assert vendors.answered() == Counter(s for job in jobs for s in job.steps)
    pools_now = {p.name: p for p in metrics.pools}
    assert pools_now["a"].failovers_out == pools_now["b"].failovers_in == 3


async def test_a_job_whose_lease_moved_while_queued_says_so(vendors: Vendors) -> None:
    pools = [Pool(vendors.spec("a"), 1), Pool(vendors.spec("b"), 1)]
    async with aimcluster.launch_cluster(pools, fallback=["a", "b"], failover_after=0.2) as cluster:
        busy = await cluster.submit("sleep 30", tool="a")
        with anyio.fail_after(30):
            results = [r async for r in run_jobs(cluster, [Job(item="x", steps=["x"], tool="a")])]
        busy.cancel()
    ((result,),) = [results]
    assert (result.tool, result.failovers, result.replies) == ("b", ("a",), ("b: x",))


async def test_a_prompt_for_any_pool_gets_the_longest_of_their_reply_timeouts(
    vendors: Vendors,
) -> None:
    quick = attrs.evolve(vendors.spec("a"), reply_timeout=0.5)
    slow = attrs.evolve(vendors.spec("b"), reply_timeout=30)
    async with aimcluster.launch_cluster([Pool(quick, 1), Pool(slow, 1)]) as cluster:
        # "sleep 1" on b outlives a's timeout; without tool= it may go to b, so b's applies.
        reply = await cluster.send("sleep 1", tool="b")
        assert reply.tool == "b"
        with pytest.raises(aimcluster.ReplyTimeoutError):
            await cluster.send("sleep 1", tool="a")
        replies = await cluster.map(["sleep 1", "sleep 1"])
        assert {r.tool for r in replies} == {"a", "b"}


async def test_a_prompt_that_waited_for_room_in_a_pool_that_failed_meanwhile_moves_on(
    vendors: Vendors,
) -> None:
    # Before, the producer was granted room as the failed pool's queue was emptied, and its
    # prompt went into that dead pool's queue, where nobody would ever take it.
    pools = [Pool(vendors.spec("a"), 1, restart=False), Pool(vendors.spec("b"), 1)]
    async with aimcluster.launch_cluster(pools, fallback=["a", "b"], max_pending=1) as cluster:
        busy = await cluster.submit("sleep 30", tool="a")
        queued = await cluster.submit("queued", tool="a")
        async with anyio.create_task_group() as tg:
            waiting: list[aimcluster.Reply] = []

            async def send_when_there_is_room() -> None:
                waiting.append(await cluster.send("waited", tool="a"))

            tg.start_soon(send_when_there_is_room)
            await anyio.wait_all_tasks_blocked()
            cluster.restart_instance(0)  # no restart policy: pool a has failed
            with anyio.fail_after(20):
                assert (await queued).tool == "b"
        with pytest.raises(aimcluster.InstanceCrashedError):
            await busy
    (reply,) = waiting
    assert (reply.tool, reply.failovers, reply.text) == ("b", ("a",), "b: waited")
