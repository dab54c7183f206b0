"""Closed loop: N caller tasks, each awaiting its reply before it sends the next prompt.

The most common use in an async app: N tasks each ``await cluster.send(...)`` in a
loop on an N-instance cluster of the child. raw anyio gives each of its N tasks a
child of its own to write a line to and read the reply from, the same raw code as
the round trip benchmark (pipes, or a PTY read with ``wait_readable``). raw +
reader is the shape aimcluster's design mandates, at its cheapest: each child has
a long-lived reader task of its own, reading to the prompt with that same code and
handing each reply to a memory stream; the caller writes its line and awaits the
reply from the stream. All three fleets stay up for the whole run and take turns,
one batch of calls each per round. Figures: the latency of each call (p50, p95)
and the calls per second over the whole batch, from the first call to the last
caller's last reply; each as a ratio to raw, and ours also to raw + reader.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from _harness import (
    OURS,
    RAW,
    Benchmark,
    Cases,
    Column,
    Contender,
    Option,
    RawChild,
    Report,
    Request,
    Samples,
    Step,
    alternate,
    child_argv,
    child_spec,
    count_of,
    launch_ours,
    pair,
    raw_fleet,
    run_backends,
    stat,
)

TRANSPORTS = ("pipe", "pty")
READER = "raw + reader"


def make_prompts(callers: int, calls: int) -> list[list[str]]:
    """Each caller's prompts: ``calls`` in all, shared out evenly (rounded up)."""
    per_caller = math.ceil(calls / callers)
    return [[f"c{caller} {index}" for index in range(per_caller)] for caller in range(callers)]


def answers(prompt: str, reply: str) -> bool:
    # The raw reply still holds the prompt (and, through a PTY, its echo and \r):
    # the answer must be a line of its own, not just start like one ("c1 1" / "c1 10").
    return f"ok {prompt}" in (line.rstrip("\r") for line in reply.splitlines())


async def call_in_loop(
    request: Request, prompts: Sequence[str], latencies: list[float], replies: list[str]
) -> None:
    for prompt in prompts:
        start = time.perf_counter_ns()
        reply = await request(prompt)
        latencies.append(time.perf_counter_ns() - start)
        replies.append(reply)


def closedloop_step(requests: Sequence[Request], calls: int) -> Step:
    """One caller task per request function (a caller's own child, or the one cluster)."""
    prompts = make_prompts(len(requests), calls)

    async def step() -> Samples:
        latencies: list[float] = []
        replies: list[list[str]] = [[] for _ in requests]
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for request, own_prompts, own_replies in zip(requests, prompts, replies, strict=True):
                tg.start_soon(call_in_loop, request, own_prompts, latencies, own_replies)
        elapsed = time.perf_counter() - start
        # Not a timing check: a fast answer to the wrong prompt would be no answer.
        for own_prompts, own_replies in zip(prompts, replies, strict=True):
            for prompt, reply in zip(own_prompts, own_replies, strict=True):
                if not answers(prompt, reply):
                    raise RuntimeError(f"reply {reply!r} does not answer prompt {prompt!r}")
        return {"latency": latencies, "rate": [len(latencies) / elapsed]}

    return step


def raw_contender(callers: int, calls: int, *, pty: bool) -> Contender:
    @asynccontextmanager
    async def open_() -> AsyncIterator[Step]:
        async with raw_fleet(child_argv(), callers, pty=pty) as children:
            yield closedloop_step([child.request for child in children], calls)

    return open_


async def read_replies(child: RawChild, replies: MemoryObjectSendStream[str]) -> None:
    """A child's reader: every reply, read to its prompt whatever the callers do, handed on."""
    async with replies:
        while True:
            await replies.send((await child.read_prompt()).decode())


def queued_request(child: RawChild, replies: MemoryObjectReceiveStream[str]) -> Request:
    """The caller's half: write the line itself, then await the reply its reader hands on."""

    async def request(line: str) -> str:
        await child.write_line(line)
        return await replies.receive()

    return request


