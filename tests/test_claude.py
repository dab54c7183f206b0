"""The real Claude Code (``@anthropic-ai/claude-code`` 2.1.332) through the ``claude`` profile,
on both backends.

Every test points the CLI at :class:`tests.vendor_claude.FakeAnthropic` on 127.0.0.1 through the
profile's ``api_base=`` and ``api_key=``: several prompts to one long-lived process, a fleet of
four that shares no configuration file, a 429 that the CLI gives up on and the cluster pauses
for, the CLI's own retries, a stall mid-stream, a failed turn and the usage on the Reply. The
test process's ``HOME`` is a directory of its own holding a sentinel ``~/.claude.json``, checked
unchanged after each test. The CLI is found by ``tests/clis.py`` (skipped without it, failed in
CI).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import aimcluster
from aimcluster import InstanceStalledError, ToolError, tools
from aimcluster.tools import CLAUDE_EVENTS, CLAUDE_RATE_LIMIT, claude_usage

from .clis import real_cli
from .vendor_claude import FakeAnthropic

#: The tests that run the real CLI (the others check the profile without running it).
real = pytest.mark.integration

KEY = "sk-ant-test-claude"
SENTINEL = '{"userID": "the user\'s own", "sentinel": true}\n'
#: What the stand-in reports for every answer, and the turn's usage as the CLI passes it on.
USAGE = aimcluster.Usage(input_tokens=150, output_tokens=7, cached_tokens=30, requests=1)


@pytest.fixture(scope="module")
def claude_cli() -> str:
    return real_cli("claude")


@pytest.fixture
def server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(input_tokens=120, cache_read_input_tokens=30, output_tokens=7) as fake:
        yield fake


@pytest.fixture
def user_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The test process's HOME, with a ``.claude.json`` of "the user's"; every test checks
    that the CLI left it, and the whole home, exactly as it was."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".claude.json").write_text(SENTINEL)
    monkeypatch.setenv("HOME", str(home))
    # The cluster's {state} directories go under tmp_path, where the test can find them.
    state_root = tmp_path / "tmp"
    state_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(state_root))
    yield home
    assert (home / ".claude.json").read_text() == SENTINEL
    assert sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) == [".claude.json"]


def spec(cli: str, server: FakeAnthropic, cwd: Path, **options: Any) -> aimcluster.ToolSpec:
    tuning = {k: options.pop(k) for k in ("stall_timeout", "rate_limit_backoff") if k in options}
    profile = tools.claude(
        executable=cli, api_base=server.base_url, api_key=KEY, cwd=cwd, **options
    )
    return attrs.evolve(profile, **tuning)


def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir(exist_ok=True)
    return path


def cost_of(reply: aimcluster.Reply) -> float:
    """The turn's cost as the CLI computed it (it prices the model, not the stand-in)."""
    (result,) = [e for e in reply.events if e.get("type") == "result"]
    return float(sum(m["costUSD"] for m in result["model_usage_since_last_result"].values()))


@real
@pytest.mark.anyio
async def test_real_claude_answers_several_prompts_in_one_process_with_their_usage(
    claude_cli: str, server: FakeAnthropic, user_home: Path, tmp_path: Path
) -> None:
    prompts = ["one", "two words", "-starts with a dash", 'a "quoted"\nsecond line']
    async with aimcluster.launch_cluster(
        spec(claude_cli, server, workdir(tmp_path)), count=1
    ) as cluster:
        replies = [await cluster.send(prompt, timeout=30) for prompt in prompts]
        metrics = cluster.metrics()
    assert [r.text for r in replies] == [f"echo: {p}" for p in prompts]
    assert [r.usage for r in replies] == [
        attrs.evolve(USAGE, cost_usd=cost_of(reply)) for reply in replies
    ]
    # Per turn, not the session's running total (which total_cost_usd is).
    assert replies[0].usage == replies[3].usage
    assert replies[0].usage is not None
    assert replies[0].usage.cost_usd
    assert attrs.evolve(metrics.usage, cost_usd=None) == aimcluster.Usage(
        input_tokens=600, output_tokens=28, cached_tokens=120, requests=4
    )
    assert metrics.usage.cost_usd == pytest.approx(sum(cost_of(r) for r in replies))
    assert metrics.tool_retries == 0
    assert metrics.restarts == 0
    # One process: one session for every request; the prompts arrive as sent.
    assert [r.last_user_text for r in server.messages] == prompts
    assert len({r.headers["x-claude-code-session-id"] for r in server.messages}) == 1
    # Non-essential traffic is off: no HEAD /api/hello, nothing but the Messages API.
    assert {(r.method, r.path) for r in server.requests} == {("POST", "/v1/messages?beta=true")}
    assert {r.headers["x-api-key"] for r in server.requests} == {KEY}
    assert all(r.json["stream"] is True for r in server.messages)
    # system/init starts every turn, and num_turns is 1 per turn, in 2.1.332.
    for reply in replies:
        assert reply.events[0]["type"] == "system"
        assert reply.events[0]["subtype"] == "init"
        assert reply.events[-1]["num_turns"] == 1


