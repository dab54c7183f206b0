"""The built-in profiles of aimcluster.tools, driven against the stand-ins in tests/standins.

Real processes, both backends: each profile's exact protocol, delays, a crash mid-turn, an error
the tool reports (ToolError), and no process outliving its prompt or its cluster (the autouse
``no_leaked_processes`` fixture).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import anyio
import pytest

import aimcluster
from aimcluster import tools
from aimcluster._base.errors import ToolError
from aimcluster._base.framing import JsonlFraming, OneshotFraming

from .conftest import wait_gone

pytestmark = pytest.mark.anyio

STANDINS = Path(__file__).parent / "standins"


def standin_env(**knobs: str) -> dict[str, str]:
    return {"STANDIN_" + name.upper(): value for name, value in knobs.items()}


def claude(**knobs: str) -> aimcluster.ToolSpec:
    return tools.claude(executable=STANDINS / "claude", env=standin_env(**knobs))


def codex(**knobs: str) -> aimcluster.ToolSpec:
    return tools.codex(
        executable=STANDINS / "codex", skip_git_repo_check=True, env=standin_env(**knobs)
    )


def gemini(**knobs: str) -> aimcluster.ToolSpec:
    return tools.gemini(executable=STANDINS / "gemini", env=standin_env(**knobs))


def jules(**knobs: str) -> aimcluster.ToolSpec:
    return tools.jules(executable=STANDINS / "jules", repo="octo/repo", env=standin_env(**knobs))


# -- the command lines ---------------------------------------------------------------------


def test_profiles_are_registered_by_name() -> None:
    assert {"aider", "aider_oneshot", "claude", "codex", "gemini", "jules"} <= set(tools.names())
    assert tools.get("claude").argv == (
        "claude",
        *("-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose"),
    )


def test_claude_command_line_with_model_and_key() -> None:
    spec = tools.claude(model="opus", api_key="sk-1", extra_args=["--max-turns", "3"])
    assert spec.argv[-4:] == ("--model", "opus", "--max-turns", "3")
    assert spec.env is not None
    assert spec.env["ANTHROPIC_API_KEY"] == "sk-1"
    assert isinstance(spec.framing, JsonlFraming)


def test_codex_puts_the_prompt_after_a_double_dash() -> None:
    spec = tools.codex(model="o4", sandbox="read-only", api_key="k", skip_git_repo_check=False)
    assert spec.argv == ("codex", "exec", "--json", "-s", "read-only", "-m", "o4", "--", "{prompt}")
    assert spec.env == {"CODEX_HOME": "{state}/codex", "CODEX_API_KEY": "k"}
    assert spec.for_prompt("-rf /").argv[-1] == "-rf /"


def test_gemini_and_jules_take_the_prompt_as_one_argument() -> None:
    assert tools.gemini(model="flash").argv == (
        "gemini", "-o", "stream-json", "-m", "flash", "--prompt={prompt}",
    )  # fmt: skip
    spec = tools.jules(repo="o/r")
    assert spec.argv == ("jules", "remote", "new", "--repo", "o/r", "--session={prompt}")
    assert spec.for_prompt("a b; rm -rf ~").argv[-1] == "--session=a b; rm -rf ~"


def test_aider_oneshot_adds_message() -> None:
    spec = tools.aider_oneshot(model="openai/fake")
    assert spec.argv[-2:] == ("--message", "{prompt}")
    assert spec.argv[1:3] == ("--model", "openai/fake")
    assert spec.oneshot


def test_a_oneshot_argv_needs_a_prompt_placeholder() -> None:
    with pytest.raises(ValueError, match=r"must contain \{prompt\}"):
        aimcluster.ToolSpec(name="x", argv=["echo"], framing=OneshotFraming())


def test_the_prompt_framing_needs_a_ready_regex() -> None:
    with pytest.raises(ValueError, match="needs a ready regex"):
        aimcluster.ToolSpec(name="x", argv=["cat"])


# -- claude: one long-lived process, JSON lines in and out ----------------------------------


async def test_claude_answers_each_prompt_with_its_result_in_one_process() -> None:
    async with aimcluster.launch_cluster(claude(), count=1) as cluster:
        (pid,) = cluster.pids
        first = await cluster.send("one", timeout=20)
        second = await cluster.send('two "quoted"\nlines', timeout=20)
        assert cluster.pids == [pid]
    assert first.text == "echo: one"
    assert second.text == 'echo: two "quoted"\nlines'
    assert [e["type"] for e in first.events] == ["system", "assistant", "result"]
    assert first.events[-1]["result"] == "echo: one"


async def test_claude_with_init_once_frames_later_turns_without_it() -> None:
    async with aimcluster.launch_cluster(claude(claude_init="once"), count=1) as cluster:
        await cluster.send("one", timeout=20)
        second = await cluster.send("two", timeout=20)
    assert [e["type"] for e in second.events] == ["assistant", "result"]


async def test_claude_replies_after_a_delay() -> None:
    async with aimcluster.launch_cluster(claude(delay="0.3"), count=2) as cluster:
        replies = await cluster.map(["a", "b"], timeout=20)
    assert sorted(r.text for r in replies) == ["echo: a", "echo: b"]
    assert all(r.elapsed >= 0.3 for r in replies)


async def test_claude_crash_mid_turn_is_instance_crashed() -> None:
    # init and assistant are written, then the process dies before its result.
    async with aimcluster.launch_cluster(claude(crash_after="2"), count=1) as cluster:
        with pytest.raises(aimcluster.InstanceCrashedError) as caught:
            await cluster.send("hi", timeout=20)
    assert caught.value.exit_code == 1
    assert '"type":"assistant"' in caught.value.partial_output


async def test_claude_is_error_result_is_a_tool_error_and_the_instance_carries_on() -> None:
    async with aimcluster.launch_cluster(claude(error="boom"), count=1) as cluster:
        (pid,) = cluster.pids
        with pytest.raises(ToolError) as caught:
            await cluster.send("hi", timeout=20)
        assert cluster.pids == [pid]
        metrics = cluster.metrics()
    assert "boom" in str(caught.value)
    assert caught.value.event is not None
    assert caught.value.event["subtype"] == "error_during_execution"
    assert caught.value.exit_code is None
    assert (metrics.failed, metrics.completed, metrics.restarts) == (1, 0, 0)


# -- codex and gemini: one process per prompt, JSON events out ------------------------------


async def test_codex_answers_with_the_last_agent_message_and_exits() -> None:
    async with aimcluster.launch_cluster(codex(), count=2) as cluster:
        replies = await cluster.map([f"task {i}" for i in range(4)], timeout=20)
        metrics = cluster.metrics()
        assert cluster.pids == [None, None]  # no process between prompts
    assert [r.text for r in replies] == [f"echo: task {i}" for i in range(4)]
    assert [e["type"] for e in replies[0].events] == [
        "thread.started",
        "turn.started",
        "item.completed",
        "item.completed",
        "turn.completed",
    ]
    assert (metrics.sent, metrics.completed, metrics.failed) == (4, 4, 0)


async def test_codex_turn_failed_is_a_tool_error_with_the_event() -> None:
    async with aimcluster.launch_cluster(codex(error="no sandbox"), count=1) as cluster:
        with pytest.raises(ToolError) as caught:
            await cluster.send("hi", timeout=20)
        # The slot is fine: the next prompt runs a new process.
        assert cluster.metrics().instances[0].state == "ready"
    assert caught.value.exit_code == 1
    assert caught.value.event == {"type": "turn.failed", "error": {"message": "no sandbox"}}
    assert str(caught.value).endswith(": no sandbox")
    assert '"type":"turn.failed"' in caught.value.output


async def test_codex_crash_before_its_terminal_event_is_instance_crashed() -> None:
    async with aimcluster.launch_cluster(codex(crash_after="2"), count=1) as cluster:
        with pytest.raises(aimcluster.InstanceCrashedError) as caught:
            await cluster.send("hi", timeout=20)
    assert caught.value.exit_code == 1
    assert "turn.started" in caught.value.partial_output


async def test_codex_crash_is_retried_with_retries() -> None:
    # Every process crashes, so each attempt fails the same way; retries are counted.
    async with aimcluster.launch_cluster(codex(crash_after="0"), count=1) as cluster:
        with pytest.raises(aimcluster.InstanceCrashedError):
            await cluster.send("hi", timeout=20, retries=2)
        assert cluster.metrics().sent == 3


async def test_gemini_joins_the_assistant_deltas() -> None:
    async with aimcluster.launch_cluster(gemini(delay="0.2"), count=1) as cluster:
        reply = await cluster.send("hello world", timeout=20)
    assert reply.text == "echo: hello world"
    assert reply.events[0]["type"] == "init"
    assert reply.events[-1]["status"] == "success"
    assert reply.elapsed >= 0.2


async def test_gemini_error_result_is_a_tool_error() -> None:
    async with aimcluster.launch_cluster(gemini(error="quota"), count=1) as cluster:
        with pytest.raises(ToolError) as caught:
            await cluster.send("hi", timeout=20)
    assert caught.value.exit_code == 1
    assert caught.value.event is not None
    assert caught.value.event["status"] == "error"


async def test_gemini_turn_limit_exit_without_result_is_instance_crashed() -> None:
    async with aimcluster.launch_cluster(gemini(error="max_turns"), count=1) as cluster:
        with pytest.raises(aimcluster.InstanceCrashedError) as caught:
            await cluster.send("hi", timeout=20)
    assert caught.value.exit_code == 53


# -- jules and plain one-shot output --------------------------------------------------------


async def test_jules_reply_is_its_output() -> None:
    async with aimcluster.launch_cluster(jules(), count=1) as cluster:
        reply = await cluster.send("fix the bug", timeout=20)
    lines = reply.text.splitlines()
    assert lines[0] == "Session is created."
    assert lines[1].startswith("ID: ")
    assert reply.events == ()


async def test_jules_non_zero_exit_is_a_tool_error_with_code_and_output() -> None:
    async with aimcluster.launch_cluster(jules(error="denied"), count=1) as cluster:
        with pytest.raises(ToolError) as caught:
            await cluster.send("fix", timeout=20)
    assert caught.value.exit_code == 1
    assert "Error: denied" in caught.value.output


# -- one-shot mechanics, with a small script ------------------------------------------------

SCRIPT = """
import os, sys, time
print("pid", os.getpid(), flush=True)
if sys.argv[1] == "hang":
    time.sleep(60)
