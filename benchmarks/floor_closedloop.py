"""The closed loop's floor: raw + reader plus only the work every prompt of aimcluster must do.

``bench_closedloop``'s ``raw + reader`` is the design's shape with no library code: a reader
task per child, and a caller that writes its line and awaits the reply the reader hands on.
``floor`` is that shape plus the least of aimcluster's own work per prompt, its real code and
nothing else:

- the caller makes a ``Request``, checks the prompt, has the child's ``Exchange`` encode it and
  book it as written, writes it, and awaits the request on the loop's own event, with the
  loop's own clock, as the cluster does (with one pass of the loop first when
  it is the only caller, where ``Cluster.send`` gives one: on trio, and on asyncio and uvloop
  through pipes);
- the reader reads as aimcluster's does, from plain descriptors (a PTY's master, or pipes
  with no anyio stream on them): on asyncio and uvloop through the engine's ``LoopReader``,
  joined with one caller, and from 8 on in the loop's callback, where it also feeds the
  exchange (``receive_into``); on trio with ``wait_readable`` and ``os.read``. It feeds each
  chunk to the ``Exchange``, which frames the reply (a PTY's echo skipped), builds the
  ``Reply`` and resolves the request; with one caller it then gives the loop a pass, as
  aimcluster's reader does with at most one instance busy.

No routing, queue, supervision, instance state, metrics or restarts. Where ``floor`` is past
1.3x raw, so is any implementation of this design that frames its replies and reads the way
aimcluster does. The contenders run in turns on one case; figures as in ``bench_closedloop``.

``--loop-reader`` (asyncio and uvloop, PTY) adds ``floor, loop reader``: the same floor,
reading the PTY through the event loop's own read transport (``loop.connect_read_pipe`` and
an ``asyncio.StreamReader``: the descriptor stays registered, and the loop reads it as soon
as it is readable), the experiment that led to ``LoopReader``. On pipes, asyncio's raw
streams are that transport already.

    python benchmarks/floor_closedloop.py --backend uvloop --transport pipe --callers 8
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import structlog

import bench_closedloop
from _harness import (
    OURS,
    RAW,
    Contender,
    RawChild,
    Report,
    Step,
    alternate,
    child_argv,
    child_spec,
    configure_logs,
    print_report,
    raise_nofile_limit,
    raw_fleet,
)
from cpu_closedloop import BACKENDS

FLOOR = "floor"
LOOP_FLOOR = "floor, loop reader"


class _FloorChild:
    """One child, its exchange, and the caller's and the reader's halves of a prompt."""

    def __init__(
        self,
        child: RawChild,
        spec: object,
        callers: list[int],
        pass_first: bool,
        receive: Callable[[], Awaitable[bytes]] | None = None,
        receive_into: Callable[[Callable[[bytes], bool]], Awaitable[None]] | None = None,
    ) -> None:
        # Private modules on purpose: the floor is the engine's own per-prompt code.
        from aimcluster._base.natives import loop_natives
        from aimcluster._base.ratelimit import RateLimiter
        from aimcluster._base.request import Request
        from aimcluster._core.pool import check_prompt
        from aimcluster._slot.exchange import Exchange

        self._request_type, self._check = Request, check_prompt
        # The clock and the event the cluster uses, found once, as it does.
        natives = loop_natives(anyio.lowlevel.current_token())
        self._new_event, self._new_future = natives.new_event, natives.new_future
        self._checkpoint = natives.checkpoint
        log = structlog.get_logger("aimcluster").bind()
        self._exchange = Exchange(
            spec=spec,  # type: ignore[arg-type]
            index=0,
            tool="echo",
            clock=natives.clock,
            limiter=RateLimiter(),
            log=log,
            failover=None,
        )
        self._exchange.reset(log)
        self._child, self._spec = child, spec
        self._receive = child.receive if receive is None else receive
        self._receive_into = receive_into
        self._callers, self._pass = callers, pass_first  # callers awaiting, shared by the fleet

    async def request(self, line: str) -> str:
        request = self._request_type(prompt=line, key=None, target=None, deadline=None)
        self._check(self._spec, line)  # type: ignore[arg-type]
        exchange = self._exchange
        data = exchange.wire(request)
        exchange.begin_input()
        exchange.written(request, counted=True)
        await self._child.send(data)
        self._callers[0] += 1
        try:
            if self._pass and self._callers[0] == 1:
                await self._checkpoint()
            return str((await request.wait(self._new_event, self._new_future)).text)
        finally:
            self._callers[0] -= 1

    def _take(self, data: bytes) -> bool:
        self._exchange.feed(data)
        return False  # nothing for the task, ever

    async def read(self, alone: bool) -> None:
        if self._receive_into is not None:
            await self._receive_into(self._take)  # until cancelled
            return
        while True:
            # A pass after a reply, as aimcluster's reader gives one with at most one instance
            # busy: here, with one caller.
            if self._exchange.feed(await self._receive()) and alone:
                await self._checkpoint()


async def loop_reader(fd: int) -> tuple[Callable[[], Awaitable[bytes]], asyncio.BaseTransport]:
    """Read *fd* (a copy of it) through the running asyncio loop's read-pipe transport."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(fd), "rb", buffering=0)
    )

    async def receive() -> bytes:
        data = await reader.read(65536)
        if not data:
            raise anyio.EndOfStream
        return data

    return receive, transport


