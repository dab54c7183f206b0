"""Every reply belongs to its prompt: prompts of several lines, ready prompts inside replies,
a terminal's echo, and output that stops lining up with the prompts (issue 10, defects 1-3).
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

import aimcluster
from aimcluster import tools
from aimcluster._tools.repl import _NONCE

pytestmark = pytest.mark.anyio


def script_tool(tmp_path: Path, name: str, source: str, **fields: object) -> aimcluster.ToolSpec:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    fields.setdefault("ready", "> ")
    return aimcluster.ToolSpec(name=name, argv=[sys.executable, "-u", str(path)], **fields)  # type: ignore[arg-type]


# A tool that reads one line per prompt and says how many it has read.
COUNTER = """\
import sys
count = 0
sys.stdout.write("> ")
for line in sys.stdin:
    count += 1
    sys.stdout.write(f"got {count}: {line.rstrip()}\\n> ")
"""


# -- a prompt of several lines is one input ------------------------------------------------


async def test_a_prompt_of_several_lines_reaches_the_mock_as_one_input(cluster_factory) -> None:
    # Before: the tool read two inputs, the first line's reply came back, and every later
    # send got the reply of the prompt before it.
    cluster = await cluster_factory(tools.mock(delay=0.2))
    reply = await cluster.send("first line\nsecond line")
    assert reply.text == "echo: first line\nsecond line"
    for word in ("one", "two", "three"):
        assert (await cluster.send(word)).text == f"echo: {word}"


async def test_map_keeps_every_reply_with_its_prompt_of_several_lines(cluster_factory) -> None:
    cluster = await cluster_factory(tools.mock(delay=0.05), count=2)
    prompts = ["a", "b\nc", "d\n\ne", "{x", "{", "aimcluster}\nf", "g"]
    replies = await cluster.map(prompts)
    assert [r.text for r in replies] == [f"echo: {p}" for p in prompts]


async def test_a_tool_that_reads_one_line_per_prompt_refuses_a_line_break(
    cluster_factory, tmp_path
) -> None:
    cluster = await cluster_factory(script_tool(tmp_path, "counter", COUNTER))
    with pytest.raises(ValueError, match=r"one line per prompt.*line break at position 5"):
        await cluster.send("first\nsecond")
    with pytest.raises(ValueError, match="line break at position 0"):
        await cluster.submit("\r")
    with pytest.raises(ValueError, match="line break"):
        await cluster.map(["fine", "not\nfine"])
    async with cluster.lease() as session:
        with pytest.raises(ValueError, match="line break"):
            await session.send("a\nb")
        # Nothing of the refused prompts was written.
        assert (await session.send("x")).text == "got 1: x"


async def test_python_runs_code_of_several_lines_as_its_repl_would(cluster_factory) -> None:
    # Before: the REPL waited for the end of the block, and the send hung.
    cluster = await cluster_factory("python")
    with anyio.fail_after(20):
        assert (await cluster.send("def f(x):\n    return x*3\n")).text == ""
        assert (await cluster.send("f(2)")).text == "6"
        assert (await cluster.send("for i in range(3):\n    print(i)")).text == "0\n1\n2"
        assert (await cluster.send("print('no newline', end='')")).text == "no newline"
        assert (await cluster.send("x = 5\nx * 2\n'last'")).text == "10\n'last'"
        assert (await cluster.send("class A:\n    pass\n\nA.__name__")).text == "'A'"
        error = (await cluster.send("1/0")).text
        assert error.splitlines() == [
            "Traceback (most recent call last):",
            '  File "<stdin>", line 1, in <module>',
            "ZeroDivisionError: division by zero",
        ]
        assert (await cluster.send("if True:")).text.endswith(
            "IndentationError: expected an indented block after 'if' statement on line 1"
        )
        assert (await cluster.send("f(5)")).text == "15"


async def test_bash_runs_a_script_of_several_lines_as_one_input(cluster_factory) -> None:
    cluster = await cluster_factory("bash")
    with anyio.fail_after(20):
        assert (await cluster.send("x=20\necho $((x + 1))")).text == "21"
        assert (await cluster.send("cat <<'EOF'\n$x 'quoted' \\\nEOF")).text == "$x 'quoted' \\"
        assert (await cluster.send("echo 'never closed")).text.startswith("bash: ")
        assert (await cluster.send("printf 'no newline'")).text == "no newline"
        assert (await cluster.send("echo $x")).text == "20"


# -- a ready prompt inside a reply --------------------------------------------------------


async def test_a_python_reply_that_quotes_the_repl_prompt_is_not_cut_short(
    cluster_factory,
) -> None:
    # Before, a reply showing ">>> " at the end of a read ended there, and the rest answered
    # the next prompt.
    cluster = await cluster_factory("python")
    code = "import time\nprint('part1\\n>>> ', end='', flush=True)\ntime.sleep(0.3)\nprint('part2')"
    with anyio.fail_after(20):
        assert (await cluster.send(code)).text == "part1\n>>> part2"
        assert (await cluster.send("'next'")).text == "'next'"


async def test_a_ready_prompt_naming_another_input_fails_the_prompt_and_restarts(
    cluster_factory, tmp_path
) -> None:
    # The REPL shows a prompt that is not the one after this input (here forged with the
    # right random part, and then blocked, so that it is surely the end of a read).
    fifo = tmp_path / "never"
    os.mkfifo(fifo)
    cluster = await cluster_factory("python", restart=aimcluster.RestartPolicy(initial_delay=0.01))
    assert (await cluster.send("1")).text == "1"
    forged = f"[aimcluster-{_NONCE}:1]>>> "
    code = f"import os\nprint({forged!r}, end='', flush=True)\nos.open({str(fifo)!r}, os.O_RDONLY)"
    with anyio.fail_after(20), pytest.raises(aimcluster.DesyncError, match="does not end input 2"):
        await cluster.send(code)
    await cluster.wait_for(
        lambda m: m.restarts == 1 and m.instances[0].state == "ready", timeout=20
    )
    assert (await cluster.send("'after'")).text == "'after'"


AIDER_LIKE = """\
import os, sys, time
sys.stdout.write("> ")
sys.stdout.flush()
for line in sys.stdin:
    if line.strip() == "split":
        # A "> " line at the end of a write, a short pause, then the rest of the reply.
        os.write(1, b"part1\\n> ")
        time.sleep(0.01)
        os.write(1, b"part2\\n> ")
    else:
        os.write(1, f"echo: {line.strip()}\\n> ".encode())
