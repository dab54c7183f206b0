"""Throughput: thousands of prompts through a fleet of N children, all at once.

raw anyio multiplexes N children with one task per child pulling prompts from a
shared queue; ours is ``cluster.map(prompts)`` on an N-instance cluster of the
same child. Both fleets stay up for the whole run and take turns, one batch of
prompts each per round; the figure is messages per second over a batch.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial

import anyio

from _harness import (
    Benchmark,
    Cases,
    Column,
    Contender,
    Option,
    RawChild,
    Report,
    Samples,
    Step,
    alternate,
    child_argv,
    child_spec,
    launch_ours,
    pair,
    raw_fleet,
    run_backends,
    stat,
)


def make_prompts(count: int) -> list[str]:
    return [f"prompt {index}" for index in range(count)]


def check_replies(prompts: Sequence[str], replies: Sequence[str]) -> None:
    # Not a timing check: a fast answer to the wrong prompt would be no answer.
    for prompt, reply in zip(prompts, replies, strict=True):
        if f"ok {prompt}" not in reply:
            raise RuntimeError(f"reply {reply!r} does not answer prompt {prompt!r}")


async def raw_map(children: Sequence[RawChild], prompts: Sequence[str]) -> list[str]:
    """Every prompt answered by whichever child is free, results in prompt order."""
    replies = [""] * len(prompts)
    send, receive = anyio.create_memory_object_stream[tuple[int, str]](len(prompts))
    with send:
        for item in enumerate(prompts):
            send.send_nowait(item)

    async def work(child: RawChild) -> None:
        async for index, prompt in receive:
            replies[index] = await child.request(prompt)

    with receive:
        async with anyio.create_task_group() as tg:
            for child in children:
                tg.start_soon(work, child)
    return replies


def throughput_step(run_map: Callable[[list[str]], Awaitable[Sequence[str]]], batch: int) -> Step:
    prompts = make_prompts(batch)

    async def step() -> Samples:
        start = time.perf_counter()
        replies = await run_map(prompts)
        elapsed = time.perf_counter() - start
        check_replies(prompts, replies)
        return {"rate": [batch / elapsed]}

    return step


def raw_contender(count: int, batch: int) -> Contender:
    @asynccontextmanager
    async def open_() -> AsyncIterator[Step]:
        async with raw_fleet(child_argv(), count) as children:
            yield throughput_step(partial(raw_map, children), batch)

    return open_


def ours_contender(count: int, batch: int) -> Contender:
    @asynccontextmanager
    async def open_() -> AsyncIterator[Step]:
        async with launch_ours(child_spec(), count) as cluster:

            async def run_map(prompts: list[str]) -> list[str]:
                return [reply.text for reply in await cluster.map(prompts)]

            yield throughput_step(run_map, batch)

    return open_


async def measure(args: argparse.Namespace, backend: str) -> Cases:
    cases = []
    for count in args.instances:
        contenders = pair(
            args,
            raw_contender(count, args.prompts),
            partial(ours_contender, count, args.prompts),
        )
        cases.append((f"{backend} N={count}", await alternate(contenders, rounds=args.rounds)))
    return cases


def collect(args: argparse.Namespace) -> list[Report]:
    report = Report(
        title=f"Throughput ({args.prompts} prompts per batch, N instances)",
        columns=[
            Column("median msg/s", stat("rate"), "{:,.0f}"),
            Column("min msg/s", stat("rate", 0), "{:,.0f}"),
        ],
        ratio=Column("msg/s ÷ raw", stat("rate"), "{:.2f}"),
    )
    return run_backends(report, args, measure)


BENCHMARK = Benchmark(
    description=__doc__ or "",
    options=[
        Option("--instances", [8, 64], [8, 64], "fleet sizes"),
        Option("--prompts", 5000, 1000, "prompts per batch"),
        Option("--rounds", 5, 3, "alternating rounds kept, after one warm-up round"),
    ],
    collect=collect,
)

if __name__ == "__main__":
    BENCHMARK.main()