@real
@pytest.mark.anyio
async def test_real_claude_fleet_of_four_shares_no_config_file(
    claude_cli: str, server: FakeAnthropic, user_home: Path, tmp_path: Path
) -> None:
    prompts = [f"prompt {i}" for i in range(8)]
    async with aimcluster.launch_cluster(
        spec(claude_cli, server, workdir(tmp_path)), count=4
    ) as cluster:
        replies = await cluster.map(prompts, timeout=40)
        (state_root,) = (tmp_path / "tmp").glob("aimcluster-claude-*")
        configs = sorted(state_root.glob("*/claude/.claude.json"))
        contents = [path.read_text() for path in configs]
        modes = {path.stat().st_mode & 0o777 for path in configs}
        inodes = {path.stat().st_ino for path in configs}
    assert [r.text for r in replies] == [f"echo: {p}" for p in prompts]
    # Each instance's CLAUDE_CONFIG_DIR is its own {state}/claude: four files, four owners.
    assert [p.relative_to(state_root).as_posix() for p in configs] == [
        f"{i}/claude/.claude.json" for i in range(4)
    ]
    assert len(inodes) == 4
    assert all('"userID"' in text for text in contents)
    assert len(set(contents)) == 4  # each CLI made its own (its own userID)
    assert modes == {0o600}
    assert len({r.headers["x-claude-code-session-id"] for r in server.messages}) == 4
    # The cluster removes the state directories when it stops.
    assert not state_root.exists()


@pytest.mark.parametrize("status", [429, 529])
@real
@pytest.mark.anyio
async def test_real_claude_429_that_outlasts_its_retries_pauses_the_cluster_and_resends(
    claude_cli: str, server: FakeAnthropic, user_home: Path, tmp_path: Path, status: int
) -> None:
    # max_retries=1: two tries, both refused; the CLI ends the turn with api_error_status 429
    # ("API Error: Request rejected (429) · ..."), or 529 for an overloaded API.
    server.fail_next(status, count=2)
    fleet = spec(claude_cli, server, workdir(tmp_path), max_retries=1, rate_limit_backoff=0.2)
    async with aimcluster.launch_cluster(fleet, count=1) as cluster:
        reply = await cluster.send("after the limit", timeout=40)
        metrics = cluster.metrics()
    assert reply.text == "echo: after the limit"
    assert metrics.rate_limited == 1
    assert metrics.failed == 0
    assert metrics.restarts == 0
    # The CLI's one retry before it gave up, counted although the prompt succeeded.
    assert metrics.tool_retries == 1
    assert [r.status for r in server.messages] == [status, status, 200]
    assert reply.usage == attrs.evolve(USAGE, cost_usd=cost_of(reply))


@real
@pytest.mark.anyio
async def test_real_claude_retries_a_429_on_its_own_and_the_retry_is_counted(
    claude_cli: str, server: FakeAnthropic, user_home: Path, tmp_path: Path
) -> None:
    server.fail_next(429, count=1)
    async with aimcluster.launch_cluster(
        spec(claude_cli, server, workdir(tmp_path)), count=1
    ) as cluster:
        reply = await cluster.send("once refused", timeout=40)
        metrics = cluster.metrics()
    assert reply.text == "echo: once refused"
    retries = [e for e in reply.events if e.get("subtype") == "api_retry"]
    assert [(e["attempt"], e["max_retries"], e["error_status"]) for e in retries] == [
        (1, tools.CLAUDE_MAX_RETRIES, 429)
    ]
    assert metrics.tool_retries == 1
    assert metrics.rate_limited == 0
    assert [r.status for r in server.messages] == [429, 200]


@real
@pytest.mark.anyio
async def test_real_claude_failed_turn_is_a_tool_error_and_the_process_carries_on(
    claude_cli: str, server: FakeAnthropic, user_home: Path, tmp_path: Path
) -> None:
    # A 403 is not retried by the CLI, and is no rate limit.
    server.fail_next(403, message="Your API key does not have permission to use the model.")
    async with aimcluster.launch_cluster(
        spec(claude_cli, server, workdir(tmp_path)), count=1
    ) as cluster:
        with pytest.raises(ToolError) as caught:
            await cluster.send("too long", timeout=30)
        reply = await cluster.send("next", timeout=30)
        metrics = cluster.metrics()
    assert str(caught.value).endswith(
        ": Failed to authenticate. API Error: 403 Your API key does not have permission to use "
        "the model. (api_error_status 403)"
    )
    assert reply.text == "echo: next"
    assert metrics.failed == 1
    assert metrics.rate_limited == 0
    assert metrics.restarts == 0
    assert len({r.headers["x-claude-code-session-id"] for r in server.messages}) == 1


