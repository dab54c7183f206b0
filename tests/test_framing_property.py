"""A property of every built-in framing, on real processes: whatever a tool replies (text that
looks like its ready prompt included, cut across writes at any point, with pauses between),
and whatever the prompts hold (line breaks included), each prompt gets its own reply or a
typed error, and the prompts after it still get theirs.

Each framing is driven by a tool whose replies Hypothesis chooses: the ``python`` profile
(numbered prompts), aider's fixed prompt with its settle time and ``{``...``}`` blocks, and a
JSONL tool. Every reply ends with a line naming its prompt, so that a reply given to the
wrong prompt cannot pass for the right one.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aimcluster
from aimcluster import tools
from aimcluster._slot.framer import clean_reply

BACKENDS = ["asyncio", "trio"]

# Text that frames and prompts are made of: their own prompts (ready regex matches), a
# forged numbered prompt with another random part, line breaks, and anything else.
FRAGMENTS = st.sampled_from(
    [
        "> ",
        "\n> ",
        ">>> ",
        "\n>>> ",
        "ask> ",
        "[aimcluster-00000000:1]>>> ",
        "{",
        "}",
        "aimcluster}",
        "\n",
        "\r\n",
        '"',
        "'",
        "\\",
    ]
)
TEXT = st.lists(
    st.one_of(FRAGMENTS, st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]))),
    max_size=6,
).map("".join)
#: One reply: the pieces the tool writes one at a time, each followed by a short pause or not.
CHUNKS = st.lists(st.tuples(TEXT, st.booleans()), min_size=1, max_size=4)
#: A conversation: each prompt's text (which may hold line breaks) and the reply it asks for.
TURNS = st.lists(st.tuples(TEXT, CHUNKS), min_size=1, max_size=4)

PAUSE = 0.003  # between pieces: short next to every framing's settle time

SETTINGS = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def expected_reply(index: int, chunks: Sequence[tuple[str, bool]]) -> str:
    return clean_reply("".join(text for text, _ in chunks) + f"\n#{index}\n")


async def converse(spec: aimcluster.ToolSpec, prompts: Sequence[str]) -> list[object]:
    """Send each prompt in turn to one instance; each outcome, reply text or error."""
    outcomes: list[object] = []
    restart = aimcluster.RestartPolicy(initial_delay=0.01, max_restarts=100)
    async with aimcluster.launch_cluster(spec, 1, restart=restart) as cluster:
        for prompt in prompts:
            with anyio.fail_after(30):
                try:
                    outcomes.append((await cluster.send(prompt)).text)
                except aimcluster.AimclusterError as exc:
                    outcomes.append(exc)
    return outcomes


def check(outcomes: Sequence[object], expected: Sequence[str]) -> None:
    for index, (outcome, reply) in enumerate(zip(outcomes, expected, strict=True)):
        if isinstance(outcome, str):
            assert outcome == reply, f"prompt {index} got another reply"
        else:
            assert isinstance(outcome, aimcluster.AimclusterError)


# -- python: numbered prompts -----------------------------------------------------------------


def python_code(index: int, prompt: str, chunks: Sequence[tuple[str, bool]]) -> str:
    """Code of several lines that writes *chunks* (each flushed, pausing after some), with
    the prompt's own text in it, line breaks and all."""
    lines = [
        "import sys, time",
        "def w(text):",
        "    sys.stdout.buffer.write(text.encode())",
        "    sys.stdout.flush()",
        f"prompt = {prompt!r}",
    ]
    for text, pause in chunks:
        lines.append(f"w({text!r})")
        if pause:
            lines.append(f"time.sleep({PAUSE})")
    lines.append(f"w('\\n#{index}\\n')")
    return "\n".join(lines)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(turns=TURNS)
