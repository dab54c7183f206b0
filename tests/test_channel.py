"""The reader's queue to the slot's task (``_base/channel.py``)."""

from __future__ import annotations

import anyio
import pytest

from aimcluster._base.channel import Channel

pytestmark = pytest.mark.anyio


async def test_pending_says_whether_items_wait_and_a_waiting_item_comes_at_once() -> None:
    channel = Channel[int](2)
    assert not channel.pending
    channel.send_nowait(1)
    channel.send_nowait(2)
    assert channel.pending
    with pytest.raises(anyio.WouldBlock):
        channel.send_nowait(3)
    assert await channel.receive() == 1
    assert channel.pending
    assert channel.receive_nowait() == 2
    assert not channel.pending
    with pytest.raises(anyio.WouldBlock):
        channel.receive_nowait()


async def test_a_sender_waits_for_room_and_the_receiver_for_an_item() -> None:
    channel = Channel[int](1)
    got: list[int] = []

    async def receive(count: int) -> None:
        for _ in range(count):
            got.append(await channel.receive())

    async with anyio.create_task_group() as tg:
        tg.start_soon(receive, 3)
        await anyio.wait_all_tasks_blocked()
        for item in range(3):
            await channel.send(item)
    assert got == [0, 1, 2]
    assert not channel.pending


async def test_the_stream_ends_after_the_last_sender_and_close_breaks_senders() -> None:
    channel = Channel[str](4, senders=2)
    channel.send_nowait("last words")
    channel.close_sender()
    channel.close_sender()
    assert await channel.receive() == "last words"
    with pytest.raises(anyio.EndOfStream):
        await channel.receive()
    channel = Channel[str](1)
    channel.send_nowait("full")
    channel.close()
    assert not channel.pending
    with pytest.raises(anyio.BrokenResourceError):
        channel.send_nowait("late")
    with pytest.raises(anyio.EndOfStream):
        channel.receive_nowait()
