"""The framings beyond the plain ready regex: settle, JSON lines, and their framers."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

import aimcluster
from aimcluster._base.errors import ToolError
from aimcluster._base.framing import Event, JsonlFraming, PromptFraming
from aimcluster._slot.framer import FrameOverflow, Framer, JsonlFramer

# -- Framer with settle ----------------------------------------------------------------------


def test_settle_makes_a_match_a_candidate_that_more_output_cancels() -> None:
    framer = Framer(r"> ", window=64, max_bytes=1 << 20, encoding="utf-8", settle=True)
    assert framer.feed(b"step one\n> ") is None
    assert framer.pending
    assert framer.feed(b"step two\n") is None
    assert not framer.pending
    assert framer.commit() is None
    assert framer.feed(b"> ") is None
    assert framer.commit() == "step one\n> step two\n"
    assert framer.buffered_bytes == 0
    assert not framer.pending


def test_without_settle_the_first_match_ends_the_reply() -> None:
    framer = Framer(r"> ", window=64, max_bytes=1 << 20, encoding="utf-8")
    assert framer.feed(b"step one\n> ") == "step one\n"
    assert not framer.pending


# -- JsonlFramer ---------------------------------------------------------------------------


def answer(events: Sequence[Event]) -> str:
    return str(events[-1].get("text", ""))


def failure(events: Sequence[Event]) -> str | None:
    return events[-1].get("error")


FRAMING = JsonlFraming(
    terminal=lambda event: event.get("type") == "done", answer=answer, failure=failure
)


def test_jsonl_frames_end_at_terminal_events_across_chunks() -> None:
    framer = JsonlFramer(FRAMING, max_bytes=1 << 20, encoding="utf-8")
    data = b'{"type":"delta"}\n{"type":"done","text":"h\xc3\xa9"}\n{"type":"done","text":"2"}\n'
    frames = [frame for i in range(len(data)) for frame in framer.feed(data[i : i + 1])]
    assert [f.text for f in frames] == ["hé", "2"]
    assert frames[0].events == ({"type": "delta"}, {"type": "done", "text": "hé"})
    assert frames[0].failure is None


def test_jsonl_keeps_junk_lines_out_of_the_events_and_reports_them() -> None:
    junk: list[str] = []
    framer = JsonlFramer(FRAMING, max_bytes=1 << 20, encoding="utf-8", on_junk=junk.append)
    (frame,) = framer.feed(b'Warning: slow\n[1, 2]\n\n{"type":"done","error":"bad"}\n')
    assert junk == ["Warning: slow", "[1, 2]"]
    assert frame.events == ({"type": "done", "error": "bad"},)
    assert frame.failure == "bad"


def test_jsonl_finish_frames_a_last_line_without_newline() -> None:
    framer = JsonlFramer(FRAMING, max_bytes=1 << 20, encoding="utf-8")
    assert framer.feed(b'{"type":"done","text":"x"}') == []
    assert framer.partial() == '{"type":"done","text":"x"}'
    (frame,) = framer.finish()
    assert frame.text == "x"


def test_jsonl_start_up_frame_ends_at_the_ready_event() -> None:
    framing = JsonlFraming(
        terminal=lambda e: e.get("type") == "done",
        answer=answer,
        ready=lambda e: e.get("type") == "init",
    )
    framer = JsonlFramer(framing, max_bytes=1 << 20, encoding="utf-8")
    (startup,) = framer.feed(b'banner\n{"type":"done"}\n{"type":"init"}\n')
    assert startup.events == ({"type": "done"}, {"type": "init"})
    (reply,) = framer.feed(b'{"type":"done","text":"ok"}\n')
    assert reply.text == "ok"


def test_jsonl_overflow() -> None:
    framer = JsonlFramer(FRAMING, max_bytes=10, encoding="utf-8")
    with pytest.raises(FrameOverflow):
        framer.feed(b'{"type":"delta","x":"0123456789"}\n')
    assert framer.feed(b'{"type":"done"}\n') == []


# -- instances ------------------------------------------------------------------------------

JSONL_TOOL = r"""
import json, sys
print("banner: not json", flush=True)
print(json.dumps({"type": "init"}), flush=True)
for line in sys.stdin:
    prompt = json.loads(line)["prompt"]
    print(json.dumps({"type": "delta", "text": prompt}), flush=True)
    print("a stray warning", flush=True)
    if prompt == "fail":
        print(json.dumps({"type": "done", "error": "it failed"}), flush=True)
    else:
        print(json.dumps({"type": "done", "text": prompt.upper()}), flush=True)
"""


@pytest.mark.anyio
async def test_jsonl_instance_waits_for_init_survives_junk_and_types_failures(
    tmp_path: Path,
) -> None:
    script = tmp_path / "tool.py"
    script.write_text(JSONL_TOOL)
    framing = JsonlFraming(
        terminal=lambda e: e.get("type") == "done",
        answer=answer,
        failure=failure,
        ready=lambda e: e.get("type") == "init",
    )
    spec = aimcluster.ToolSpec(name="j", argv=[sys.executable, "-u", str(script)], framing=framing)
    async with aimcluster.launch_cluster(spec, count=1) as cluster:
        reply = await cluster.send("hi", timeout=10)
        with pytest.raises(ToolError) as caught:
            await cluster.send("fail", timeout=10)
        again = await cluster.send("still alive", timeout=10)
    assert reply.text == "HI"
    assert reply.events == ({"type": "delta", "text": "hi"}, {"type": "done", "text": "HI"})
    assert caught.value.event == {"type": "done", "error": "it failed"}
    assert again.text == "STILL ALIVE"


SETTLE_TOOL = r"""
import sys, time
sys.stdout.write("> ")
sys.stdout.flush()
for line in sys.stdin:
    # The reply quotes the prompt text, pauses (a model thinking), then goes on.
    sys.stdout.write("part one\n> ")
    sys.stdout.flush()
    time.sleep(0.2)
    sys.stdout.write("part two\n> ")
    sys.stdout.flush()
"""


@pytest.mark.anyio
@pytest.mark.parametrize(("settle", "text"), [(None, "part one"), (1.0, "part one\n> part two")])
async def test_settle_waits_out_a_prompt_inside_the_reply(
    tmp_path: Path, settle: float | None, text: str
) -> None:
    script = tmp_path / "tool.py"
    script.write_text(SETTLE_TOOL)
    spec = aimcluster.ToolSpec(
        name="s",
        argv=[sys.executable, "-u", str(script)],
        ready="> ",
        framing=PromptFraming(settle=settle),
    )
    async with aimcluster.launch_cluster(spec, count=1) as cluster:
        reply = await cluster.send("go", timeout=10)
    assert reply.text == text
    if settle is not None:
        assert reply.elapsed >= settle


def test_settle_must_be_positive() -> None:
    with pytest.raises(ValueError, match="settle must be > 0"):
        PromptFraming(settle=0)