"""


async def test_aider_waits_for_quiet_after_its_prompt(cluster_factory, tmp_path) -> None:
    path = tmp_path / "aider"
    path.write_text(f"#!{sys.executable}\n{AIDER_LIKE}")
    path.chmod(0o755)
    spec = tools.aider(executable=path, settle=0.5)
    cluster = await cluster_factory(spec)
    assert (await cluster.send("split")).text == "part1\n> part2"
    assert (await cluster.send("next")).text == "echo: next"


async def test_a_reply_while_no_prompt_is_in_flight_restarts_the_instance(
    cluster_factory, tmp_path
) -> None:
    # The tool answers one input twice, the second time once the test opens the FIFO: after
    # that, whatever it prints could end a later prompt's reply, so the process is replaced
    # rather than trusted.
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    source = f"""\
    import os, sys
    sys.stdout.write("> ")
    sys.stdout.flush()
    for line in sys.stdin:
        sys.stdout.write(f"echo: {{line.strip()}}\\n> ")
        sys.stdout.flush()
        if line.strip() == "twice":
            os.read(os.open({str(fifo)!r}, os.O_RDONLY), 1)
            sys.stdout.write("again\\n> ")
            sys.stdout.flush()
    """
    spec = script_tool(tmp_path, "twice", source)
    cluster = await cluster_factory(spec, restart=aimcluster.RestartPolicy(initial_delay=0.01))
    assert (await cluster.send("twice")).text == "echo: twice"
    go = os.open(fifo, os.O_WRONLY)
    try:
        os.write(go, b"1")
        await cluster.wait_for(
            lambda m: m.restarts == 1 and m.instances[0].state == "ready", timeout=20
        )
    finally:
        os.close(go)
    assert (await cluster.send("next")).text == "echo: next"
    metrics = cluster.metrics()
    assert (metrics.completed, metrics.failed) == (2, 0)


# -- a terminal's echo ----------------------------------------------------------------------


# Echoes its input itself, in two writes, as node's readline does: the first ends in "=> ".
ECHOING = """\
import os, sys, termios, time
mode = termios.tcgetattr(0)
mode[3] &= ~termios.ECHO
termios.tcsetattr(0, termios.TCSANOW, mode)
os.write(1, b"> ")
while True:
    line = sys.stdin.readline()
    if not line:
        break
    text = line.rstrip("\\n")
    cut = text.find("=> ") + 3 if "=> " in text else len(text)
    os.write(1, text[:cut].encode())
    time.sleep(0.2)
    os.write(1, text[cut:].encode() + b"\\r\\n")
    os.write(1, f"reply to {len(text)} chars\\r\\n> ".encode())
