"""Clusters of several pools of real tools: Claude Code and aider, each against its loopback
stand-in server, on both backends.

Claude Code (``tests/vendor_claude.py``) and aider (``tests/fake_openai.py``) are the two
long-lived tools: one process answers many prompts, quickly (about 0.07 s and 0.15 s a prompt
here), so routing by tool, sticky keys across restarts and leases per tool are about the same
processes, and a run of 200 jobs takes seconds. The one-process-per-prompt CLIs (Codex, Gemini)
take 0.5 s and 2.7 s a prompt to start and add nothing to these scenarios. aider's profile has
no rate-limit pattern (it retries a 429 itself), so Claude Code is the pool that gets throttled.

Both stand-ins answer ``echo: <prompt>``: the first line of every reply, whatever its tool.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio
import pytest
import structlog

import aimcluster
from aimcluster import Job, Pool, run_jobs, tools

from .clis import real_cli
from .fake_openai import FakeOpenAI
from .test_aider import find_aider, offline_aider
from .vendor_claude import FakeAnthropic

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

KEY = "sk-ant-test-pools"


@pytest.fixture(scope="module")
def claude_cli() -> str:
    return real_cli("claude")


@pytest.fixture(scope="module")
def aider_cli() -> str:
    found = find_aider()
    if found is None:
        message = "aider not found (set AIMCLUSTER_AIDER, or run .ci/install-aider)"
        if os.environ.get("AIMCLUSTER_REQUIRE_INTEGRATION") == "1":
            pytest.fail(f"{message}; AIMCLUSTER_REQUIRE_INTEGRATION=1 forbids skipping")
        pytest.skip(message)
    return found


@pytest.fixture
def anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(model="fake") as server:
        yield server


@pytest.fixture
def claude(
    claude_cli: str, anthropic: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> aimcluster.ToolSpec:
    """Claude Code against its stand-in. ``max_retries=0``: the CLI reports a 429 at once
    instead of retrying it with its own backoff (0.5 s, 1 s, ...), so the cluster sees it."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "claude-work"
    work.mkdir()
    return tools.claude(
        executable=claude_cli, api_base=anthropic.base_url, api_key=KEY, cwd=work, max_retries=0
    )


@pytest.fixture
def aider(aider_cli: str, openai: FakeOpenAI, tmp_path: Path) -> aimcluster.ToolSpec:
    project = tmp_path / "aider-work"
    project.mkdir()
    return offline_aider(tools.aider, aider_cli, openai, tmp_path, project)


def answer(reply: aimcluster.Reply) -> str:
    """The stand-in's answer: Claude Code's result, or the first line of aider's reply (its
    token count follows)."""
    return reply.text.strip().splitlines()[0]


def answered_by_claude(server: FakeAnthropic) -> Counter[str]:
    """The prompts Claude Code's stand-in answered (not refused), each as often as it did."""
    return Counter(r.last_user_text for r in server.messages if r.status == 200)


def refused_by_claude(server: FakeAnthropic) -> Counter[str]:
    return Counter(r.last_user_text for r in server.messages if r.status != 200)


def answered_by_aider(server: FakeOpenAI) -> Counter[str]:
    """The prompts aider's stand-in answered (aider appends nothing to a one-line prompt's
    first line)."""
    return Counter(r.last_user_text.splitlines()[0] for r in server.completions if r.status == 200)


def check_echoes(replies: Sequence[aimcluster.Reply]) -> None:
    assert [answer(r) for r in replies] == [f"echo: {r.prompt}" for r in replies]


@pytest.mark.timeout(300)
async def test_prompts_go_to_the_pool_they_name_or_across_both_without_one(
    claude: aimcluster.ToolSpec,
    aider: aimcluster.ToolSpec,
    anthropic: FakeAnthropic,
    openai: FakeOpenAI,
) -> None:
    pools = [Pool(claude, 2), Pool(aider, 2, tags={"local"})]
    async with aimcluster.launch_cluster(pools) as cluster:
        assert {name: info.instances for name, info in cluster.pools.items()} == {
            "claude": (0, 1),
            "aider": (2, 3),
        }
        assert [cluster.tool_of(i) for i in range(4)] == ["claude", "claude", "aider", "aider"]
        to_claude = await cluster.map([f"c{n}" for n in range(6)], tool="claude", timeout=60)
        to_aider = await cluster.map([f"a{n}" for n in range(6)], tool="local", timeout=60)
        anywhere = await cluster.map([f"any{n}" for n in range(16)], timeout=60)
        metrics = cluster.metrics()
    replies = [*to_claude, *to_aider, *anywhere]
    check_echoes(replies)
    assert {(r.tool, r.failovers) for r in to_claude} == {("claude", ())}
    assert {r.instance for r in to_claude} <= {0, 1}
    assert {(r.tool, r.failovers) for r in to_aider} == {("aider", ())}
    assert {r.instance for r in to_aider} <= {2, 3}
    # Without tool= both pools serve, and each reply names the pool of its instance.
    assert {r.tool for r in anywhere} == {"claude", "aider"}
    assert all(r.tool == ("claude" if r.instance < 2 else "aider") for r in anywhere)
    # Each prompt reached the stand-in of its reply's tool, once, and no other.
    assert answered_by_claude(anthropic) == Counter(r.prompt for r in replies if r.tool == "claude")
    assert answered_by_aider(openai) == Counter(r.prompt for r in replies if r.tool == "aider")
    assert refused_by_claude(anthropic) == Counter()
    by_pool = metrics.by_pool()
    assert by_pool["claude"].completed == 6 + sum(r.tool == "claude" for r in anywhere)
    assert by_pool["aider"].completed == 6 + sum(r.tool == "aider" for r in anywhere)
    assert [m.tool for m in metrics.instances] == ["claude", "claude", "aider", "aider"]
    assert metrics.failovers == 0