def reader_contender(callers: int, calls: int, *, pty: bool) -> Contender:
    """raw, with the reading moved to a task per child: what a reader task and a queue cost."""

    @asynccontextmanager
    async def open_() -> AsyncIterator[Step]:
        async with (
            raw_fleet(child_argv(), callers, pty=pty) as children,
            anyio.create_task_group() as tg,
        ):
            queues: list[MemoryObjectReceiveStream[str]] = []
            try:
                for child in children:
                    send, receive = anyio.create_memory_object_stream[str](1)
                    queues.append(receive)
                    tg.start_soon(read_replies, child, send)
                yield closedloop_step(
                    [queued_request(c, q) for c, q in zip(children, queues, strict=True)], calls
                )
            finally:
                # The readers wait on their children for ever: stop them before the
                # fleet closes the children under them.
                tg.cancel_scope.cancel()
                for receive in queues:
                    receive.close()

    return open_


def ours_contender(callers: int, calls: int, *, pty: bool) -> Contender:
    @asynccontextmanager
    async def open_() -> AsyncIterator[Step]:
        async with launch_ours(child_spec(pty=pty), callers) as cluster:

            async def request(line: str) -> str:
                return str((await cluster.send(line)).text)

            yield closedloop_step([request] * callers, calls)

    return open_


async def measure(args: argparse.Namespace, backend: str) -> Cases:
    cases = []
    for transport in TRANSPORTS:
        pty = transport == "pty"
        for callers in args.callers:
            both = pair(
                args,
                raw_contender(callers, args.calls, pty=pty),
                partial(ours_contender, callers, args.calls, pty=pty),
            )
            # raw + reader sits between the two: the order of the rows, and of the turns.
            contenders = {RAW: both[RAW], READER: reader_contender(callers, args.calls, pty=pty)}
            if OURS in both:
                contenders[OURS] = both[OURS]
            case = f"{backend} {transport} N={callers}"
            cases.append((case, await alternate(contenders, rounds=args.rounds)))
    return cases


def new_report(calls: int) -> Report:
    """The closed loop's table, empty: its columns, ratios and notes."""
    return Report(
        title=f"Closed loop (N callers awaiting send in a loop, N instances, {calls} calls)",
        columns=[
            Column("n", count_of("latency"), "{:.0f}"),
            Column("p50 µs", stat("latency", 50, 1e-3)),
            Column("p95 µs", stat("latency", 95, 1e-3)),
            Column("calls/s", stat("rate"), "{:,.0f}"),
        ],
        ratio=Column("p50 ÷ raw", stat("latency", 50), "{:.2f}"),
        more_ratios=[
            Column("p95 ÷ raw", stat("latency", 95), "{:.2f}"),
            Column("calls/s ÷ raw", stat("rate"), "{:.2f}"),
        ],
        more_baselines={
            READER: [
                Column("p50 ÷ reader", stat("latency", 50), "{:.2f}"),
                Column("p95 ÷ reader", stat("latency", 95), "{:.2f}"),
                Column("calls/s ÷ reader", stat("rate"), "{:.2f}"),
            ]
        },
        notes=[
            "calls/s: the median over rounds of the calls in a batch ÷ its wall time.",
            f"{READER}: raw with a reader task per child handing replies to a memory stream"
            " (buffer 1); the caller writes, then awaits the stream. Its ÷ raw is what that"
            " shape costs; ÷ reader compares ours with it.",
        ],
    )


def collect(args: argparse.Namespace) -> list[Report]:
    report = new_report(args.calls)
    return run_backends(report, args, measure)


BENCHMARK = Benchmark(
    description=__doc__ or "",
    options=[
        Option("--callers", [1, 8, 64], [1, 8, 64], "caller tasks (and instances)"),
        Option("--calls", 4000, 500, "calls per batch, shared out among the callers"),
        Option("--rounds", 5, 3, "alternating rounds kept, after one warm-up round"),
    ],
    collect=collect,
)

if __name__ == "__main__":
    BENCHMARK.main()
