"""One live process, against a scripted fake handle: the reader, the exit watcher, the writes.

The fake (:class:`FakeHandle`) implements :class:`aimcluster.abc.ProcessHandle` with memory
streams, as httpcore's tests use a mock stream: it starts no process, answers each line written
with what the test's responder prints, and exits when told to or signalled. ``test_slot.py``
drives a whole slot with it.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable

import anyio
import pytest
import structlog

from aimcluster import ToolSpec
from aimcluster._base.ratelimit import RateLimiter
from aimcluster._base.request import Request
from aimcluster._slot.exchange import Exchange
from aimcluster._slot.framer import Frame
from aimcluster._slot.outcomes import Desync
from aimcluster._slot.process import _FRAME_BUFFER, EXITED, WAKE, Busy, Process
from aimcluster.abc import ProcessHandle, Transport

pytestmark = pytest.mark.anyio

#: What the fake tool does with a line written to it: print with handle.print, exit, or both.
Responder = Callable[["FakeHandle", str], None]


def echo(handle: FakeHandle, line: str) -> None:
    handle.print(f"ok {line}\n> ".encode())


class FakeHandle(ProcessHandle):
    """A scripted tool process (see the module docstring). It shows ``> `` when it starts."""

    def __init__(self, pid: int, respond: Responder = echo, *, room: float = math.inf) -> None:
        self._pid = pid
        self.respond = respond
        #: How many bytes try_send finds room for (the caller sends the rest, waiting).
        self.room = room
        self._line = bytearray()
        self._out, self._out_reader = anyio.create_memory_object_stream[bytes](math.inf)
        self._exited = anyio.Event()
        self.code: int | None = None
        self.written = bytearray()
        #: How many writes went out without waiting (try_send) and with it (send).
        self.try_sends = 0
        self.sends = 0
        self.signals: list[int] = []
        self.closed = False
        #: Which way each read was asked for (see ProcessHandle.receive_joined).
        self.reads: list[str] = []
        self.print(b"> ")

    @property
    def pid(self) -> int | None:
        return self._pid

    def print(self, data: bytes) -> None:
        if self.code is None:
            self._out.send_nowait(data)

    def exit(self, code: int) -> None:
        if self.code is None:
            self.code = code
            self._out.close()
            self._exited.set()

    def _take(self, data: bytes) -> None:
        self.written += data
        self._line += data
        # Answer each complete line, as a line-reading tool does.
        while b"\n" in self._line:
            line, _, rest = bytes(self._line).partition(b"\n")
            self._line = bytearray(rest)
            self.respond(self, line.decode())

    async def receive(self) -> bytes:
        self.reads.append("eager")
        return await self._out_reader.receive()

    async def receive_joined(self) -> bytes:
        self.reads.append("joined")
        return await self._out_reader.receive()

    async def send(self, data: bytes) -> None:
        await anyio.lowlevel.checkpoint()
        if self.code is not None:
            raise anyio.BrokenResourceError
        self.sends += 1
        self._take(data)

    def try_send(self, data: bytes) -> int:
        written = int(min(len(data), self.room))
        if self.code is not None or not written:
            return 0
        self.try_sends += 1
        self._take(data[:written])
        return written

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.code is not None
        return self.code

    def signal_group(self, signum: int) -> None:
        self.signals.append(signum)
        if signum in (signal.SIGTERM, signal.SIGKILL):
            self.exit(-signum)

    async def aclose(self) -> None:
        self.closed = True
        self._out.close()
        self._out_reader.close()


class FakeTransport(Transport):
    """Hands out fake handles; the test waits on :meth:`spawned` for the n-th."""

    def __init__(self, respond: Responder = echo, *, room: float = math.inf) -> None:
        self.respond = respond
        self.room = room
        self.handles: list[FakeHandle] = []
        self._spawned = anyio.Event()

    def check(self, spec: ToolSpec) -> None:
        pass

    async def spawn(self, spec: ToolSpec, *, instance: int) -> ProcessHandle:
        handle = FakeHandle(1000 + len(self.handles), self.respond, room=self.room)
        self.handles.append(handle)
        self._spawned.set()
        self._spawned = anyio.Event()
        return handle

    async def spawned(self, count: int) -> FakeHandle:
        """Wait until *count* processes were started; return the last."""
        with anyio.fail_after(10):
            while len(self.handles) < count:
                await self._spawned.wait()
        return self.handles[count - 1]


def tool(**fields: object) -> ToolSpec:
    fields.setdefault("ready", r"> $")
    return ToolSpec(name="fake", argv=["fake"], **fields)  # type: ignore[arg-type]


def new_exchange(spec: ToolSpec) -> Exchange:
    log = structlog.get_logger()
    return Exchange(
        spec=spec, index=0, tool="fake", clock=anyio.current_time, limiter=RateLimiter(), log=log
    )


class Owner:
    """The slot's side of the callbacks, recorded."""

    def __init__(self, carry_on: bool = False) -> None:
        self.carry_on_answer = carry_on
        self.replies = 0
        self.interrupts = 0

    def carry_on(self) -> bool:
        self.replies += 1
        return self.carry_on_answer

    def interrupt(self) -> None:
        self.interrupts += 1


