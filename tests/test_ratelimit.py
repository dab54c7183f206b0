"""Rate limits: a cluster-wide, jittered pause, and the prompt sent again instead of failed."""

from __future__ import annotations

import logging
import random
import sys
import textwrap
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, NoReturn

import anyio
import attrs
import pytest
import structlog

import aimcluster
from aimcluster import tools
from aimcluster._base.errors import ToolError
from aimcluster._base.ratelimit import RateLimiter

STANDINS = Path(__file__).parent / "standins"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pauses_double_with_jitter_up_to_the_cap_and_reset_on_success() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, rng=random.Random(7))
    lengths = []
    for _ in range(5):
        lengths.append(limiter.pause(base=1.0, cap=5.0))
        clock.now += 10
    fulls = [1.0, 2.0, 4.0, 5.0, 5.0]
    assert all(0.5 * full <= length <= full for length, full in zip(lengths, fulls, strict=True))
    limiter.succeeded()
    assert 0.5 <= limiter.pause(base=1.0, cap=5.0) <= 1.0


def test_a_rate_limit_during_a_pause_does_not_lengthen_it() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    first = limiter.pause(base=4.0, cap=60.0)
    clock.now += 1
    assert limiter.pause(base=4.0, cap=60.0) == pytest.approx(first - 1)
    assert limiter.streak == 1
    assert limiter.paused
    clock.now += first
    assert not limiter.paused


def claude(**env: str) -> aimcluster.ToolSpec:
    spec = tools.claude(executable=STANDINS / "claude", env=env)
    return attrs.evolve(spec, rate_limit_backoff=0.3)


@pytest.mark.anyio
async def test_claude_rate_limit_pauses_and_sends_the_prompt_again() -> None:
    spec = attrs.evolve(claude(STANDIN_RATE_LIMIT="1"), rate_limit_backoff=1)
    with structlog.testing.capture_logs() as logs:
        async with aimcluster.launch_cluster(spec, count=1) as cluster:
            reply = await cluster.send("hi", timeout=20)
            metrics = cluster.metrics()
    assert reply.text == "echo: hi"
    assert reply.attempts == 2
    assert reply.elapsed < 1  # the second attempt's own time, without the pause
    assert (metrics.rate_limited, metrics.failed, metrics.completed) == (1, 0, 1)
    (event,) = [e for e in logs if e["event"] == "rate_limited"]
    assert event["match"] == "(api_error_status 429)"
    assert 0.5 <= event["pause"] <= 1  # the backoff, with jitter
    assert event["instance"] == 0


@pytest.mark.anyio
async def test_rate_limit_pause_holds_back_every_instance(tmp_path: Path) -> None:
    # Three one-shot codex runs share a counter: the first two answers are 429s.
    env = {"STANDIN_RATE_LIMIT": "2", "STANDIN_STATE": str(tmp_path / "state.json")}
    spec = attrs.evolve(
        tools.codex(executable=STANDINS / "codex", skip_git_repo_check=True, env=env),
        rate_limit_backoff=0.5,
    )
    async with aimcluster.launch_cluster(spec, count=3) as cluster:
        started = anyio.current_time()
        replies = await cluster.map(["a", "b", "c"], timeout=30)
        took = anyio.current_time() - started
        metrics = cluster.metrics()
    assert [r.text for r in replies] == ["echo: a", "echo: b", "echo: c"]
    assert metrics.rate_limited == 2
    assert metrics.failed == 0
    # Whoever was limited waited out at least one jittered pause (0.25 s at the least).
    assert took >= 0.25


# Logs each prompt with the time it read it (CLOCK_MONOTONIC: one clock for every process),
# and answers the first "limited" prompt of the whole cluster with a rate-limit error.
_TIMED_TOOL = """
import os, sys, time

log, first = sys.argv[1], sys.argv[2]
sys.stdout.write("> ")
sys.stdout.flush()
for line in sys.stdin:
    prompt = line.rstrip("\\n")
    with open(log, "a") as handle:
        handle.write(f"{time.monotonic()!r} {prompt}\\n")
    if prompt == "limited" and not os.path.exists(first):
        open(first, "x").close()
        sys.stdout.write("Error: 429 Too Many Requests\\n> ")
    else:
        sys.stdout.write(f"echo: {prompt}\\n> ")
    sys.stdout.flush()
"""