def test_python_gives_every_prompt_its_own_reply(backend: str, turns: list[Any]) -> None:
    prompts = [python_code(i, prompt, chunks) for i, (prompt, chunks) in enumerate(turns)]
    outcomes = anyio.run(converse, tools.python(), prompts, backend=backend)
    check(outcomes, [expected_reply(i, chunks) for i, (_, chunks) in enumerate(turns)])


def json_prompts(turns: Sequence[tuple[str, Sequence[tuple[str, bool]]]]) -> list[str]:
    """Each turn as the JSON a tool below reads: its index, prompt text and chunks. indent=1
    spreads it over lines, so that each prompt has line breaks (aider: a block)."""
    return [
        json.dumps({"index": i, "prompt": p, "chunks": c, "pause": PAUSE}, indent=1)
        for i, (p, c) in enumerate(turns)
    ]


# -- aider's fixed prompt, its settle time and its blocks ------------------------------------


AIDER_LIKE = """\
import json, os, sys, time
def prompt():
    os.write(1, b"> ")
prompt()
stdin = sys.stdin
while True:
    line = stdin.readline()
    if not line:
        break
    line = line.rstrip("\\n")
    if line.startswith("{"):
        closing, lines = line[1:] + "}", []
        while True:
            prompt()
            more = stdin.readline().rstrip("\\n")
            if more == closing:
                break
            lines.append(more)
        line = "\\n".join(lines)
    turn = json.loads(line)
    for text, pause in turn["chunks"]:
        os.write(1, text.encode())
        if pause:
            time.sleep(turn["pause"])
    os.write(1, ("\\n#%d\\n" % turn["index"]).encode())
    prompt()
"""


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(turns=TURNS)
def test_aider_framing_gives_every_prompt_its_own_reply(
    backend: str, turns: list[Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("aider") / "aider"
    path.write_text(f"#!{sys.executable}\n{AIDER_LIKE}")
    path.chmod(0o755)
    # aider's own profile, settle time and all: only the settle is longer than the default,
    # so that a loaded machine cannot stretch a pause past it.
    spec = tools.aider(executable=path, settle=0.3)
    prompts = json_prompts(turns)
    outcomes = anyio.run(converse, spec, prompts, backend=backend)
    check(outcomes, [expected_reply(i, chunks) for i, (_, chunks) in enumerate(turns)])


# -- JSONL ------------------------------------------------------------------------------------


JSONL_TOOL = """\
import json, os, sys, time
for line in sys.stdin:
    turn = json.loads(json.loads(line)["prompt"])
    text = "".join(t for t, _ in turn["chunks"]) + "\\n#%d\\n" % turn["index"]
    data = (json.dumps({"type": "text", "text": "> "}) + "\\n"
            + json.dumps({"type": "result", "result": text}) + "\\n").encode()
    # The same events, cut where the chunks say.
    cuts = sorted({min(len(data), len(t.encode()) * 3) for t, _ in turn["chunks"]})
    start = 0
    for cut in [*cuts, len(data)]:
        os.write(1, data[start:cut])
        start = max(start, cut)
        time.sleep(turn["pause"])
"""


def jsonl_spec(path: Path) -> aimcluster.ToolSpec:
    return aimcluster.ToolSpec(
        name="jsonl",
        argv=[sys.executable, "-u", str(path)],
        framing=aimcluster.JsonlFraming(
            terminal=lambda event: event.get("type") == "result",
            answer=lambda events: str(events[-1]["result"]),
        ),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(turns=TURNS)
def test_jsonl_gives_every_prompt_its_own_reply(
    backend: str, turns: list[Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("jsonl") / "tool.py"
    path.write_text(JSONL_TOOL)
    prompts = json_prompts(turns)
    outcomes = anyio.run(converse, jsonl_spec(path), prompts, backend=backend)
    # A JSONL reply is the terminal event's text as it is, with no newline stripped.
    expected = ["".join(t for t, _ in chunks) + f"\n#{i}\n" for i, (_, chunks) in enumerate(turns)]
    check(outcomes, expected)