def floor_contender(callers: int, calls: int, *, pty: bool, via_loop: bool = False) -> Contender:
    @asynccontextmanager
    async def open_() -> AsyncIterator[Step]:
        spec = child_spec(pty=pty)
        # The engine's own test, so that the floor takes the pass exactly where send does.
        from aimcluster._base.natives import is_trio
        from aimcluster._transport.loopread import LoopReader

        loop = anyio.lowlevel.current_token().native_token
        pass_first = is_trio(loop) or not pty
        awaiting = [0]
        async with (
            # Pipes as aimcluster's: plain descriptors, read its way, not anyio's streams.
            raw_fleet(child_argv(), callers, pty=pty, fd_pipes=not via_loop) as children,
            anyio.create_task_group() as tg,
        ):
            floors, transports, readers = [], [], []
            for child in children:
                receive = receive_into = None
                if via_loop:
                    assert child.pty_fd is not None
                    receive, transport = await loop_reader(child.pty_fd)
                    transports.append(transport)
                elif isinstance(loop, asyncio.AbstractEventLoop):
                    assert child.read_fd is not None
                    reader = LoopReader(loop, child.read_fd, 65536)
                    readers.append(reader)
                    # aimcluster reads joined with at most one instance busy, and takes
                    # the output in the loop's callback with more.
                    if callers > 1:
                        receive_into = reader.receive_into
                    else:
                        receive = functools.partial(reader.receive, eager=False)
                floors.append(_FloorChild(child, spec, awaiting, pass_first, receive, receive_into))
            try:
                for floor in floors:
                    tg.start_soon(floor.read, callers == 1)
                yield bench_closedloop.closedloop_step([f.request for f in floors], calls)
            finally:
                # The readers wait on their children for ever: stop them before the fleet
                # closes the children under them.
                tg.cancel_scope.cancel()
                for transport in transports:
                    transport.close()
                for reader in readers:
                    reader.close()

    return open_


async def measure(args: argparse.Namespace) -> Report:
    pty = args.transport == "pty"
    n, calls = args.callers, args.calls
    contenders = {
        RAW: bench_closedloop.raw_contender(n, calls, pty=pty),
        bench_closedloop.READER: bench_closedloop.reader_contender(n, calls, pty=pty),
        FLOOR: floor_contender(n, calls, pty=pty),
    }
    if args.loop_reader:
        if not pty or args.backend == "trio":
            raise SystemExit("--loop-reader: asyncio or uvloop, through a PTY")
        contenders[LOOP_FLOOR] = floor_contender(n, calls, pty=pty, via_loop=True)
    contenders[OURS] = bench_closedloop.ours_contender(n, calls, pty=pty)
    report = bench_closedloop.new_report(calls)
    report.title = f"Closed loop's floor ({calls} calls a batch)"
    report.notes.append(
        f"{FLOOR}: {bench_closedloop.READER} plus aimcluster's least work per prompt (the"
        " request, its check, the exchange's turn); no routing, queue or supervision."
    )
    case = f"{args.backend} {args.transport} N={n}"
    report.add(case, await alternate(contenders, rounds=args.rounds))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="trio")
    parser.add_argument("--transport", choices=bench_closedloop.TRANSPORTS, default="pty")
    parser.add_argument("--callers", type=int, default=1, help="caller tasks (and children)")
    parser.add_argument("--calls", type=int, default=4000, help="calls per batch")
    parser.add_argument("--rounds", type=int, default=5, help="rounds kept, after a warm-up")
    parser.add_argument(
        "--loop-reader", action="store_true", help="add the floor read by the loop's transport"
    )
    args = parser.parse_args()
    raise_nofile_limit()
    configure_logs("warning")
    backend, options = BACKENDS[args.backend]
    print_report(anyio.run(measure, args, backend=backend, backend_options=options))


if __name__ == "__main__":
    main()
