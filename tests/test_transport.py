"""Local processes through pipes and a pseudo-terminal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Coroutine, Iterator
from typing import Any, NoReturn

import anyio
import attrs
import pytest
import structlog

import aimcluster
from aimcluster import tools
from aimcluster._transport.handle import _FdProcess
from aimcluster._transport.loopread import LoopReader

from .test_task_steps import LINE_TOOL

pytestmark = pytest.mark.anyio

INTERLEAVE = (
    "import os\n"
    "for i in range(3):\n"
    "    os.write(1, b'out%d\\n' % i)\n"
    "    os.write(2, b'err%d\\n' % i)\n"
    "os.write(2, b'> ')\n"
    "import sys\n"
    "for line in sys.stdin:\n"
    "    os.write(1, b'o\\n'); os.write(2, b'e\\n'); os.write(1, b'o2\\n'); os.write(2, b'> ')\n"
)


async def test_bash_in_a_pty_has_a_controlling_terminal(cluster_factory) -> None:
    cluster = await cluster_factory("bash")
    assert (await cluster.send("test -t 0 && echo tty || echo pipe")).text == "tty"
    assert (await cluster.send("tty >/dev/null && echo has-ctty")).text == "has-ctty"


async def test_pty_echo_is_stripped(cluster_factory) -> None:
    cluster = await cluster_factory("bash")
    reply = await cluster.send("echo hello; echo world")
    assert reply.text == "hello\nworld"


async def test_pty_reply_with_no_output_is_empty(cluster_factory) -> None:
    cluster = await cluster_factory("bash")
    assert (await cluster.send("true")).text == ""


async def test_python_repl_in_a_pty(cluster_factory) -> None:
    spec = attrs.evolve(tools.python(), pty=True)
    cluster = await cluster_factory(spec)
    assert (await cluster.send("1+1")).text == "2"
    assert (await cluster.send("import sys; sys.stdin.isatty()")).text == "True"


async def test_pty_rejects_a_line_longer_than_the_terminal_accepts(cluster_factory) -> None:
    cluster = await cluster_factory("bash")
    with pytest.raises(ValueError, match="longer than a terminal accepts"):
        await cluster.send("echo " + "x" * 5000)
    assert (await cluster.send("echo ok")).text == "ok"


async def test_pty_grandchildren_die_with_the_cluster(cluster_factory) -> None:
    cluster = await cluster_factory("bash")
    # Job control puts the job in a process group of its own: killpg alone would miss it.
    reply = await cluster.send("sleep 1000 & echo $!")
    assert int(reply.text.splitlines()[-1]) > 0  # no_leaked_processes checks that it is gone


async def test_merged_stderr_keeps_os_level_order(cluster_factory) -> None:
    spec = aimcluster.ToolSpec(
        name="interleave", argv=[sys.executable, "-c", INTERLEAVE], ready="> "
    )
    cluster = await cluster_factory(spec)
    assert (await cluster.send("go")).text == "o\ne\no2"


async def test_separate_stderr_stays_out_of_the_reply(cluster_factory) -> None:
    spec = aimcluster.ToolSpec(
        name="interleave",
        argv=[sys.executable, "-c", INTERLEAVE.replace("os.write(2, b'> ')", "os.write(1, b'> ')")],
        ready="> ",
        merge_stderr=False,
    )
    cluster = await cluster_factory(spec)
    assert (await cluster.send("go")).text == "o\no2"


async def test_the_last_of_a_separate_stderr_reaches_the_startup_error() -> None:
    # The tool exits at once; a helper it left in a session of its own says why a little later,
    # on the stderr they share. The error waits for the stream's end (up to a grace period).
    # Without a cgroup, the helper outlives the tool (only a cgroup would take it along).
    script = (
        "import os, time\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.setsid(); os.close(1); os.close(w); time.sleep(0.2)\n"
        "    os.write(2, b'no model key'); os._exit(0)\n"
        "os.close(w); os.read(r, 1)  # until it has left our session\n"
        "os._exit(3)\n"
    )
    spec = aimcluster.ToolSpec(
        name="grumpy", argv=[sys.executable, "-c", script], ready="> ", merge_stderr=False
    )
    transport = aimcluster.LocalTransport(cgroups=False)
    with pytest.raises(aimcluster.StartupError) as caught:
        async with aimcluster.launch_cluster(spec, 1, restart=False, transport=transport):
            pass
    assert caught.value.exit_code == 3
    assert caught.value.output == "no model key"


async def test_invalid_utf8_output_is_replaced_not_fatal(cluster_factory) -> None:
    cluster = await cluster_factory("python")
    reply = await cluster.send("import sys; sys.stdout.buffer.write(b'\\xff\\xfeok\\n') and None")
    assert reply.text == "\ufffd\ufffdok"
    assert (await cluster.send("1+1")).text == "2"


async def test_prompt_arriving_one_byte_at_a_time_is_found(cluster_factory) -> None:
    script = (
        "import os, sys, time\n"
        "def prompt():\n"
        "    for b in b'>>> ':\n"
        "        os.write(1, bytes([b])); time.sleep(0.01)\n"
        "prompt()\n"
        "for line in sys.stdin:\n"
        "    os.write(1, b'got ' + line.strip().encode() + b'\\n'); prompt()\n"
    )
    spec = aimcluster.ToolSpec(name="slowprompt", argv=[sys.executable, "-c", script], ready=">>> ")
    cluster = await cluster_factory(spec)
    assert (await cluster.send("x")).text == "got x"


async def test_env_and_cwd_placeholders_are_per_instance(cluster_factory, tmp_path) -> None:
    for i in range(2):
        (tmp_path / f"w{i}").mkdir()
    spec = tools.mock(cwd=tmp_path / "w{instance}", env={"SLOT": "slot-{instance}"})
    cluster = await cluster_factory(spec, count=2)
    for i in range(2):
        assert (await cluster.send("/env SLOT", instance=i)).text == f"slot-{i}"
        await cluster.send("/pid", instance=i)
    assert (await cluster.send("/add nothing", instance=1)).text == "No such file: nothing"


async def test_missing_working_directory_is_a_startup_error() -> None:
    spec = tools.mock(cwd="/no/such/dir")
    with pytest.raises(aimcluster.StartupError, match="could not start"):
        async with aimcluster.launch_cluster(spec):
            pytest.fail("must not start")


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="sqlite3 is not installed")
async def test_the_readme_sqlite_spec_answers_and_passes_its_probe(
    cluster_factory, tmp_path
) -> None:
    # The README's "Describing a tool" example, with paths under tmp_path and a short probe
    # interval. Over pipes its readline echoed every prompt, and every probe failed.
    (tmp_path / "work" / "0").mkdir(parents=True)
    spec = aimcluster.ToolSpec(
        name="sqlite",
        argv=["sqlite3", "-interactive", "data.db"],
        ready=r"sqlite> ",
        pty=True,
        echo=False,
        env={"TERM": "dumb", "HOME": str(tmp_path / "home-{instance}")},
        cwd=str(tmp_path / "work" / "{instance}"),
        exit_command=".quit",
        probe=aimcluster.Probe(command="select 1;", expect=r"^1$", interval=0.1),
    )
    passed = anyio.Event()
    seen: list[str] = []

    def count_probes(_logger: object, _method: str, event: dict[str, object]) -> NoReturn:
        seen.append(str(event["event"]))
        if seen.count("probe_passed") >= 2:
            passed.set()
        raise structlog.DropEvent

    logger = structlog.wrap_logger(
        None,
        processors=[count_probes],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
    cluster = await cluster_factory(spec, logger=logger)
    assert (await cluster.send("create table t(x); insert into t values (7);")).text == ""
    assert (await cluster.send("select x * 6 from t;")).text == "42"
    assert (await cluster.send("select x from nowhere;")).text.startswith("Parse error")
    with anyio.fail_after(10):
        await passed.wait()
    assert "probe_failed" not in seen
    assert cluster.metrics().restarts == 0


async def test_a_reader_woken_after_its_handle_closed_reads_nothing() -> None:
    """The fd turned readable and the reader was woken, but the handle was closed before the
    reader ran: notify_closing found no waiter to wake, and the fd number may belong to another
    file by now. The reader must end without reading. The window is made by marking the handle
    closed while its reader waits (as aclose() does first) and then making the fd readable.

    On asyncio this is the joined read's window (an eager read happens in the loop's callback,
    which aclose() takes out of the loop before it closes the fd)."""
    echo_once = "import sys; sys.stdout.write(sys.stdin.readline())"
    spec = aimcluster.ToolSpec(name="echo-once", argv=[sys.executable, "-c", echo_once], ready="> ")
    handle = await aimcluster.LocalTransport().spawn(spec, instance=0)
    assert isinstance(handle, _FdProcess)
    read: list[bytes | None] = []

    async def reader() -> None:
        try:
            read.append(await handle.receive_joined())
        except anyio.EndOfStream:
            read.append(None)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            await anyio.wait_all_tasks_blocked()
            handle._closed = True
            for loop_reader in (handle._readers or {}).values():
                loop_reader._closed = True
            assert handle._input is not None
            os.write(handle._input, b"x\n")  # the child echoes it: the output turns readable
        assert read == [None]
    finally:
        handle._closed = False
        await handle.aclose()


# -- reading through the asyncio loop's own callbacks (LoopReader) -------------------------------
# asyncio only, by nature: on trio the handle waits with anyio.wait_readable. uvloop implements
# the loop's reader callbacks apart from asyncio's selector loop, so both run.

on_asyncio_loops = pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ],
)


class _Pipe:
    """A new pipe: a LoopReader on its read end, and its write end."""

    def __init__(self) -> None:
        self._read_end, self._write_end = os.pipe()
        os.set_blocking(self._read_end, False)
        self.reader = LoopReader(asyncio.get_running_loop(), self._read_end, 1024)

    def write(self, data: bytes) -> None:
        os.write(self._write_end, data)

    def hang_up(self) -> None:
        """Close the write end: once what was written is read, the reader meets the end."""
        os.close(self._write_end)
        self._write_end = -1

    def close(self) -> None:
        self.reader.close()
        os.close(self._read_end)
        if self._write_end >= 0:
            os.close(self._write_end)


@contextlib.contextmanager
def loop_reader_on_a_pipe() -> Iterator[tuple[LoopReader, _Pipe]]:
    """A LoopReader on the read end of a new pipe, and the pipe."""
    pipe = _Pipe()
    try:
        yield pipe.reader, pipe
    finally:
        pipe.close()


@on_asyncio_loops
async def test_an_eager_read_keeps_the_descriptor_registered_between_reads() -> None:
    got: list[bytes] = []
    with loop_reader_on_a_pipe() as (reader, pipe):

        async def receive() -> None:
            got.append(await reader.receive(eager=True))

        for n in range(3):
            async with anyio.create_task_group() as tg:
                tg.start_soon(receive)
                await anyio.wait_all_tasks_blocked()
                pipe.write(b"chunk %d" % n)
            assert got[-1] == b"chunk %d" % n
            assert reader._registered  # read in the loop's callback, and still registered


@on_asyncio_loops
async def test_output_nobody_waits_for_stays_in_the_kernel_and_is_read_later() -> None:
    with loop_reader_on_a_pipe() as (reader, pipe):
        pipe.write(b"first")
        assert await reader.receive(eager=True) == b"first"
        # Nobody waits now: the loop reports the pipe readable once, and the callback takes
        # it out of the loop rather than spin on it or read what no task would get.
        pipe.write(b"second")
        with anyio.fail_after(5):
            while reader._registered:
                await anyio.lowlevel.checkpoint()
        for _ in range(10):  # many more passes: it stays out, the data stays in the pipe
            await anyio.lowlevel.checkpoint()
        assert not reader._registered
        assert await reader.receive(eager=True) == b"second"


@on_asyncio_loops
async def test_a_joined_read_is_done_by_the_task_a_pass_after_the_wake_up() -> None:
    with loop_reader_on_a_pipe() as (reader, pipe):
        pipe.write(b"echo")
        assert await reader.receive(eager=False) == b"echo"
        # As anyio.wait_readable: registered for the wait only.
        assert not reader._registered
        pipe.write(b"then eager")
        assert await reader.receive(eager=True) == b"then eager"


async def cancel_after_the_callback(reader: LoopReader, wait: Coroutine[Any, Any, object]) -> None:
    """Run *wait* in a task of its own, run the reader's callback by hand (the loop must not
    run it itself), then cancel the task with asyncio's own cancel, which does not wait for
    the task to take what the callback gave it."""
    task = asyncio.ensure_future(wait)
    await anyio.wait_all_tasks_blocked()
    reader._unregister()
    reader._ready()
    assert reader._waiter is not None
    assert reader._waiter.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
async def test_a_chunk_read_for_a_cancelled_receive_goes_to_the_next() -> None:
    """The callback read a chunk for the waiting task, and the task was cancelled before it
    ran (asyncio's own cancellation; anyio's waits for the task to take what it was given).
    The chunk must not be lost, nor the end of the stream met in the callback. The callback
    is run by hand to make that window."""
    with loop_reader_on_a_pipe() as (reader, pipe):
        pipe.write(b"read for nobody")
        await cancel_after_the_callback(reader, reader.receive(eager=True))
        assert await reader.receive(eager=True) == b"read for nobody"
        pipe.write(b"next")
        assert await reader.receive(eager=True) == b"next"
        pipe.hang_up()
        await cancel_after_the_callback(reader, reader.receive(eager=True))
        with pytest.raises(anyio.EndOfStream):
            await reader.receive(eager=True)


@on_asyncio_loops
async def test_receive_into_gives_each_chunk_to_take_in_the_loop_s_callback() -> None:
    """The task sleeps through every chunk take keeps, and wakes once, when take asks."""
    taken: list[tuple[bytes, asyncio.Task[object] | None]] = []

    def take(data: bytes) -> bool:
        taken.append((data, asyncio.current_task()))
        return data == b"last"

    with loop_reader_on_a_pipe() as (reader, pipe):
        woken: list[int] = []

        async def receive() -> None:
            await reader.receive_into(take)
            woken.append(len(taken))

        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            await anyio.wait_all_tasks_blocked()
            for chunk in (b"one", b"two", b"last"):
                pipe.write(chunk)
                with anyio.fail_after(5):
                    while not taken or taken[-1][0] != chunk:
                        await anyio.lowlevel.checkpoint()
                await anyio.wait_all_tasks_blocked()
                assert woken == ([3] if chunk == b"last" else [])
        assert [data for data, _ in taken] == [b"one", b"two", b"last"]
        assert [task for _, task in taken] == [None] * 3  # the loop's callback, no task
        # Then as receive(): what comes next waits in the kernel for the next read.
        pipe.write(b"after")
        assert await reader.receive(eager=True) == b"after"


@on_asyncio_loops
async def test_an_error_take_raises_ends_receive_into_with_it() -> None:
    def take(data: bytes) -> bool:
        raise ValueError(f"cannot take {data!r}")

    with loop_reader_on_a_pipe() as (reader, pipe):
        pipe.write(b"bad")
        with pytest.raises(ValueError, match="cannot take b'bad'"):
            await reader.receive_into(take)
        assert not reader._registered
        pipe.write(b"good")
        assert await reader.receive(eager=True) == b"good"


@on_asyncio_loops
async def test_take_cancelling_its_own_wait_neither_breaks_the_loop_nor_loses_its_error() -> None:
    """take cancels the scope its task waits in (the waiter is then done), and asks for the
    task or raises: no result is set on the done waiter, and the error goes to the next
    receive."""
    with loop_reader_on_a_pipe() as (reader, pipe):
        with anyio.CancelScope() as scope:

            def take_and_ask(data: bytes) -> bool:
                scope.cancel()
                return True

            pipe.write(b"one")
            await reader.receive_into(take_and_ask)
        assert scope.cancelled_caught
        with anyio.CancelScope() as scope:

            def take_and_fail(data: bytes) -> bool:
                scope.cancel()
                raise ValueError(f"cannot take {data!r}")

            pipe.write(b"two")
            await reader.receive_into(take_and_fail)
        assert scope.cancelled_caught
        with pytest.raises(ValueError, match="cannot take b'two'"):
            await reader.receive(eager=True)
        pipe.write(b"three")
        assert await reader.receive(eager=True) == b"three"


@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
async def test_a_cancelled_receive_into_loses_nothing() -> None:
    """What a cancelled receive() had read goes to take, and the end of the stream met for a
    cancelled receive_into() goes to the next read. The callback is run by hand, as in the
    test above for receive()."""
    taken: list[bytes] = []

    def take(data: bytes) -> bool:
        taken.append(data)
        return True

    with loop_reader_on_a_pipe() as (reader, pipe):
        pipe.write(b"read for a receive()")
        await cancel_after_the_callback(reader, reader.receive(eager=True))
        await reader.receive_into(take)
        assert taken == [b"read for a receive()"]
        pipe.hang_up()
        await cancel_after_the_callback(reader, reader.receive_into(take))
        with pytest.raises(anyio.EndOfStream):
            await reader.receive(eager=True)
        assert taken == [b"read for a receive()"]


async def test_a_handle_gives_its_output_to_take_on_every_loop(anyio_backend_name: str) -> None:
    """Through a real child: on asyncio take runs in the loop's callback, on trio in the task
    (anyio.wait_readable). Either way it sees all the output, in order, and its True ends the
    wait."""
    argv = [sys.executable, "-u", "-c", LINE_TOOL]
    spec = aimcluster.ToolSpec(name="echo", argv=argv, ready="> ")
    handle = await aimcluster.LocalTransport().spawn(spec, instance=0)
    assert isinstance(handle, _FdProcess)
    output = bytearray()
    in_a_task: set[bool] = set()

    def take(data: bytes) -> bool:
        output.extend(data)
        if anyio_backend_name == "asyncio":
            in_a_task.add(asyncio.current_task() is not None)
        return output.endswith(b"ok three\n> ")

    try:
        assert handle._input is not None
        os.write(handle._input, b"one\ntwo\nthree\n")
        with anyio.fail_after(10):
            await handle.receive_into(take)
        assert output == b"> ok one\n> ok two\n> ok three\n> "
        assert in_a_task <= {False}
    finally:
        handle.kill_all()
        with anyio.fail_after(10):
            await handle.wait()
        await handle.aclose()


async def test_take_writing_the_next_input_gets_every_answer_in_order() -> None:
    """As the reader carrying on with a queue of prompts: take writes the next line as each
    answer completes. On trio the handle then reads first after a pass, and waits only if
    nothing is there (both happen, as the child is quick or not); every answer comes, in
    order, and none is read twice."""
    argv = [sys.executable, "-u", "-c", LINE_TOOL]
    spec = aimcluster.ToolSpec(name="echo", argv=argv, ready="> ")
    handle = await aimcluster.LocalTransport().spawn(spec, instance=0)
    assert isinstance(handle, _FdProcess)
    lines = [f"line {n}" for n in range(200)]
    output = bytearray()
    answered = 0

    def take(data: bytes) -> bool:
        nonlocal answered
        output.extend(data)
        while answered < len(lines) and output.endswith(f"ok {lines[answered]}\n> ".encode()):
            answered += 1
            if answered == len(lines):
                return True
            assert handle.try_send(f"{lines[answered]}\n".encode()) > 0
        return False

    try:
        assert handle.try_send(f"{lines[0]}\n".encode()) > 0
        with anyio.fail_after(30):
            await handle.receive_into(take)
        assert output == b"> " + b"".join(f"ok {line}\n> ".encode() for line in lines)
    finally:
        handle.kill_all()
        with anyio.fail_after(10):
            await handle.wait()
        await handle.aclose()


@on_asyncio_loops
async def test_a_spurious_wake_up_leaves_the_receive_waiting() -> None:
    """The loop reported the descriptor readable, but nothing was there to read."""
    got: list[bytes] = []
    with loop_reader_on_a_pipe() as (reader, pipe):

        async def receive() -> None:
            got.append(await reader.receive(eager=True))

        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            await anyio.wait_all_tasks_blocked()
            reader._ready()  # nothing in the pipe: EAGAIN
            assert reader._waiter is not None
            assert not reader._waiter.done()
            pipe.write(b"real")
        assert got == [b"real"]


@on_asyncio_loops
@pytest.mark.parametrize("eager", [True, False], ids=["eager", "joined"])
async def test_a_loop_reader_reports_a_hung_up_pty_as_the_end(eager: bool) -> None:
    """Linux reports a pty whose every slave descriptor is closed as EIO: the end."""
    master, slave = os.openpty()
    os.set_blocking(master, False)
    reader = LoopReader(asyncio.get_running_loop(), master, 1024)
    try:
        os.close(slave)
        with pytest.raises(anyio.EndOfStream):
            await reader.receive(eager=eager)
        assert not reader._registered
    finally:
        reader.close()
        os.close(master)


@on_asyncio_loops
async def test_closing_a_loop_reader_ends_its_wait_and_leaves_the_loop() -> None:
    with loop_reader_on_a_pipe() as (reader, pipe):
        ended: list[type[BaseException]] = []

        async def receive() -> None:
            with pytest.raises(anyio.EndOfStream):
                await reader.receive(eager=True)
            ended.append(anyio.EndOfStream)

        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            await anyio.wait_all_tasks_blocked()
            assert reader._registered
            reader.close()
        assert ended == [anyio.EndOfStream]
        assert not reader._registered
        # Not read after close, even with output waiting.
        pipe.write(b"late")
        with pytest.raises(anyio.EndOfStream):
            await reader.receive(eager=True)


@on_asyncio_loops
@pytest.mark.parametrize("eager", [True, False], ids=["eager", "joined"])
async def test_a_loop_reader_reports_the_end_of_the_stream(eager: bool) -> None:
    with loop_reader_on_a_pipe() as (reader, pipe):
        pipe.write(b"last")
        pipe.hang_up()
        assert await reader.receive(eager=eager) == b"last"
        with pytest.raises(anyio.EndOfStream):
            await reader.receive(eager=eager)
        assert not reader._registered  # a hung-up descriptor stays readable: not in the loop


@on_asyncio_loops
@pytest.mark.parametrize("pty", [False, True], ids=["pipe", "pty"])
async def test_every_caller_gets_its_own_reply_on_asyncio_loops(pty: bool) -> None:
    """Through the local transport's loop readers: one caller alone (joined reads), then eight
    at once (eager reads) on four instances, each reply checked against its own prompt."""
    spec = (
        attrs.evolve(tools.python(), pty=True)
        if pty
        else aimcluster.ToolSpec(
            name="echo", argv=[sys.executable, "-u", "-c", LINE_TOOL], ready=r"> $"
        )
    )
    async with aimcluster.launch_cluster(spec, 4) as cluster:
        for n in range(20):
            assert (await cluster.send(f"{n} * 3" if pty else f"one {n}")).text == (
                str(n * 3) if pty else f"ok one {n}"
            )

        async def caller(c: int) -> None:
            for n in range(25):
                prompt, want = (
                    (f"{c} * 1000 + {n}", str(c * 1000 + n))
                    if pty
                    else (
                        f"c{c} n{n}",
                        f"ok c{c} n{n}",
                    )
                )
                assert (await cluster.send(prompt)).text == want

        async with anyio.create_task_group() as tg:
            for c in range(8):
                tg.start_soon(caller, c)
        assert cluster._fleet.busy.count == 0