@real
@pytest.mark.anyio
async def test_real_claude_stalled_mid_stream_fails_the_prompt_and_restarts_the_instance(
    claude_cli: str, server: FakeAnthropic, user_home: Path, tmp_path: Path
) -> None:
    # The answer starts, then the server sends nothing more (the CLI waits on; 2.1.332 has no
    # stream watchdog on by default): the cluster's stall watchdog kills it.
    server.stall_next(1)
    stalling = spec(claude_cli, server, workdir(tmp_path), stall_timeout=3.0)
    async with aimcluster.launch_cluster(stalling, count=1) as cluster:
        with pytest.raises(InstanceStalledError) as caught:
            await cluster.send("stalls", timeout=45)
        after = await cluster.send("after the stall", timeout=30)
        metrics = cluster.metrics()
    assert metrics.restarts == 1
    assert after.text == "echo: after the stall"
    # What the CLI had printed of the turn (its init event) comes with the error.
    assert '"subtype":"init"' in caught.value.partial_output
    assert len({r.headers["x-claude-code-session-id"] for r in server.messages}) == 2


# -- the profile, without the CLI --------------------------------------------------------------


def test_claude_profile_gives_each_instance_its_own_config_and_turns_off_traffic() -> None:
    spec = tools.claude(api_base="http://127.0.0.1:9", api_key="sk-1")
    assert dict(spec.env or {}) == {
        "CLAUDE_CONFIG_DIR": "{state}/claude",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_MAX_RETRIES": "2",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
        "ANTHROPIC_API_KEY": "sk-1",
    }
    assert spec.rate_limit == CLAUDE_RATE_LIMIT
    assert spec.usage is claude_usage


def test_claude_max_retries_none_leaves_the_cli_default_and_env_overrides_the_profile() -> None:
    spec = tools.claude(max_retries=None, env={"DISABLE_TELEMETRY": "0", "X": "y"})
    env = dict(spec.env or {})
    assert "CLAUDE_CODE_MAX_RETRIES" not in env
    assert "ANTHROPIC_BASE_URL" not in env
    assert "ANTHROPIC_API_KEY" not in env
    assert env["DISABLE_TELEMETRY"] == "0"
    assert env["X"] == "y"
    with pytest.raises(ValueError, match="max_retries must be >= 0 or None, got -1"):
        tools.claude(max_retries=-1)


def result(**fields: Any) -> dict[str, Any]:
    return {"type": "result", "subtype": "success", "is_error": True, **fields}


@pytest.mark.parametrize(
    ("event", "message", "rate_limited"),
    [
        (
            result(
                api_error_status=429,
                result="API Error: Request rejected (429) · Number of request tokens has "
                "exceeded your per-minute rate limit",
            ),
            "API Error: Request rejected (429) · Number of request tokens has exceeded your "
            "per-minute rate limit (api_error_status 429)",
            True,
        ),
        (
            result(api_error_status=529, result="API Error: 529 Overloaded. Try again."),
            "API Error: 529 Overloaded. Try again. (api_error_status 529)",
            True,
        ),
        (
            result(api_error_status=401, result="Invalid API key · Fix external API key"),
            "Invalid API key · Fix external API key (api_error_status 401)",
            False,
        ),
        # A tool failure that talks about a rate limit is no rate limit of the provider's.
        (
            result(
                subtype="error_during_execution",
                errors=["curl: (22) The requested URL returned error: 429 (rate limit)"],
            ),
            "curl: (22) The requested URL returned error: 429 (rate limit)",
            False,
        ),
    ],
)
def test_claude_rate_limit_is_the_api_error_status_of_the_failed_turn(
    event: dict[str, Any], message: str, rate_limited: bool
) -> None:
    failure = CLAUDE_EVENTS.failure([event])
    assert failure is not None
    assert failure == message
    assert (re.search(CLAUDE_RATE_LIMIT, failure) is not None) is rate_limited


def test_claude_usage_without_per_turn_model_usage_takes_the_turns_usage() -> None:
    # Older versions, and one-shot runs: no model_usage_since_last_result.
    events: list[dict[str, Any]] = [
        {"type": "assistant", "message": {"id": "msg_1", "model": "m", "content": []}},
        {"type": "assistant", "message": {"id": "msg_1", "model": "m", "content": []}},
        {"type": "assistant", "message": {"id": "msg_2", "model": "m", "content": []}},
        {
            "type": "result",
            "total_cost_usd": 0.25,
            "usage": {
                "input_tokens": 10,
                "cache_creation_input_tokens": 5,
                "cache_read_input_tokens": 100,
                "output_tokens": 3,
            },
        },
    ]
    assert claude_usage("", events) == aimcluster.Usage(
        input_tokens=115, output_tokens=3, cached_tokens=100, cost_usd=0.25, requests=2
    )
    assert claude_usage("", [{"type": "system", "subtype": "init"}]) is None