"""


async def test_the_echo_of_a_prompt_is_never_searched_for_the_ready_prompt(
    cluster_factory, tmp_path
) -> None:
    # Before: '[1,2,3].map(x =' came back, and every later reply was the previous prompt's.
    spec = script_tool(tmp_path, "echoing", ECHOING, pty=True)
    cluster = await cluster_factory(spec)
    assert (await cluster.send("[1,2,3].map(x => x*2)")).text == "reply to 21 chars"
    assert (await cluster.send("1+1")).text == "reply to 3 chars"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
async def test_node_in_a_pty_answers_each_prompt_with_its_own_reply(cluster_factory) -> None:
    spec = aimcluster.ToolSpec(
        name="node", argv=["node", "-i"], ready=r"> ", pty=True, env={"TERM": "dumb"}
    )
    cluster = await cluster_factory(spec)
    assert (await cluster.send("[1,2,3].map(x => x*2)")).text == "[ 2, 4, 6 ]"
    assert (await cluster.send("'a' + 'b'")).text == "'ab'"


async def test_a_reply_that_shows_the_repl_prompt_never_reaches_the_next_prompt(
    cluster_factory,
) -> None:
    # The REPL's output shows its own numbered prompt, right number and all. Read at the end
    # of a read, it ends that reply early; seen before the output's end, it is a desync.
    # Either way what follows is never taken for the next prompt's reply.
    restart = aimcluster.RestartPolicy(initial_delay=0.01)
    cluster = await cluster_factory("python", restart=restart)
    show = "import sys, time\nprint(str(sys.ps1), end='', flush=True)\ntime.sleep(0.3)\n"
    replies = []
    with anyio.fail_after(30):
        for prompt in (show + "print('after')", "1+1", "'next'"):
            try:
                replies.append((await cluster.send(prompt)).text)
            except aimcluster.DesyncError:
                replies.append("desync")
                await cluster.wait_for(lambda m: m.instances[0].state == "ready", timeout=20)
    assert replies[0] in ("", "desync")
    assert replies[1] in ("2", "desync")
    assert replies[2] == "'next'"


async def test_a_tool_that_shows_its_prompt_twice_at_start_up_is_not_restarted(
    cluster_factory, tmp_path
) -> None:
    go, shown = tmp_path / "go", tmp_path / "shown"
    os.mkfifo(go)
    os.mkfifo(shown)
    source = f"""\
    import os, sys
    os.write(1, b"banner\\n> ")
    os.read(os.open({str(go)!r}, os.O_RDONLY), 1)
    os.write(1, b"\\n> ")
    os.write(os.open({str(shown)!r}, os.O_WRONLY), b"1")
    for line in sys.stdin:
        os.write(1, f"echo: {{line.strip()}}\\n> ".encode())
    """
    cluster = await cluster_factory(script_tool(tmp_path, "twice-at-start", source))
    told = os.open(shown, os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.close(os.open(go, os.O_WRONLY))  # the tool shows its prompt again
        with anyio.fail_after(10):
            await anyio.wait_readable(told)
        await anyio.wait_all_tasks_blocked()  # the reader has read it
    finally:
        os.close(told)
    assert (await cluster.send("a")).text == "echo: a"
    assert cluster.metrics().restarts == 0


async def test_bash_refuses_a_prompt_with_a_nul_character(cluster_factory) -> None:
    cluster = await cluster_factory("bash")
    with pytest.raises(ValueError, match=r"NUL character \(at position 6\)"):
        await cluster.send("echo a\x00b")
    assert (await cluster.send("echo ok")).text == "ok"
