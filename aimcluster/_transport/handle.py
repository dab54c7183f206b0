"""The handle on a running local tool: its pipes or pty, read and written without blocking.

Owns the tool's side of the data path (``os.read`` and ``os.write`` on non-blocking fds,
``try_send``), the wait for its exit, and the signals that stop it, which it asks of
:mod:`.containment`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from .._base.natives import loop_natives
from ..abc import ProcessHandle
from .containment import _kill_session, _signal_group
from .loopread import LoopReader, read_chunk

if TYPE_CHECKING:
    from anyio.abc import Process

    from .containment import _Cgroup
    from .spawn import _Child

_READ_SIZE = 65536


class _FdProcess(ProcessHandle):
    """A child whose standard streams are file descriptors of ours: pipes, or a pty's master.

    They are non-blocking and used with ``os.read``/``os.write``. A write is tried first and
    waits with ``anyio.wait_writable`` only when there is no room: a prompt that fits costs one
    system call and no pass of the event loop (a stream wrapper takes a checkpoint on every
    call), on every backend. A read waits first: on asyncio through a :class:`.LoopReader`,
    which keeps the descriptor registered with the loop, elsewhere with
    ``anyio.wait_readable`` (see :meth:`_read`), except after output that made the reader
    write the next input (see :meth:`_take_in_task`).
    """

    __slots__ = (
        "_cgroup",
        "_checkpoint",
        "_closed",
        "_errors",
        "_input",
        "_output",
        "_process",
        "_readers",
        "_sent",
    )

    def __init__(
        self,
        started: tuple[Process | _Child, _Cgroup | None],
        *,
        output: int,
        input: int | None,
        errors: int | None,
    ) -> None:
        self._process, self._cgroup = started
        self._output = output
        # None for a one-shot tool, whose stdin is /dev/null; a pty's is its output's fd.
        self._input = input
        # None when stderr is merged into the output (at the OS level, in order).
        self._errors = errors
        self._closed = False
        # Writes try_send made: how the trio reader sees that take() wrote the next input.
        self._sent = 0
        # On asyncio (uvloop included), the readers of the output and of a separate stderr.
        # Made here, in the event loop the handle is used in.
        self._readers: dict[int, LoopReader] | None = None
        token = anyio.lowlevel.current_token()
        # The loop's own pass, for the trio reader's read after a write (_take_in_task).
        self._checkpoint = loop_natives(token).checkpoint
        loop = token.native_token
        if isinstance(loop, asyncio.AbstractEventLoop):
            self._readers = {
                fd: LoopReader(loop, fd, _READ_SIZE) for fd in (output, errors) if fd is not None
            }

    @property
    def pid(self) -> int:
        return self._process.pid

    # receive() and receive_joined() return the reading coroutine itself, with no coroutine
    # of their own around it: one frame less at every wake-up of the reader.

    def receive(self) -> Coroutine[Any, Any, bytes]:
        return self._read(self._output, eager=True)

    def receive_joined(self) -> Coroutine[Any, Any, bytes]:
        return self._read(self._output, eager=False)

    def receive_into(self, take: Callable[[bytes], bool]) -> Coroutine[Any, Any, None]:
        readers = self._readers
        if readers is not None:
            return readers[self._output].receive_into(take)
        return self._take_in_task(self._output, take)

    async def _take_in_task(self, fd: int, take: Callable[[bytes], bool]) -> None:
        # trio: take runs in the task. Output that had take write the next input (the reader
        # carrying on with a queued prompt) is followed by that input's answer, after the
        # child's turn: give the loop a pass and read what is there, as trio's own streams
        # read, and wait only if nothing is. Otherwise wait first, as _read says. Measured on
        # bench_throughput.py (a queue of prompts, the reader writing each next one): 0.84-0.85x
        # raw at 8 instances and 0.90-0.95x at 64, from 0.70-0.75x waiting first; the closed
        # loop, where the reader writes nothing, the same.
        data = await self._wait_and_read(fd)
        while True:
            sent = self._sent
            if take(data):
                return
            maybe: bytes | None = None
            if self._sent != sent:
                await self._checkpoint()
                if self._closed:
                    raise anyio.EndOfStream
                maybe = read_chunk(fd, _READ_SIZE)
            data = await self._wait_and_read(fd) if maybe is None else maybe

    async def receive_stderr(self) -> bytes:
        if self._errors is None:
            raise anyio.EndOfStream
        return await self._read(self._errors, eager=True)

    def _read(self, fd: int, *, eager: bool) -> Coroutine[Any, Any, bytes]:
        # Wait, then read. When the reader comes back for more, the next output is rarely in
        # yet (the child needs a wake-up to answer): a read tried first mostly failed with
        # EAGAIN or, through a pty, took only the echo of the prompt just written, and cost
        # 4-8% more CPU per call from 8 callers on (benchmarks/README.md). Waiting first
        # also yields on every read, so that a flood cannot keep the other tasks from running.
        readers = self._readers
        if readers is not None:
            return readers[fd].receive(eager=eager)
        return self._wait_and_read(fd)

    async def _wait_and_read(self, fd: int) -> bytes:
        # trio (one-shot epoll registrations, re-armed at each wait): wait, and read a pass
        # after the wake-up, whichever way the caller asked.
        while True:
            if self._closed:
                raise anyio.EndOfStream
            try:
                await anyio.wait_readable(fd)
            except anyio.ClosedResourceError:
                raise anyio.EndOfStream from None
            if self._closed:
                # Closed after the fd turned readable but before this task ran: notify_closing
                # found no waiter to wake, and the fd number may belong to another file now.
                raise anyio.EndOfStream
            data = read_chunk(fd, _READ_SIZE)
            if data is not None:
                return data

    async def send(self, data: bytes) -> None:
        fd = self._input
        if fd is None:
            raise anyio.BrokenResourceError
        view = memoryview(data)
        while view:
            if self._closed:
                raise anyio.BrokenResourceError
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                try:
                    await anyio.wait_writable(fd)
                except anyio.ClosedResourceError:
                    raise anyio.BrokenResourceError from None
                continue
            except OSError as exc:  # EPIPE: it closed its input or exited
                raise anyio.BrokenResourceError from exc
            view = view[written:]

    def try_send(self, data: bytes) -> int:
        fd = self._input
        if fd is None or self._closed:
            return 0
        try:
            written = os.write(fd, data)
        except OSError:
            return 0  # full, or broken (then send() reports it)
        self._sent += 1
        return written

    async def wait(self) -> int:
        return await self._process.wait()

    def signal_group(self, signum: int) -> None:
        _signal_group(self._process.pid, signum)

    def kill_all(self) -> None:
        if self._cgroup is not None:
            self._cgroup.kill()
        # Also where the cgroup took them all: the tool may have failed to join it.
        _kill_session(self._process.pid)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            for reader in (self._readers or {}).values():
                reader.close()  # out of the loop before the descriptor is closed
            for fd in {self._output, self._input, self._errors} - {None}:
                assert fd is not None
                # Wakes a task waiting on it (with ClosedResourceError) before it is reused.
                anyio.notify_closing(fd)
                os.close(fd)
        await self._process.aclose()
        if self._cgroup is not None:
            cgroup, self._cgroup = self._cgroup, None
            await cgroup.remove()