async def start(
    spec: ToolSpec, owner: Owner, transport: FakeTransport | None = None, busy: Busy | None = None
) -> tuple[Process, FakeHandle, Exchange]:
    transport = transport or FakeTransport()
    exchange = new_exchange(spec)
    process = await Process.spawn(
        transport,
        spec,
        index=0,
        exchange=exchange,
        log=structlog.get_logger(),
        carry_on=owner.carry_on,
        interrupt=owner.interrupt,
        busy=busy,
    )
    return process, transport.handles[-1], exchange


def write(process: Process, exchange: Exchange, prompt: str) -> Request:
    request = Request(prompt=prompt, key=None, target=None, deadline=None)
    data = exchange.wire(request)
    assert process.try_write(data) == len(data)
    exchange.begin_input()
    exchange.written(request, counted=True)
    return request


async def test_the_reader_hands_a_reply_to_the_task_unless_the_owner_carries_on() -> None:
    spec, owner = tool(), Owner()
    process, _, exchange = await start(spec, owner)
    async with process.watched():
        assert isinstance(await process.next_event(), Frame)  # the start-up prompt
        request = write(process, exchange, "one")
        assert (await request.wait()).text == "ok one"
        # The reply waits in the queue for the owner, which must look before the next prompt.
        assert process.events_pending
        assert not process.writable_now
        event = await process.next_event()
        assert isinstance(event, Frame)
        assert process.writable_now
        assert owner.replies == 1
        owner.carry_on_answer = True
        request = write(process, exchange, "two")
        assert (await request.wait()).text == "ok two"
        process.wake()  # nothing else is queued: the reply went no further than the owner
        assert await process.next_event() is WAKE
        assert owner.replies == 2
    await process.terminate(graceful=False)


async def test_the_reader_reads_joined_with_one_instance_busy_at_most() -> None:
    """With one prompt in flight in the cluster, a reply is best read with its echo; with
    more, as soon as output is readable. The count is the cluster's, kept by its instances."""
    spec, owner, busy = tool(), Owner(), Busy()
    process, handle, exchange = await start(spec, owner, busy=busy)
    async with process.watched():
        await process.next_event()  # the start-up prompt: read with nothing busy
        for count, way in [(1, "joined"), (2, "eager"), (0, "joined"), (8, "eager")]:
            busy.count = count
            before = len(handle.reads)
            request = write(process, exchange, way)
            assert isinstance(await process.next_event(), Frame)
            assert request.result().text == f"ok {way}"
            # The read that took the reply was asked for before the count changed; the one
            # after it, the reader's wait for more, is this count's.
            await anyio.wait_all_tasks_blocked()
            assert handle.reads[before:] == [way]
    assert handle.reads[0] == "joined"
    await process.terminate(graceful=False)


async def test_from_two_busy_on_the_reader_takes_output_where_it_is_read() -> None:
    """With more than one instance busy, output goes through ProcessHandle.receive_into (in
    the loop's callback on asyncio; the fake calls take in the task). A reply the owner does
    not carry on from is queued for its task; with the queue full, the reader waits for room
    and asks the owner again, and no reply is lost or reordered."""
    spec, owner, busy = tool(), Owner(), Busy(count=2)
    process, handle, exchange = await start(spec, owner, busy=busy)
    async with process.watched():
        assert isinstance(await process.next_event(), Frame)  # the start-up prompt
        # One more reply than the queue holds, none of them looked at by the owner's task.
        prompts = [f"p{n}" for n in range(_FRAME_BUFFER + 1)]
        for prompt in prompts:
            request = write(process, exchange, prompt)
            assert (await request.wait()).text == f"ok {prompt}"
        await anyio.wait_all_tasks_blocked()
        # The last one waits with the reader, which asked the owner twice about it.
        assert owner.replies == len(prompts) + 1
        texts = [(await process.next_event()) for _ in prompts]
        assert [frame.text for frame in texts if isinstance(frame, Frame)] == [
            f"ok {prompt}\n" for prompt in prompts
        ]
        assert not process.events_pending
    assert set(handle.reads) == {"eager"}
    await process.terminate(graceful=False)


