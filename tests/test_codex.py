"""The real Codex CLI (``@openai/codex`` 0.171.0) through the ``codex`` profile, on both backends.

Every test points the CLI at :class:`tests.vendor_codex.FakeResponses` on 127.0.0.1 through the
profile's ``api_base=`` and ``api_key=``: normal prompts on several instances, a 429 that the CLI
surfaces and the cluster pauses for, codex's own retries, a stall mid-stream, a failed turn and
the usage on the Reply. The CLI is found by ``tests/clis.py`` (skipped without it, failed in CI).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import aimcluster
from aimcluster import InstanceStalledError, ReplyTimeoutError, ToolError, tools
from aimcluster._tools.codex import _codex_retried

from .clis import real_cli
from .vendor_codex import Failed, FakeResponses, Stall, Status

pytestmark = pytest.mark.anyio

STANDIN = Path(__file__).parent / "standins" / "codex"

KEY = "sk-test-codex"


@pytest.fixture(scope="module")
def codex_cli() -> str:
    return real_cli("codex")


# Every test but the last drives the real CLI.
integration = pytest.mark.integration


@pytest.fixture
def server() -> Iterator[FakeResponses]:
    with FakeResponses() as fake:
        yield fake


def spec(cli: str, server: FakeResponses, cwd: Path, **options: Any) -> aimcluster.ToolSpec:
    tuning = {k: options.pop(k) for k in ("stall_timeout", "rate_limit_backoff") if k in options}
    profile = tools.codex(executable=cli, api_base=server.base_url, api_key=KEY, cwd=cwd, **options)
    return attrs.evolve(profile, **tuning)


@integration
async def test_real_codex_answers_prompts_on_several_instances(
    codex_cli: str, server: FakeResponses, tmp_path: Path
) -> None:
    prompts = ["one", "two words", "-starts with a dash", "four"]
    async with aimcluster.launch_cluster(spec(codex_cli, server, tmp_path), count=2) as cluster:
        replies = await cluster.map(prompts, timeout=30)
        metrics = cluster.metrics()
    assert [r.text for r in replies] == [f"echo: {p}" for p in prompts]
    # What the stand-in reported for each response, as codex's turn.completed passed it on.
    assert [r.usage for r in replies] == [
        aimcluster.Usage(input_tokens=1200, output_tokens=34, cached_tokens=1000)
    ] * 4
    assert metrics.usage == aimcluster.Usage(
        input_tokens=4800, output_tokens=136, cached_tokens=4000
    )
    assert metrics.tool_retries == 0
    assert sorted(server.prompts) == sorted(prompts)
    # It calls nothing but the Responses API, with the profile's key and its own provider.
    assert {(r.method, r.path) for r in server.requests} == {("POST", "/v1/responses")}
    assert {r.headers["authorization"] for r in server.requests} == {f"Bearer {KEY}"}
    assert all(r.json["stream"] is True for r in server.requests)
    for reply in replies:
        assert [e["type"] for e in reply.events] == [
            "thread.started", "turn.started", "item.completed", "turn.completed",
        ]  # fmt: skip


@integration
async def test_real_codex_with_a_model_it_has_no_metadata_for_still_answers(
    codex_cli: str, server: FakeResponses, tmp_path: Path
) -> None:
    # codex 0.171 reports an `item.completed` of type "error" before such a turn: not a failure.
    async with aimcluster.launch_cluster(
        spec(codex_cli, server, tmp_path, model="fake-model"), count=1
    ) as cluster:
        reply = await cluster.send("hi", timeout=30)
    assert reply.text == "echo: hi"
    warning = reply.events[1]
    assert warning["type"] == "item.completed"
    assert warning["item"]["type"] == "error"
    assert "Model metadata for `fake-model` not found" in warning["item"]["message"]
    assert server.requests[0].json["model"] == "fake-model"


@integration
async def test_each_real_codex_instance_has_its_own_codex_home(
    codex_cli: str, server: FakeResponses, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cluster makes its {state} directories with tempfile: here, under tmp_path.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    home = tmp_path / "user"  # the user's HOME, with a ~/.codex of their own
    (home / ".codex").mkdir(parents=True)
    (home / ".codex" / "config.toml").write_text('model_provider = "nowhere"\n')
    profile = spec(codex_cli, server, tmp_path, env={"HOME": str(home)})
    async with aimcluster.launch_cluster(profile, count=2) as cluster:
        await cluster.map(["a", "b", "c", "d"], timeout=30)
        homes = codex_homes(tmp_path)
    assert [(name, config) for name, config, _ in homes] == [
        (str(n), tools.codex_config(api_base=server.base_url)) for n in (0, 1)
    ]
    assert all(sessions for _, _, sessions in homes)  # where codex keeps its transcripts
    assert codex_homes(tmp_path) == []  # removed with the cluster
    assert listing(home / ".codex") == ["config.toml"]


def codex_homes(root: Path) -> list[tuple[str, str, bool]]:
    """(instance, config.toml, has sessions/) of each instance's CODEX_HOME under *root*."""
    return [
        (path.parent.name, (path / "config.toml").read_text(), (path / "sessions").is_dir())
        for path in sorted(root.glob("aimcluster-codex-*/*/codex"))
    ]