@pytest.mark.timeout(300)
async def test_sticky_keys_come_back_to_their_instance_after_it_restarts(
    claude: aimcluster.ToolSpec,
    aider: aimcluster.ToolSpec,
    anthropic: FakeAnthropic,
) -> None:
    keys = [f"key{n}" for n in range(12)]
    pools = [Pool(claude, 2), Pool(aider, 2)]
    async with aimcluster.launch_cluster(pools, routing="sticky") as cluster:
        anywhere = [await cluster.send(f"{k} 1", key=k, timeout=60) for k in keys]
        in_pool = [await cluster.send(f"{k} 2", key=k, tool="aider", timeout=60) for k in keys]
        pids = cluster.pids
        # One of each pool: Claude Code stopped gracefully, aider killed (the supervisor
        # starts it again).
        await cluster.restart(0, timeout=60)
        cluster.restart_instance(3)
        after = await cluster.wait_for(
            lambda m: m.instance(3).restarts == 1 and m.instance(3).state == "ready", timeout=120
        )
        assert after.instance(0).restarts == 1
        assert cluster.pids[1:3] == pids[1:3]
        assert cluster.pids[0] != pids[0]
        assert cluster.pids[3] != pids[3]
        anywhere_again = [await cluster.send(f"{k} 3", key=k, timeout=60) for k in keys]
        in_pool_again = [
            await cluster.send(f"{k} 4", key=k, tool="aider", timeout=60) for k in keys
        ]
    check_echoes([*anywhere, *in_pool, *anywhere_again, *in_pool_again])
    # The keys spread over all four instances of both pools, and each key's instance is the
    # same after the restarts, across the pools and within one.
    placed = [r.instance for r in anywhere]
    assert set(placed) == {0, 1, 2, 3}
    assert [r.instance for r in anywhere_again] == placed
    assert [r.tool for r in anywhere] == ["claude" if i < 2 else "aider" for i in placed]
    within = [r.instance for r in in_pool]
    assert set(within) == {2, 3}
    assert [r.instance for r in in_pool_again] == within
    # Instance 0's keys were answered by a new Claude Code process after the restart.
    sessions = {r.last_user_text: r.headers["x-claude-code-session-id"] for r in anthropic.messages}
    for key, instance in zip(keys, placed, strict=True):
        if instance == 0:
            assert sessions[f"{key} 1"] != sessions[f"{key} 3"]
        elif instance == 1:
            assert sessions[f"{key} 1"] == sessions[f"{key} 3"]


@pytest.mark.timeout(300)
async def test_a_lease_for_a_tool_holds_an_instance_of_that_tool(
    claude: aimcluster.ToolSpec, aider: aimcluster.ToolSpec
) -> None:
    async with aimcluster.launch_cluster([Pool(claude, 1), Pool(aider, 1)]) as cluster:
        async with cluster.lease(tool="aider") as held:
            assert (held.tool, held.instance, held.spec.name) == ("aider", 1, "aider")
            waiting = await cluster.submit("queued for aider", tool="aider", timeout=60)
            steps = [await held.send(p, timeout=60) for p in ("step 1", "step 2")]
            # Claude Code still serves; the only aider serves the lease alone.
            free = await cluster.send("free", tool="claude", timeout=60)
            assert not waiting.done
        queued = await waiting
        async with cluster.lease("some key", tool="claude") as other:
            assert (other.tool, other.instance, other.spec.name) == ("claude", 0, "claude")
            held_claude = await other.send("held", timeout=60)
    check_echoes([*steps, free, queued, held_claude])
    assert [(r.tool, r.instance) for r in steps] == [("aider", 1), ("aider", 1)]
    assert (free.tool, free.instance) == ("claude", 0)
    assert (queued.tool, queued.instance) == ("aider", 1)
    assert (held_claude.tool, held_claude.instance) == ("claude", 0)


#: The failover run: jobs, and the request from which Claude Code's stand-in refuses for good.
JOBS = 200
THROTTLED_FROM = 61


