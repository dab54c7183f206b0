"""Fan-out: the DOC_ID demo job over 218 files with 1, 2, 4 and 8 mock agents.

Each file is one item: on an instance of its own for the whole item, send
``/add FILE``, ``Add a DOC_ID header to FILE`` and ``/drop FILE``. The mock
agent answers commands at once and free text after ``--delay`` seconds, and
really edits the file. All items start at once and wait for a free instance.

The ideal wall time is items x delay / instances (one delay per free-text
prompt, instances never idle, zero overhead); we report how far above it each
contender lands. raw anyio drives the same mock agent (its script, from the
working tree) through a pool of free children; ours leases instances with
``cluster.lease()`` from ``launch_cluster(aimcluster.tools.mock(delay=...))``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from _harness import (
    ROOT,
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
    launch_ours,
    pair,
    raw_fleet,
    run_backends,
    stat,
)

MOCK_AGENT = ROOT / "aimcluster" / "mock_agent.py"
DOC_ID_HEADER = "# DOC_ID: "

Job = Callable[[Sequence[Path]], Awaitable[None]]


def make_files(directory: Path, count: int) -> list[Path]:
    paths = [directory / f"module_{index:03d}.py" for index in range(count)]
    for index, path in enumerate(paths):
        path.write_text(f'"""Module {index} of the demo job."""\n\nVALUE = {index}\n')
    return paths


def item_prompts(path: Path) -> list[str]:
    return [f"/add {path}", f"Add a DOC_ID header to {path}", f"/drop {path}"]


def check_edited(paths: Sequence[Path]) -> None:
    # Not a timing check: a fast job that edited nothing did not do the job.
    missed = [path.name for path in paths if not path.read_text().startswith(DOC_ID_HEADER)]
    if missed:
        raise RuntimeError(f"{len(missed)} files have no DOC_ID header, e.g. {missed[:3]}")


def fanout_step(job: Job, files: int) -> Step:
    async def step() -> Samples:
        with tempfile.TemporaryDirectory(prefix="aimcluster-fanout-") as directory:
            paths = make_files(Path(directory), files)
            start = time.perf_counter()
            await job(paths)
            elapsed = time.perf_counter() - start
            check_edited(paths)
        return {"wall": [elapsed]}

    return step


async def raw_job(children: Sequence[RawChild], paths: Sequence[Path]) -> None:
    # A pool of free children: an item takes one, and puts it back when done.
    give_back, take = anyio.create_memory_object_stream[RawChild](len(children))
    for child in children:
        give_back.send_nowait(child)

    async def run_item(path: Path) -> None:
        child = await take.receive()
        try:
            for prompt in item_prompts(path):
                await child.request(prompt)
        finally:
            give_back.send_nowait(child)

    with give_back, take:
        async with anyio.create_task_group() as tg:
            for path in paths:
                tg.start_soon(run_item, path)


async def ours_job(cluster: Any, count: int, paths: Sequence[Path]) -> None:
    # The limiter keeps waiting items out of the cluster's way, whether or not
    # lease() queues by itself.
    limiter = anyio.CapacityLimiter(count)

    async def run_item(path: Path) -> None:
        async with limiter, cluster.lease() as session:
            for prompt in item_prompts(path):
                await session.send(prompt)

    async with anyio.create_task_group() as tg:
        for path in paths:
            tg.start_soon(run_item, path)


def raw_contender(count: int, delay: float, files: int) -> Contender:
    argv = [sys.executable, str(MOCK_AGENT), "--delay", str(delay)]

    @asynccontextmanager
    async def open_() -> AsyncIterator[Step]:
        async with raw_fleet(argv, count) as children:
            yield fanout_step(partial(raw_job, children), files)

    return open_


def ours_contender(count: int, delay: float, files: int) -> Contender:
    spec = importlib.import_module("aimcluster.tools").mock(delay=delay)

    @asynccontextmanager
    async def open_() -> AsyncIterator[Step]:
        async with launch_ours(spec, count) as cluster:
            yield fanout_step(partial(ours_job, cluster, count), files)

    return open_


async def measure(args: argparse.Namespace, backend: str) -> Cases:
    cases = []
    for count in args.instances:
        contenders = pair(
            args,
            raw_contender(count, args.delay, args.files),
            partial(ours_contender, count, args.delay, args.files),
        )
        # No warm-up round: the agent's latency dominates, and a round is long.
        results = await alternate(contenders, rounds=args.rounds, warmup=0)
        for samples in results.values():
            samples["ideal"] = [args.files * args.delay / count]
        cases.append((f"{backend} N={count}", results))
    return cases


def over_ideal(samples: Samples) -> float:
    return stat("wall")(samples) / samples["ideal"][0]


def collect(args: argparse.Namespace) -> list[Report]:
    if not MOCK_AGENT.is_file():
        raise SystemExit(f"the raw half drives {MOCK_AGENT}, which does not exist")
    report = Report(
        title=f"Fan-out: DOC_ID job over {args.files} files, mock agent delay {args.delay} s",
        columns=[
            Column("wall s", stat("wall"), "{:.3f}"),
            Column("ideal s", stat("ideal"), "{:.3f}"),
            Column("wall ÷ ideal", over_ideal, "{:.3f}"),
        ],
        ratio=Column("wall ÷ raw", stat("wall"), "{:.3f}"),
        notes=[
            "ideal = files x delay / instances; whole items per instance make "
            "ceil(files / instances) x delay the real floor (+2.8% at N=8).",
        ],
    )
    return run_backends(report, args, measure)


BENCHMARK = Benchmark(
    description=__doc__ or "",
    options=[
        Option("--instances", [1, 2, 4, 8], [1, 2, 4, 8], "fleet sizes"),
        Option("--files", 218, 218, "files (items) in the job"),
        Option("--delay", 0.05, 0.02, "mock agent latency per free-text prompt, seconds"),
        Option("--rounds", 2, 1, "alternating rounds"),
    ],
    collect=collect,
    # The job's time is the agent's latency, not the event loop's: one backend
    # by default (--backend all for the others) keeps run_all within minutes.
    default_backend="asyncio",
)

if __name__ == "__main__":
    BENCHMARK.main()
