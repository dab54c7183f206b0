"""The short cuts a plain prompt takes: written by the put that finds an instance idle, or by
the reader as it completes the previous reply, with the instance's task asleep throughout.

Each prompt must still be written exactly once, answered in order, and mixed freely with the
prompts that go the long way (deadlines, leases, pinned prompts).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import attrs
import pytest

import aimcluster

pytestmark = pytest.mark.anyio

# Answers each line with its length, then the prompt: a reply that proves the whole line came.
LENGTHS = (
    "import sys\n"
    "sys.stdout.write('> '); sys.stdout.flush()\n"
    "for line in sys.stdin:\n"
    "    sys.stdout.write(f'{len(line.rstrip(chr(10)))}\\n> '); sys.stdout.flush()\n"
)


def lengths() -> aimcluster.ToolSpec:
    return aimcluster.ToolSpec(
        name="lengths", argv=[sys.executable, "-u", "-c", LENGTHS], ready="> "
    )


@pytest.mark.parametrize("pty", [False, True], ids=["pipes", "pty"])
@pytest.mark.parametrize("routing", ["least_busy", "round_robin"])
async def test_a_stream_of_prompts_is_written_once_each_and_answered_in_order(
    cluster_factory, routing: str, pty: bool
) -> None:
    spec = attrs.evolve(aimcluster.tools.mock(), pty=pty)
    cluster = await cluster_factory(spec, count=3, routing=routing)
    prompts = [f"prompt {number}" for number in range(600)]

    replies = await cluster.map(prompts)

    assert [reply.text for reply in replies] == [f"echo: {prompt}" for prompt in prompts]
    assert all(reply.attempts == 1 for reply in replies)
    metrics = cluster.metrics()
    assert (metrics.sent, metrics.completed, metrics.failed) == (600, 600, 0)
    assert all(instance.state == "ready" for instance in metrics.instances)


async def test_back_to_back_sends_to_an_idle_instance(cluster_factory) -> None:
    # Each send finds the instance idle (its task asleep, parked by the reader).
    cluster = await cluster_factory("mock")
    for number in range(300):
        assert (await cluster.send(f"n{number}")).text == f"echo: n{number}"
    assert cluster.metrics().sent == 300
    assert cluster.metrics().instances[0].state == "ready"


async def test_prompts_that_need_the_task_mix_with_those_that_do_not(cluster_factory) -> None:
    cluster = await cluster_factory("mock", count=2)
    results: dict[str, str] = {}

    async def plain(number: int) -> None:
        results[f"p{number}"] = (await cluster.send(f"p{number}")).text

    async def with_deadline(number: int) -> None:
        results[f"d{number}"] = (await cluster.send(f"d{number}", timeout=30)).text

    async def pinned(number: int) -> None:
        results[f"i{number}"] = (await cluster.send(f"i{number}", instance=number % 2)).text

    async def leased(number: int) -> None:
        async with cluster.lease() as session:
            first = (await session.send(f"l{number}a")).text
            second = (await session.send(f"l{number}b")).text
        results[f"l{number}"] = f"{first}|{second}"

    async with anyio.create_task_group() as tg:
        for number in range(40):
            for job in (plain, with_deadline, pinned, leased):
                tg.start_soon(job, number)

    for number in range(40):
        for kind in "pdi":
            assert results[f"{kind}{number}"] == f"echo: {kind}{number}"
        assert results[f"l{number}"] == f"echo: l{number}a|echo: l{number}b"
    metrics = cluster.metrics()
    assert (metrics.sent, metrics.completed, metrics.failed) == (200, 200, 0)


async def test_a_prompt_longer_than_the_pipe_holds_is_written_whole(cluster_factory) -> None:
    # Started by a put or by the reader, it cannot be written at once: the task writes the rest.
    cluster = await cluster_factory(lengths())
    big = "x" * 300_000
    assert (await cluster.send(big)).text == "300000"
    replies = await cluster.map([big, "small", big, "y" * 70_000, "z"])
    assert [reply.text for reply in replies] == ["300000", "5", "300000", "70000", "1"]
    assert cluster.metrics().sent == 6


async def test_a_cancelled_send_leaves_the_instance_serving(cluster_factory) -> None:
    cluster = await cluster_factory("mock")
    # Cancelled right after the put wrote the prompt: its reply is read and discarded.
    with anyio.move_on_after(0) as scope:
        await cluster.send("/sleep 0.05")
    assert scope.cancelled_caught
    assert (await cluster.send("after")).text == "echo: after"


async def test_an_instance_dying_while_parked_is_restarted_and_serves(cluster_factory) -> None:
    cluster = await cluster_factory("mock", restart=aimcluster.RestartPolicy(initial_delay=0.01))
    assert (await cluster.send("first")).text == "echo: first"
    # Its task is asleep waiting for a reply that came long ago (parked by the reader).
    pid = cluster.pids[0]
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    await cluster.wait_for(
        lambda m: m.instances[0].restarts == 1 and m.instances[0].state == "ready", timeout=10
    )
    assert (await cluster.send("second")).text == "echo: second"


def on_signal_tool(
    *,
    strays: int = 0,
    flood: bool = True,
    pause: float = 0,
    started: Path | None = None,
    finished: Path | None = None,
) -> aimcluster.ToolSpec:
    """A tool that answers "ok". On SIGUSR1 (sent while it is idle) it writes a byte to the
    FIFO *started*, waits *pause* s, prints *strays* stray prompts ("note"), then, with
    *flood*, 200 kB without a prompt (more than its 64 KiB reply cap), then writes a byte to
    the FIFO *finished*."""
    source = (
        "import os, signal, sys, time\n"
        "def tell(fifo):\n"
        "    if fifo != 'None':\n"
        "        with open(fifo, 'wb') as f:\n"
        "            f.write(b'1')\n"
        "def on_signal(*_):\n"
        f"    tell({str(started)!r})\n"
        f"    time.sleep({pause})\n"
        f"    for _ in range({strays}):\n"
        "        os.write(1, b'note\\n> ')\n"
        "        time.sleep(0.01)\n"
        f"    os.write(1, b'y' * {200_000 if flood else 0})\n"
        f"    tell({str(finished)!r})\n"
        "signal.signal(signal.SIGUSR1, on_signal)\n"
        "sys.stdout.write('> '); sys.stdout.flush()\n"
        "for line in sys.stdin:\n"
        "    sys.stdout.write('ok\\n> '); sys.stdout.flush()\n"
    )
    return aimcluster.ToolSpec(
        name="on-signal",
        argv=[sys.executable, "-u", "-c", source],
        ready="> ",
        max_reply_bytes=65_536,
    )


@asynccontextmanager
async def signalled(cluster: aimcluster.Cluster, told: Path) -> AsyncIterator[None]:
    """Send SIGUSR1 to instance 0, an on_signal_tool, and wait until its handler writes to
    the FIFO *told* (its *started* or *finished*)."""
    os.mkfifo(told)
    # Opened before the signal, so that the tool's open() finds a reader.
    fifo = os.open(told, os.O_RDONLY | os.O_NONBLOCK)
    try:
        pid = cluster.pids[0]
        assert pid is not None
        os.kill(pid, signal.SIGUSR1)
        with anyio.fail_after(10):
            await anyio.wait_readable(fifo)
        yield
    finally:
        os.close(fifo)


FAST_RESTART = aimcluster.RestartPolicy(initial_delay=0.01)


@pytest.mark.parametrize("strays", [0, 20])
@pytest.mark.parametrize("timeout", [None, 30.0], ids=["plain", "deadline"])
async def test_a_flood_while_idle_restarts_the_instance_and_charges_no_prompt(
    cluster_factory, timeout: float | None, strays: int
) -> None:
    # After a plain prompt the reader mostly parks the instance with its task still waiting
    # on the frame queue; after one with a deadline the task is back waiting for work. The
    # flood restarts the instance at once either way, without waiting for the next prompt,
    # and no prompt is in flight to charge with it. 20 stray prompts first fill the frame
    # queue, which nobody reads while the instance is idle.
    cluster = await cluster_factory(on_signal_tool(strays=strays), restart=FAST_RESTART)
    assert (await cluster.send("first", timeout=timeout)).text == "ok"
    pid = cluster.pids[0]
    assert pid is not None
    os.kill(pid, signal.SIGUSR1)
    await cluster.wait_for(
        lambda m: m.restarts == 1 and m.instances[0].state == "ready", timeout=10
    )
    assert (await cluster.send("again", timeout=timeout)).text == "ok"
    metrics = cluster.metrics()
    assert (metrics.completed, metrics.failed, metrics.restarts) == (2, 0, 1)


async def test_stray_prompts_restart_the_instance_and_are_not_taken_for_the_next_reply(
    cluster_factory,
) -> None:
    # A prompt the tool shows while idle means its output no longer lines up with its input:
    # the process is replaced at once, whether the frame queue has room or not, and the next
    # prompt goes to the fresh one.
    spec = on_signal_tool(strays=20, flood=False)
    cluster = await cluster_factory(spec, restart=FAST_RESTART)
    assert (await cluster.send("first", timeout=30)).text == "ok"
    pid = cluster.pids[0]
    assert pid is not None
    os.kill(pid, signal.SIGUSR1)
    await cluster.wait_for(
        lambda m: m.restarts == 1 and m.instances[0].state == "ready", timeout=10
    )
    assert (await cluster.send("again", timeout=30)).text == "ok"
    metrics = cluster.metrics()
    assert (metrics.completed, metrics.failed, metrics.restarts) == (2, 0, 1)


async def test_a_flood_while_a_prompt_is_written_requeues_the_prompt(
    cluster_factory, tmp_path
) -> None:
    # The tool floods while the task waits to write the rest of a long prompt: the flood is
    # not the prompt's doing, so it is not failed for it but goes again, to the fresh process.
    cluster = await cluster_factory(
        on_signal_tool(started=tmp_path / "s", pause=0.5), restart=FAST_RESTART
    )
    assert (await cluster.send("first", timeout=30)).text == "ok"
    async with signalled(cluster, tmp_path / "s"):
        # The handler does not read stdin, so 300 kB cannot all be written before the flood.
        reply = await cluster.send("p" * 300_000, timeout=30)
    assert reply.text == "ok"
    metrics = cluster.metrics()
    assert (metrics.completed, metrics.restarts) == (2, 1)


async def test_a_flood_in_an_idle_lease_loses_the_lease_at_once(cluster_factory) -> None:
    cluster = await cluster_factory(on_signal_tool(), restart=FAST_RESTART)
    async with cluster.lease() as session:
        assert (await session.send("first")).text == "ok"
        pid = cluster.pids[0]
        assert pid is not None
        os.kill(pid, signal.SIGUSR1)
        # Restarted while the lease waits for its next prompt, not when that prompt comes.
        await cluster.wait_for(lambda m: m.restarts == 1, timeout=10)
        # What the lease built up went with the process: it stays lost, and says why.
        with pytest.raises(aimcluster.ReplyTooLargeError, match="more than 65536 bytes"):
            await session.send("second")
    assert (await cluster.send("again")).text == "ok"
    metrics = cluster.metrics()
    assert (metrics.completed, metrics.failed) == (2, 0)


async def test_a_lease_prompt_withdrawn_at_once_leaves_the_lease_working(cluster_factory) -> None:
    cluster = await cluster_factory("mock")
    async with cluster.lease() as session:
        with anyio.CancelScope() as scope:
            scope.cancel()
            # Withdrawn at its first wait: on trio before the instance could take it (never
            # sent); on asyncio the instance may send it first (its reply is discarded).
            await session.send("/echo withdrawn")
        assert scope.cancelled_caught
        with anyio.fail_after(10):
            assert (await session.send("after")).text == "echo: after"
    assert cluster.metrics().failed == 0
    with anyio.fail_after(10):
        assert (await cluster.send("free again")).text == "echo: free again"


async def test_a_prompt_the_tool_cannot_encode_is_refused_up_front(cluster_factory) -> None:
    cluster = await cluster_factory(attrs.evolve(aimcluster.tools.mock(), encoding="ascii"))
    with pytest.raises(ValueError, match=r"cannot be written in the tool's encoding \(ascii\)"):
        await cluster.send("café")
    assert (await cluster.send("cafe")).text == "echo: cafe"