@pytest.mark.timeout(300)
async def test_jobs_move_to_aider_when_claude_is_rate_limited_for_good_and_none_runs_twice(
    claude: aimcluster.ToolSpec,
    aider: aimcluster.ToolSpec,
    anthropic: FakeAnthropic,
    openai: FakeOpenAI,
) -> None:
    anthropic.fail_from(THROTTLED_FROM, 429)
    jobs = [Job(item=f"item{n:03}", steps=[f"item{n:03} step"]) for n in range(JOBS)]
    pools = [Pool(claude, 2), Pool(aider, 2)]
    with structlog.testing.capture_logs() as logs:
        async with aimcluster.launch_cluster(pools, fallback=["claude", "aider"]) as cluster:
            async with run_jobs(cluster, jobs, timeout=60) as run:
                results = [result async for result in run]
            metrics = cluster.metrics()

    # Every job ended ok, once.
    assert sorted(r.item for r in results) == [job.item for job in jobs]
    assert [r.status for r in results] == ["ok"] * JOBS
    assert all(r.attempts == 1 for r in results)
    for result in results:
        assert answer_text(result) == f"echo: {result.job.steps[0]}"

    # Each step was answered once, over both stand-ins: Claude Code's first 60 requests, then
    # aider; the requests Claude Code's stand-in refused were not answers.
    claude_answered = answered_by_claude(anthropic)
    aider_answered = answered_by_aider(openai)
    assert claude_answered + aider_answered == Counter(job.steps[0] for job in jobs)
    assert sum(claude_answered.values()) == THROTTLED_FROM - 1
    refused = refused_by_claude(anthropic)
    assert refused  # Claude Code's pool did see the 429s
    assert not refused & claude_answered  # a refused step was never answered there later

    # The results say where each job ran, and which moved.
    on_claude = {r.job.steps[0] for r in results if r.tool == "claude"}
    assert on_claude == set(claude_answered)
    assert all(r.failovers == () for r in results if r.tool == "claude")
    moved = [r for r in results if r.failovers]
    assert {(r.tool, r.failovers) for r in moved} == {("aider", ("claude",))}
    # Every step Claude Code's stand-in refused belongs to a job that moved.
    assert set(refused) <= {r.job.steps[0] for r in moved}

    # The metrics and the log count the moves: every job that moved, and any lease moved
    # while still queued; all from claude to aider.
    pools_now = {pool.name: pool for pool in metrics.pools}
    assert pools_now["claude"].failovers_out == pools_now["aider"].failovers_in >= len(moved)
    assert pools_now["aider"].failovers_out == pools_now["claude"].failovers_in == 0
    assert metrics.failovers == pools_now["claude"].failovers_out
    moves = [e for e in logs if e["event"] == "failover"]
    assert len(moves) == metrics.failovers
    assert {(e["pool"], e["to"], e["reason"]) for e in moves} <= {
        ("claude", "aider", "rate_limited")
    }
    assert metrics.by_pool()["claude"].rate_limited >= 1
    assert metrics.by_pool()["claude"].completed == THROTTLED_FROM - 1
    assert metrics.by_pool()["aider"].completed == JOBS - (THROTTLED_FROM - 1)
    assert metrics.failed == 0


@pytest.mark.timeout(300)
async def test_a_jobs_move_is_counted_in_the_pool_metrics_and_logged(
    claude: aimcluster.ToolSpec,
    aider: aimcluster.ToolSpec,
    anthropic: FakeAnthropic,
) -> None:
    anthropic.fail_from(1, 429)
    pools = [Pool(claude, 1), Pool(aider, 1)]
    with structlog.testing.capture_logs() as logs:
        async with aimcluster.launch_cluster(pools, fallback=["claude", "aider"]) as cluster:
            async with run_jobs(cluster, [Job(item="one", steps=["one step"])], timeout=60) as run:
                (result,) = [result async for result in run]
            metrics = cluster.metrics()
    # Both pools idle, the job went to the first, claude, was refused there and moved.
    assert (result.status, result.tool, result.failovers) == ("ok", "aider", ("claude",))
    assert refused_by_claude(anthropic) == Counter(["one step"])
    pools_now = {pool.name: pool for pool in metrics.pools}
    assert (pools_now["claude"].failovers_out, pools_now["aider"].failovers_in) == (1, 1)
    assert metrics.failovers == 1
    assert [(e["pool"], e["to"]) for e in logs if e["event"] == "failover"] == [("claude", "aider")]


@pytest.mark.timeout(300)
async def test_a_job_for_one_tool_moves_on_when_that_tool_is_rate_limited_for_good(
    claude: aimcluster.ToolSpec,
    aider: aimcluster.ToolSpec,
    anthropic: FakeAnthropic,
    openai: FakeOpenAI,
) -> None:
    anthropic.fail_from(1, 429)
    pools = [Pool(claude, 1), Pool(aider, 1)]
    job = Job(item="one", steps=["one step"], tool="claude")
    async with aimcluster.launch_cluster(pools, fallback=["claude", "aider"]) as cluster:
        with anyio.fail_after(15):
            async with run_jobs(cluster, [job], timeout=20) as run:
                (result,) = [result async for result in run]
    assert (result.status, result.tool, result.failovers) == ("ok", "aider", ("claude",))
    assert answered_by_aider(openai) == Counter(["one step"])
    assert refused_by_claude(anthropic) == Counter(["one step"])


def answer_text(result: aimcluster.JobResult) -> str:
    (reply,) = result.replies
    return reply.strip().splitlines()[0]