print("stdin:", repr(sys.stdin.read()))
print("args:", sys.argv[1:])
"""


def script_spec(tmp_path: Path, env: Mapping[str, str] | None = None) -> aimcluster.ToolSpec:
    script = tmp_path / "one.py"
    script.write_text(SCRIPT)
    return aimcluster.ToolSpec(
        name="one",
        argv=[sys.executable, str(script), "{prompt}", "x{prompt}y"],
        framing=OneshotFraming(),
        env=env,
    )


async def test_oneshot_substitutes_the_prompt_as_one_argument_and_closes_stdin(
    tmp_path: Path,
) -> None:
    prompt = "it's $HOME; `ls` | cat"
    async with aimcluster.launch_cluster(script_spec(tmp_path), count=1) as cluster:
        reply = await cluster.send(prompt, timeout=20)
    lines = reply.text.splitlines()
    assert lines[1:] == ["stdin: ''", f"args: {[prompt, 'x' + prompt + 'y']!r}"]


async def test_oneshot_timeout_kills_the_process_and_the_slot_carries_on(tmp_path: Path) -> None:
    async with aimcluster.launch_cluster(script_spec(tmp_path), count=1) as cluster:
        with pytest.raises(aimcluster.ReplyTimeoutError) as caught:
            await cluster.send("hang", timeout=3)
        pid = int(caught.value.partial_output.split()[1])
        assert wait_gone([pid]) == []
        reply = await cluster.send("ok", timeout=20)
        assert cluster.metrics().instances[0].timeouts == 1
    assert reply.text.endswith("args: ['ok', 'xoky']")


async def test_shutdown_kills_a_running_oneshot_process(tmp_path: Path) -> None:
    async with aimcluster.launch_cluster(script_spec(tmp_path), count=1) as cluster:
        ticket = await cluster.submit("hang")
        # The one-shot process is spawned, then the instance turns busy: a state change.
        await cluster.wait_for(lambda m: m.instances[0].pid is not None, timeout=10)
        pids = cluster.pids
    with pytest.raises(aimcluster.ClusterClosedError):
        await ticket
    assert wait_gone(pids) == []


async def test_a_lease_on_a_oneshot_cluster_runs_a_process_per_send(tmp_path: Path) -> None:
    spec = script_spec(tmp_path)
    async with aimcluster.launch_cluster(spec, count=1) as cluster, cluster.lease() as session:
        first = await session.send("a", timeout=20)
        second = await session.send("b", timeout=20)
    assert first.text.split()[1] != second.text.split()[1]  # two pids


async def test_a_grandchild_holding_the_output_open_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "fork.py"
    script.write_text(
        "import subprocess, sys\n"
        "subprocess.Popen(['sleep', '60'])  # inherits stdout, outlives us\n"
        "print('done', sys.argv[1], flush=True)\n"
    )
    spec = aimcluster.ToolSpec(
        name="fork", argv=[sys.executable, str(script), "{prompt}"], framing=OneshotFraming()
    )
    async with aimcluster.launch_cluster(spec, count=1) as cluster:
        with anyio.fail_after(10):
            reply = await cluster.send("x")
    assert reply.text == "done x"