@pytest.mark.anyio
async def test_rate_limit_pause_holds_back_a_prompt_to_another_instance(tmp_path: Path) -> None:
    # Instance 0 is rate-limited; a prompt for instance 1, sent once the pause has begun, must
    # not reach its tool before the pause ends (with a limiter per instance it went at once).
    tool, log = tmp_path / "tool.py", tmp_path / "prompts.log"
    tool.write_text(textwrap.dedent(_TIMED_TOOL))
    spec = aimcluster.ToolSpec(
        name="timed",
        argv=[sys.executable, str(tool), str(log), str(tmp_path / "limited-once")],
        ready=r"> $",
        rate_limit=r"\b429\b",
        rate_limit_backoff=2.0,  # a pause of 1 to 2 s
    )
    pauses: list[float] = []
    paused = anyio.Event()

    def on_rate_limited(_logger: object, _method: str, event: MutableMapping[str, Any]) -> NoReturn:
        if event["event"] == "rate_limited":
            pauses.append(event["pause"])
            paused.set()
        raise structlog.DropEvent

    logger = structlog.wrap_logger(
        None,
        processors=[on_rate_limited],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
    async with aimcluster.launch_cluster(spec, count=2, logger=logger) as cluster:
        replies: list[str] = []

        async def send(prompt: str, instance: int) -> None:
            replies.append((await cluster.send(prompt, instance=instance, timeout=30)).text)

        async with anyio.create_task_group() as tg:
            tg.start_soon(send, "limited", 0)
            with anyio.fail_after(20):
                await paused.wait()
            tg.start_soon(send, "other", 1)

    assert sorted(replies) == ["echo: limited", "echo: other"]
    (pause,) = pauses
    read = [line.split(" ", 1) for line in log.read_text().splitlines()]
    first_limited = next(float(at) for at, prompt in read if prompt == "limited")
    (other,) = [float(at) for at, prompt in read if prompt == "other"]
    # The pause began after the tool read the first "limited"; "other" waited all of it.
    # (The logged pause is rounded to the millisecond.)
    assert other - first_limited >= pause - 0.001
    assert [prompt for _at, prompt in read].count("limited") == 2


@pytest.mark.anyio
async def test_gemini_quota_error_is_a_rate_limit(tmp_path: Path) -> None:
    env = {"STANDIN_RATE_LIMIT": "1", "STANDIN_STATE": str(tmp_path / "state.json")}
    spec = attrs.evolve(
        tools.gemini(executable=STANDINS / "gemini", env=env), rate_limit_backoff=0.1
    )
    async with aimcluster.launch_cluster(spec, count=1) as cluster:
        reply = await cluster.send("hi", timeout=20)
        assert cluster.metrics().rate_limited == 1
    assert reply.text == "echo: hi"


@pytest.mark.anyio
async def test_jules_429_on_stderr_is_a_rate_limit(tmp_path: Path) -> None:
    env = {"STANDIN_RATE_LIMIT": "1", "STANDIN_STATE": str(tmp_path / "state.json")}
    spec = attrs.evolve(
        tools.jules(executable=STANDINS / "jules", repo="o/r", env=env), rate_limit_backoff=0.1
    )
    async with aimcluster.launch_cluster(spec, count=1) as cluster:
        reply = await cluster.send("hi", timeout=20)
        assert cluster.metrics().rate_limited == 1
    assert reply.text.startswith("Session is created.")


@pytest.mark.anyio
async def test_after_rate_limit_retries_the_error_is_raised() -> None:
    spec = attrs.evolve(
        claude(STANDIN_RATE_LIMIT="5"), rate_limit_backoff=0.05, rate_limit_retries=2
    )
    async with aimcluster.launch_cluster(spec, count=1) as cluster:
        with pytest.raises(ToolError) as caught:
            await cluster.send("hi", timeout=20)
        assert cluster.metrics().rate_limited == 2
    assert caught.value.event is not None
    assert caught.value.event["api_error_status"] == 429


@pytest.mark.anyio
async def test_a_paused_prompt_still_times_out() -> None:
    spec = attrs.evolve(claude(STANDIN_RATE_LIMIT="5"), rate_limit_backoff=30.0)
    async with aimcluster.launch_cluster(spec, count=1) as cluster:
        with pytest.raises(aimcluster.ReplyTimeoutError):
            await cluster.send("hi", timeout=1)
