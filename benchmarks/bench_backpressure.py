"""Back-pressure: N concurrent sends to 4 mock agents through a queue of ``max_pending=4``.

With a small ``max_pending`` nearly every send waits for room in the queue. The
baseline is the same cluster with room for all N (``max_pending=N``: nobody
waits); the figure is how much longer the bounded queue takes. Waiting senders
should cost a wake-up each, so the ratio should stay flat as N grows (it grew
with N while every freed slot woke every waiting sender).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from _harness import (
    Benchmark,
    Cases,
    Column,
    Contender,
    Option,
    Report,
    Samples,
    Step,
    aimcluster_module,
    alternate,
    run_backends,
    stat,
)

INSTANCES = 4
UNBOUNDED = "max_pending=N"
BOUNDED = "max_pending=4"


def sends_step(cluster: Any, sends: int) -> Step:
    prompts = [f"p{index}" for index in range(sends)]

    async def step() -> Samples:
        replies = [""] * sends

        async def send(index: int) -> None:
            replies[index] = (await cluster.send(prompts[index])).text

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for index in range(sends):
                tg.start_soon(send, index)
        elapsed = time.perf_counter() - start
        # Not a timing check: a fast answer to the wrong prompt would be no answer.
        for prompt, reply in zip(prompts, replies, strict=True):
            if reply != f"echo: {prompt}":
                raise RuntimeError(f"reply {reply!r} does not answer prompt {prompt!r}")
        return {"wall": [elapsed]}

    return step


def contender(sends: int, max_pending: int) -> Contender:
    @asynccontextmanager
    async def open_() -> AsyncIterator[Step]:
        aimcluster = aimcluster_module()
        async with aimcluster.launch_cluster(
            aimcluster.tools.mock(), count=INSTANCES, max_pending=max_pending
        ) as cluster:
            yield sends_step(cluster, sends)

    return open_


async def measure(args: argparse.Namespace, backend: str) -> Cases:
    cases = []
    for sends in args.sends:
        contenders = {UNBOUNDED: contender(sends, sends), BOUNDED: contender(sends, 4)}
        results = await alternate(contenders, rounds=args.rounds)
        cases.append((f"{backend} N={sends:,}", results))
    return cases


def collect(args: argparse.Namespace) -> list[Report]:
    if args.baseline_only:
        raise SystemExit("both halves of this benchmark are aimcluster: no --baseline-only")
    report = Report(
        title=f"Back-pressure: N concurrent sends, {INSTANCES} mock agents",
        columns=[
            Column("median s", stat("wall"), "{:.3f}"),
            Column("max s", stat("wall", 100), "{:.3f}"),
        ],
        ratio=Column("wall ÷ unbounded", stat("wall"), "{:.2f}"),
        baseline=UNBOUNDED,
    )
    return run_backends(report, args, measure)


BENCHMARK = Benchmark(
    description=__doc__ or "",
    options=[
        Option("--sends", [1000, 2000, 4000, 10000], [1000, 4000], "concurrent sends"),
        Option("--rounds", 3, 1, "alternating rounds kept, after one warm-up round"),
    ],
    collect=collect,
)

if __name__ == "__main__":
    BENCHMARK.main()