def listing(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


@integration
async def test_a_real_codex_429_pauses_the_cluster_and_the_prompt_is_sent_again(
    codex_cli: str, server: FakeResponses, tmp_path: Path
) -> None:
    # No Retry-After: codex gives up at once with "exceeded retry limit, last status: 429 Too
    # Many Requests" and exit 1; the profile sees a rate limit, not a failure.
    server.queue(Status(429))
    async with aimcluster.launch_cluster(
        spec(codex_cli, server, tmp_path, rate_limit_backoff=0.2), count=1
    ) as cluster:
        reply = await cluster.send("hi", timeout=30)
        metrics = cluster.metrics()
    assert reply.text == "echo: hi"
    assert [r.status for r in server.requests] == [429, 200]
    assert metrics.rate_limited == 1
    assert metrics.failed == 0


@integration
async def test_a_429_that_never_clears_is_a_tool_error_after_the_cluster_retries(
    codex_cli: str, server: FakeResponses, tmp_path: Path
) -> None:
    server.always = Status(429)
    profile = attrs.evolve(
        spec(codex_cli, server, tmp_path, rate_limit_backoff=0.05), rate_limit_retries=2
    )
    async with aimcluster.launch_cluster(profile, count=1) as cluster:
        with pytest.raises(ToolError) as caught:
            await cluster.send("hi", timeout=30)
    assert "exceeded retry limit, last status: 429 Too Many Requests" in str(caught.value)
    assert caught.value.exit_code == 1
    assert [r.status for r in server.requests] == [429, 429, 429]
    assert caught.value.events[-1]["type"] == "turn.failed"


@integration
async def test_real_codex_retries_a_429_with_retry_after_itself_up_to_max_retries(
    codex_cli: str, server: FakeResponses, tmp_path: Path
) -> None:
    server.queue(Status(429, retry_after="0"), Status(429, retry_after="0"))
    async with aimcluster.launch_cluster(
        spec(codex_cli, server, tmp_path, max_retries=2), count=1
    ) as cluster:
        reply = await cluster.send("hi", timeout=30)
        metrics = cluster.metrics()
    assert reply.text == "echo: hi"
    assert [r.status for r in server.requests] == [429, 429, 200]
    assert metrics.rate_limited == 0  # codex's own layer handled it
    assert metrics.tool_retries == 2  # ... and the cluster's metrics show it
    retries = [e["message"] for e in reply.events if e["type"] == "error"]
    assert [m.split(" (")[0] for m in retries] == ["Reconnecting... 1/2", "Reconnecting... 2/2"]
    assert all(_codex_retried(e) for e in reply.events if e["type"] == "error")


@integration
async def test_by_default_real_codex_leaves_a_429_with_retry_after_to_the_cluster(
    codex_cli: str, server: FakeResponses, tmp_path: Path
) -> None:
    server.queue(Status(429, retry_after="0"))
    async with aimcluster.launch_cluster(
        spec(codex_cli, server, tmp_path, rate_limit_backoff=0.05), count=1
    ) as cluster:
        reply = await cluster.send("hi", timeout=30)
        metrics = cluster.metrics()
    assert reply.text == "echo: hi"
    assert [r.status for r in server.requests] == [429, 200]
    assert metrics.rate_limited == 1
    assert not any(e["type"] == "error" for e in reply.events)


@integration
async def test_a_real_codex_stalled_mid_stream_is_killed_by_the_stall_watchdog(
    codex_cli: str, server: FakeResponses, tmp_path: Path
) -> None:
    server.always = Stall()
    async with aimcluster.launch_cluster(
        spec(codex_cli, server, tmp_path, stall_timeout=3), count=1
    ) as cluster:
        with pytest.raises(InstanceStalledError) as caught:
            await cluster.send("hi", timeout=30)
    assert server.stalled.is_set()
    assert '"type":"turn.started"' in caught.value.partial_output
    # The autouse no_leaked_processes fixture checks that no codex process is left.


@integration
async def test_a_real_codex_stalled_mid_stream_times_out_at_the_reply_deadline(
    codex_cli: str, server: FakeResponses, tmp_path: Path
) -> None:
    server.always = Stall()
    async with aimcluster.launch_cluster(spec(codex_cli, server, tmp_path), count=1) as cluster:
        with pytest.raises(ReplyTimeoutError):
            await cluster.send("hi", timeout=3)
        server.always = None
        reply = await cluster.send("again", timeout=30)
    assert reply.text == "echo: again"


@integration
async def test_a_real_codex_failed_turn_is_a_tool_error(
    codex_cli: str, server: FakeResponses, tmp_path: Path
) -> None:
    server.queue(Failed("The model had an internal error."))
    async with aimcluster.launch_cluster(spec(codex_cli, server, tmp_path), count=1) as cluster:
        with pytest.raises(ToolError) as caught:
            await cluster.send("hi", timeout=30)
        after = await cluster.send("after", timeout=30)
        metrics = cluster.metrics()
    assert caught.value.exit_code == 1
    assert caught.value.event == {
        "type": "turn.failed",
        "error": {
            "message": "stream disconnected before completion: The model had an internal error."
        },
    }
    assert after.text == "echo: after"
    assert metrics.rate_limited == 0


async def test_the_stand_ins_reconnects_count_as_tool_retries_and_its_usage_is_read() -> None:
    # The same profile against tests/standins/codex (no real CLI needed): two retries of its
    # own, then an answer with the stand-in's token counts.
    profile = tools.codex(executable=STANDIN, env={"STANDIN_CODEX_RECONNECTS": "2"})
    async with aimcluster.launch_cluster(profile, count=1) as cluster:
        reply = await cluster.send("hello", timeout=30)
        metrics = cluster.metrics()
    assert reply.text == "echo: hello"
    assert reply.usage == aimcluster.Usage(input_tokens=1, output_tokens=2, cached_tokens=0)
    assert metrics.tool_retries == 2
    assert metrics.usage == reply.usage
