"""Auto-responders: questions a tool asks on its own are answered, and never end a reply."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import structlog

import aimcluster
from aimcluster import tools
from aimcluster._base.errors import AutoAnswerLimitError

pytestmark = pytest.mark.anyio

AIDER_CONFIRM = tools.AIDER_CONFIRM

TOOL = r"""
import sys
if "--trust-gate" in sys.argv:
    sys.stdout.write("Do you trust the files in this folder? (y/n) ")
    sys.stdout.flush()
    print("trust:", sys.stdin.readline().strip(), flush=True)
sys.stdout.write("> ")
sys.stdout.flush()
for line in sys.stdin:
    prompt = line.strip()
    asked = 0
    while True:
        sys.stdout.write(f"Edit {prompt}.py? (Y)es/(N)o [Yes]: ")
        sys.stdout.flush()
        answer = sys.stdin.readline().strip()
        asked += 1
        if prompt != "loop" or asked > 100:
            break
    print(f"answer was {answer!r}", flush=True)
    sys.stdout.write("> ")
    sys.stdout.flush()
"""


def spec(tmp_path: Path, *args: str, max_auto_answers: int = 10) -> aimcluster.ToolSpec:
    script = tmp_path / "asker.py"
    script.write_text(TOOL)
    return aimcluster.ToolSpec(
        name="asker",
        argv=[sys.executable, "-u", str(script), *args],
        ready=r"^> ",
        responders=[
            (AIDER_CONFIRM, "y"),
            (r"Do you trust the files in this folder\? \(y/n\) ", "y"),
        ],
        max_auto_answers=max_auto_answers,
    )


async def test_a_question_mid_reply_is_answered_and_the_reply_goes_on(tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        async with aimcluster.launch_cluster(spec(tmp_path), count=1) as cluster:
            (pid,) = cluster.pids
            reply = await cluster.send("main", timeout=10)
    assert reply.text == "Edit main.py? (Y)es/(N)o [Yes]: answer was 'y'"
    answered = [e for e in logs if e["event"] == "prompt_answered"]
    assert len(answered) == 1
    assert answered[0]["pattern"] == AIDER_CONFIRM
    assert (answered[0]["instance"], answered[0]["pid"]) == (0, pid)


async def test_a_start_up_gate_is_answered(tmp_path: Path) -> None:
    async with aimcluster.launch_cluster(spec(tmp_path, "--trust-gate"), count=1) as cluster:
        reply = await cluster.send("a", timeout=10)
    assert reply.text.endswith("answer was 'y'")


async def test_a_question_loop_is_cut_off_and_the_instance_restarted(tmp_path: Path) -> None:
    async with aimcluster.launch_cluster(spec(tmp_path, max_auto_answers=3), count=1) as cluster:
        (pid,) = cluster.pids
        with pytest.raises(AutoAnswerLimitError) as caught:
            await cluster.send("loop", timeout=10)
        assert "more than 3 questions" in str(caught.value)
        assert caught.value.partial_output.count("(Y)es/(N)o") == 4
        reply = await cluster.send("b", timeout=10)
        assert cluster.pids != [pid]
    assert reply.text.endswith("answer was 'y'")


def test_responders_are_validated() -> None:
    with pytest.raises(ValueError, match="not a valid regex"):
        aimcluster.ToolSpec(name="x", argv=["cat"], ready="> ", responders=[("(", "y")])
    with pytest.raises(ValueError, match=r"\(regex, answer\) pairs"):
        aimcluster.ToolSpec(name="x", argv=["cat"], ready="> ", responders=[("a", "b", "c")])