async def test_the_exit_comes_after_the_output_read_before_it_and_interrupts_the_owner() -> None:
    def last_words(handle: FakeHandle, line: str) -> None:
        handle.print(b"bye\n> ")
        handle.exit(3)

    spec, owner = tool(), Owner()
    process, handle, exchange = await start(spec, owner, FakeTransport(last_words))
    async with process.watched():
        await process.next_event()
        request = write(process, exchange, "quit")
        assert isinstance(await process.next_event(), Frame)
        assert await process.next_event() is EXITED
        assert process.exit_code == 3
        assert owner.interrupts == 1
        assert request.result().text == "bye"
        with process.until_exit() as scope:
            await anyio.sleep_forever()  # cancelled at once: it exited already
        assert scope.cancelled_caught
    assert await process.terminate(graceful=True) == (3, "exited")
    assert handle.signals == [signal.SIGKILL, signal.SIGKILL]  # kill_all: what it left behind
    assert handle.closed


async def test_a_wait_until_exit_ends_when_the_process_dies() -> None:
    spec, owner = tool(), Owner()
    process, handle, _ = await start(spec, owner)
    async with process.watched():
        await process.next_event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(process.wait_exited)
            await anyio.lowlevel.checkpoint()
            handle.exit(-9)
    await process.terminate(graceful=False)
    assert process.exit_code == -9


async def test_a_breakdown_while_idle_interrupts_the_owner() -> None:
    spec, owner = tool(), Owner()
    process, handle, exchange = await start(spec, owner)
    async with process.watched():
        await process.next_event()
        write(process, exchange, "one")
        await process.next_event()
        handle.print(b"again\n> ")  # a reply nobody asked for
        event = await process.next_event()
        assert isinstance(event, Desync)
        assert event.idle
        assert owner.interrupts == 1
        assert exchange.broken is not None
    await process.terminate(graceful=False)


async def test_what_a_fast_write_leaves_waits_for_the_owner_and_blocks_fast_writes() -> None:
    spec, owner = tool(), Owner()
    process, handle, _ = await start(spec, owner, FakeTransport(room=3))
    assert process.writable_now
    assert process.try_write(b"hello\n") == 3
    assert not process.writable_now  # the rest must go first
    handle.room = math.inf
    await process.send_unsent()
    assert process.writable_now
    assert (handle.written, handle.try_sends, handle.sends) == (b"hello\n", 1, 1)
    process.kill()
    assert await process.terminate(graceful=False) == (-signal.SIGKILL, "sigkill")


async def test_a_task_waiting_to_write_blocks_fast_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    # The reader answering a question, say, while the input has no room.
    spec, owner = tool(), Owner()
    process, handle, _ = await start(spec, owner)
    entered, room = anyio.Event(), anyio.Event()

    async def send_when_there_is_room(data: bytes) -> None:
        entered.set()
        await room.wait()
        handle.written += data

    monkeypatch.setattr(handle, "send", send_when_there_is_room)
    async with anyio.create_task_group() as tg:
        tg.start_soon(process.write, b"yes\n")
        await entered.wait()
        assert not process.writable_now
        room.set()
    assert process.writable_now
    assert handle.written == b"yes\n"
    process.kill()
    await process.terminate(graceful=False)


async def test_a_graceful_stop_sends_the_exit_command_then_sigterm() -> None:
    def deaf(handle: FakeHandle, line: str) -> None:
        pass  # ignores even the exit command

    spec, owner = tool(exit_command="/quit", shutdown_grace=0.01), Owner()
    process, handle, _ = await start(spec, owner, FakeTransport(deaf))
    async with process.watched():
        await process.next_event()
    code, how = await process.terminate(graceful=True)
    assert (code, how) == (-signal.SIGTERM, "sigterm")
    assert handle.written == b"/quit\n"
    assert handle.signals[0] == signal.SIGTERM
