"""The ``gemini`` profile driving the real Gemini CLI against a stand-in Gemini API server.

The CLI (``.ci/install-clis``, found by tests/clis.py) talks only to :class:`FakeGemini` on
loopback, through the profile's ``api_base=``. Each test is a fleet run on asyncio and trio:
several prompts, a 429 the CLI reports and the cluster pauses for, a stream that stalls after
its first chunk, a failed turn, and the token counts the CLI reports.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import attrs
import pytest

import aimcluster
from aimcluster import tools
from aimcluster._base.errors import ToolError
from aimcluster._slot.instance import InstanceStalledError

from .clis import real_cli
from .vendor_gemini import CACHED_TOKENS, FakeGemini, usage_for

pytestmark = pytest.mark.anyio

KEY = "stand-in-key"
STANDIN = Path(__file__).parent / "standins" / "gemini"

#: What Gemini CLI 0.61 printed for a 429 that its retries did not clear (the ``error.message``
#: of its last ``result`` event, with the stand-in's quota message; exit 173).
REAL_RATE_LIMIT_MESSAGE = (
    "[API Error: You exceeded your current quota, please check your plan and billing details. "
    "For more information on this error, head to: "
    "https://ai.google.dev/gemini-api/docs/rate-limits.\nSuggested retry after 1s.]\n"
    "Please wait and try again later. To increase your limits, request a quota increase "
    "through AI Studio, or switch to another /auth method"
)

#: A per-minute quota message of the Gemini API that says neither "429" nor "quota exceeded"
#: the way the profile's old pattern looked for.
PER_MINUTE_QUOTA = (
    "Quota exceeded for quota metric 'Generate Content API requests per minute' and limit "
    "'GenerateContent request limit per minute for a region' of service "
    "'generativelanguage.googleapis.com' for consumer 'project_number:1'."
)


@pytest.fixture(scope="module")
def gemini_cli() -> str:
    return real_cli("gemini")


@pytest.fixture
def server() -> Any:
    with FakeGemini() as fake:
        yield fake


def profile(cli: str, server: FakeGemini, tmp_path: Path, **options: Any) -> aimcluster.ToolSpec:
    spec = tools.gemini(
        executable=cli, api_base=server.base_url, api_key=KEY, cwd=tmp_path, **options
    )
    # The CLI starts in one to three seconds on a quiet machine; give a busy one room.
    return attrs.evolve(spec, startup_timeout=60)


# -- the profile's set-up, without the CLI ---------------------------------------------------


def test_the_profile_points_the_cli_at_api_base_with_a_home_of_its_own() -> None:
    spec = tools.gemini(api_base="http://127.0.0.1:8080/", api_key="k")
    assert spec.argv == ("gemini", "-o", "stream-json", "-m", "flash", "--prompt={prompt}")
    assert dict(spec.env or {}) == {
        "HOME": "{state}/home",
        "TMPDIR": "{state}/home",
        "GEMINI_CLI_TRUST_WORKSPACE": "true",
        "GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:8080",
        "GEMINI_API_KEY": "k",
    }
    (path,) = spec.files or {}
    assert path == "{state}/home/.gemini/settings.json"
    assert json.loads((spec.files or {})[path]) == {
        "security": {"auth": {"selectedType": "gemini-api-key"}},
        "general": {
            "maxAttempts": 1,
            "enableAutoUpdate": False,
            "enableAutoUpdateNotification": False,
        },
        "privacy": {"usageStatisticsEnabled": False},
        "telemetry": {"enabled": False},
    }


def test_model_none_leaves_the_cli_in_auto_mode() -> None:
    assert "-m" not in tools.gemini(model=None).argv


def test_max_retries_sets_the_clis_attempts() -> None:
    settings = json.loads(next(iter((tools.gemini(max_retries=3).files or {}).values())))
    assert settings["general"]["maxAttempts"] == 4


@pytest.mark.parametrize("bad", [-1, 10])
def test_max_retries_outside_what_the_cli_takes_is_refused(bad: int) -> None:
    with pytest.raises(ValueError, match=rf"max_retries must be between 0 and 9, got {bad}"):
        tools.gemini(max_retries=bad)


def test_env_overrides_the_profiles_variables() -> None:
    spec = tools.gemini(env={"HOME": "/elsewhere"})
    assert (spec.env or {})["HOME"] == "/elsewhere"


@pytest.mark.parametrize(
    "message",
    [
        REAL_RATE_LIMIT_MESSAGE,
        f"[API Error: {PER_MINUTE_QUOTA}]\nPlease wait and try again later. To increase your "
        "limits, request a quota increase through Vertex, or switch to another /auth method",
        "[API Error: Resource has been exhausted (e.g. check quota).]",
    ],
)
def test_the_rate_limit_pattern_matches_what_the_cli_prints(message: str) -> None:
    assert re.search(tools.gemini().rate_limit or "", message)


def test_the_rate_limit_pattern_ignores_other_failures() -> None:
    failure = '[API Error: {"error":{"code":500,"message":"Internal error encountered."}}]'
    assert not re.search(tools.gemini().rate_limit or "", failure)


# -- the real CLI ------------------------------------------------------------------------------


@pytest.mark.integration
async def test_real_gemini_answers_a_fleets_prompts_with_one_request_each(
    gemini_cli: str, server: FakeGemini, tmp_path: Path
) -> None:
    prompts = ["one", "two words", "-starts with a dash", "four"]
    async with aimcluster.launch_cluster(profile(gemini_cli, server, tmp_path), count=2) as c:
        replies = await c.map(prompts, timeout=60)
        metrics = c.metrics()
    assert [r.text for r in replies] == [f"echo: {p}" for p in prompts]
    assert metrics.usage.output_tokens == sum(usage_for(r.text)[1] for r in replies)
    assert metrics.usage.input_tokens == sum(usage_for(r.text)[0] for r in replies)
    # -m flash: no router request, one streamGenerateContent a prompt, to the alias's model.
    requests = server.requests
    assert len(requests) == len(prompts)
    assert {r.method_name for r in requests} == {"streamGenerateContent"}
    assert {r.query for r in requests} == {"alt=sse"}
    assert all("flash" in r.model for r in requests)
    assert {r.headers.get("x-goog-api-key") for r in requests} == {KEY}
    assert sorted(r.user_text for r in requests) == sorted(prompts)


@pytest.mark.integration
async def test_real_gemini_rate_limit_pauses_the_cluster_and_resends(
    gemini_cli: str, server: FakeGemini, tmp_path: Path
) -> None:
    # The server's message says neither "429" nor "exceeded your current quota": only the
    # CLI's own suffix tells a rate limit from any other failure.
    server.rate_limit(1, message=PER_MINUTE_QUOTA)
    async with aimcluster.launch_cluster(profile(gemini_cli, server, tmp_path), count=1) as c:
        reply = await c.send("hello", timeout=60)
        metrics = c.metrics()
    assert reply.text == "echo: hello"
    assert metrics.rate_limited == 1
    # max_retries=0: the CLI did not retry on its own; the cluster sent the prompt again.
    assert [r.status for r in server.generations] == [429, 200]


@pytest.mark.integration
async def test_real_gemini_rate_limit_that_never_clears_is_a_tool_error_with_exit_173(
    gemini_cli: str, server: FakeGemini, tmp_path: Path
) -> None:
    server.rate_limit(None)
    spec = attrs.evolve(
        profile(gemini_cli, server, tmp_path), rate_limit_retries=1, rate_limit_backoff=0.1
    )
    async with aimcluster.launch_cluster(spec, count=1) as c:
        with pytest.raises(ToolError) as caught:
            await c.send("hello", timeout=60)
        metrics = c.metrics()
    assert caught.value.exit_code == 173
    assert str(caught.value).endswith(REAL_RATE_LIMIT_MESSAGE)
    assert metrics.rate_limited == 1
    assert [r.status for r in server.generations] == [429, 429]


@pytest.mark.integration
async def test_real_gemini_stalled_stream_is_killed_and_the_next_prompt_answered(
    gemini_cli: str, server: FakeGemini, tmp_path: Path
) -> None:
    server.stall(1)
    spec = attrs.evolve(profile(gemini_cli, server, tmp_path), stall_timeout=10)
    async with aimcluster.launch_cluster(spec, count=1) as c:
        with pytest.raises(InstanceStalledError) as caught:
            await c.send("a prompt long enough to take two chunks", timeout=60)
        after = await c.send("again", timeout=60)
    assert server.stalled.is_set()
    # The CLI had passed on the stream's first chunk before it stalled.
    assert '"content":"echo: a prompt long enou"' in caught.value.partial_output
    assert after.text == "echo: again"
    assert len(server.generations) == 2


@pytest.mark.integration
async def test_real_gemini_server_error_is_a_tool_error(
    gemini_cli: str, server: FakeGemini, tmp_path: Path
) -> None:
    server.fail(1, status=500)
    reports = _error_reports()
    async with aimcluster.launch_cluster(profile(gemini_cli, server, tmp_path), count=1) as c:
        with pytest.raises(ToolError) as caught:
            await c.send("hello", timeout=60)
        # The CLI writes a report of each failed request to $TMPDIR: the instance's own.
        assert _error_reports() == reports
        after = await c.send("again", timeout=60)
        metrics = c.metrics()
    # handleError exits with the error's status, 500, which the OS truncates to 8 bits.
    assert caught.value.exit_code == 500 & 0xFF
    assert "Internal error encountered." in str(caught.value)
    assert caught.value.event is not None
    assert caught.value.event["status"] == "error"
    assert after.text == "echo: again"
    assert metrics.rate_limited == 0


@pytest.mark.integration
async def test_real_gemini_instances_have_homes_of_their_own_and_the_users_is_untouched(
    gemini_cli: str, server: FakeGemini, tmp_path: Path
) -> None:
    users = Path.home() / ".gemini"
    before = _mtimes(users)
    async with aimcluster.launch_cluster(profile(gemini_cli, server, tmp_path), count=2) as c:
        replies = [await c.send(p, timeout=60, instance=i) for i, p in enumerate("ab")]
        homes = {_home_in(r) for r in server.requests}
        assert _files_in(homes, ".gemini/settings.json") == [True, True]
    assert [r.text for r in replies] == ["echo: a", "echo: b"]
    assert [r.instance for r in replies] == [0, 1]
    assert len(homes) == 2
    assert _files_in(homes, "") == [False, False]  # removed with the cluster
    assert _mtimes(users) == before


def _error_reports() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "gemini-client-error-*.json")))


def _files_in(homes: set[str], path: str) -> list[bool]:
    return [Path(home, path).exists() for home in sorted(homes)]


def _mtimes(directory: Path) -> list[int] | None:
    if not directory.exists():
        return None
    return sorted(p.stat().st_mtime_ns for p in directory.rglob("*"))


def _home_in(request: Any) -> str:
    # The CLI tells the model its project temporary directory, ~/.gemini/tmp/<project>.
    context = request.json["contents"][0]["parts"][0]["text"]
    match = re.search(r"temporary directory is: (\S+)/\.gemini/tmp/", context)
    assert match is not None, context
    return match[1]


@pytest.mark.integration
async def test_real_gemini_reports_its_token_counts_on_the_reply(
    gemini_cli: str, server: FakeGemini, tmp_path: Path
) -> None:
    async with aimcluster.launch_cluster(profile(gemini_cli, server, tmp_path), count=1) as c:
        reply = await c.send("count me", timeout=60)
        metrics = c.metrics()
    stats = reply.events[-1]["stats"]
    prompt_tokens, output_tokens = usage_for("echo: count me")
    assert (stats["input_tokens"], stats["output_tokens"], stats["cached"]) == (
        prompt_tokens,
        output_tokens,
        CACHED_TOKENS,
    )
    assert reply.usage == aimcluster.Usage(
        input_tokens=prompt_tokens, output_tokens=output_tokens, cached_tokens=CACHED_TOKENS
    )
    assert metrics.usage == reply.usage


def test_a_result_without_stats_has_no_usage() -> None:
    usage = tools.gemini().usage
    assert usage is not None
    assert usage("", [{"type": "result", "status": "success"}]) is None


# -- the stand-in in tests/standins keeps to what the real CLI prints --------------------------


def _shape(event: dict[str, Any]) -> tuple[str, frozenset[str], frozenset[str]]:
    stats = event.get("stats") or {}
    per_model = frozenset(key for tokens in stats.get("models", {}).values() for key in tokens)
    return event["type"], frozenset(event), frozenset(stats) | per_model


@pytest.mark.integration
async def test_the_stand_in_prints_the_events_the_real_cli_prints(
    gemini_cli: str, server: FakeGemini, tmp_path: Path
) -> None:
    standin = tools.gemini(executable=STANDIN, cwd=tmp_path)
    async with (
        aimcluster.launch_cluster(profile(gemini_cli, server, tmp_path), count=1) as real,
        aimcluster.launch_cluster(standin, count=1) as fake,
    ):
        real_reply = await real.send("hi", timeout=60)
        fake_reply = await fake.send("hi", timeout=60)
    assert [_shape(e) for e in fake_reply.events] == [_shape(e) for e in real_reply.events]
    assert fake_reply.events[0]["model"] == real_reply.events[0]["model"] == "flash"
    assert fake_reply.text == real_reply.text == "echo: hi"


@pytest.mark.integration
async def test_the_stand_ins_rate_limit_is_the_real_clis(
    gemini_cli: str, server: FakeGemini, tmp_path: Path
) -> None:
    server.rate_limit(None)
    failures: list[ToolError] = []
    for spec in (
        profile(gemini_cli, server, tmp_path),
        tools.gemini(executable=STANDIN, cwd=tmp_path, env={"STANDIN_RATE_LIMIT": "9"}),
    ):
        spec = attrs.evolve(spec, rate_limit_retries=0)
        async with aimcluster.launch_cluster(spec, count=1) as c:
            with pytest.raises(ToolError) as caught:
                await c.send("hi", timeout=60)
        failures.append(caught.value)
    real, fake = failures
    assert fake.exit_code == real.exit_code == 173
    assert fake.event is not None
    assert real.event is not None
    assert (
        fake.event["error"]
        == real.event["error"]
        == {
            "type": "unknown",
            "message": REAL_RATE_LIMIT_MESSAGE,
        }
    )
    assert _shape(fake.event) == _shape(real.event)
