"""Launch: N children from nothing to all showing their first prompt.

raw anyio spawns every child with ``anyio.open_process`` in one task group, each
task reading until the first prompt; ours is ``launch_cluster(spec, count=N)``,
which returns once every instance is ready. While the fleet idles we also take
the parent's memory per instance: the VmRSS growth since just before the
launch, divided by N, in a fresh interpreter. Every round starts and stops its
own fleet, and checks that no child outlived it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from functools import partial

import anyio

from _harness import (
    OURS,
    RAW,
    Benchmark,
    Cases,
    Column,
    Contender,
    Option,
    Report,
    Samples,
    alternate,
    child_argv,
    child_spec,
    launch_ours,
    pair,
    prepare_process,
    raw_fleet,
    reap_leftovers,
    release_memory,
    rss_kib,
    run_backends,
    run_on,
    stat,
)

# One memory measurement, printed: bench_launch.py --probe-memory CONTENDER N BACKEND LOG_LEVEL
PROBE_FLAG = "--probe-memory"

FleetOpener = Callable[[], AbstractAsyncContextManager[object]]


def fleet_opener(contender: str, count: int) -> FleetOpener:
    if contender == RAW:
        return partial(raw_fleet, child_argv(), count)
    return partial(launch_ours, child_spec(), count)


async def launch_once(contender: str, count: int) -> Samples:
    start = time.perf_counter()
    async with fleet_opener(contender, count)():
        elapsed = time.perf_counter() - start
    # A child left behind would skew the next round.
    reap_leftovers("a launch round")
    return {"seconds": [elapsed]}


def launch_contender(contender: str, count: int) -> Contender:
    # Nothing stays open between rounds: each step is a whole launch.
    step = partial(launch_once, contender, count)
    return lambda: nullcontext(step)


async def memory_per_instance(contender: str, count: int) -> float:
    """KiB of VmRSS this process grows by, per instance, from nothing to N idle instances."""
    # One instance first, so imports and one-time caches are not charged to the fleet.
    async with fleet_opener(contender, 1)():
        pass
    release_memory()
    before = rss_kib()
    async with fleet_opener(contender, count)():
        return (rss_kib() - before) / count


async def probe_memory(args: argparse.Namespace, contender: str, count: int, backend: str) -> float:
    # In a fresh interpreter: in this one, each fleet reuses heap its
    # predecessors freed, and the delta shrinks round after round (2.5x on asyncio).
    command = [sys.executable, __file__, PROBE_FLAG, contender, str(count), backend, args.log_level]
    result = await anyio.run_process(command, stderr=None)  # its errors show up here
    # The figure is the last line; log events may come before it.
    return float(result.stdout.split()[-1])


def probe_main(contender: str, count: str, backend: str, log_level: str) -> None:
    prepare_process(log_level)
    print(run_on(backend, memory_per_instance, contender, int(count)))


async def measure(args: argparse.Namespace, backend: str) -> Cases:
    cases = []
    for count in args.instances:
        contenders = pair(
            args, launch_contender(RAW, count), partial(launch_contender, OURS, count)
        )
        results = await alternate(contenders, rounds=args.rounds)
        for name, samples in results.items():
            samples["kib_per_instance"] = [await probe_memory(args, name, count, backend)]
        cases.append((f"{backend} N={count}", results))
    return cases


def collect(args: argparse.Namespace) -> list[Report]:
    report = Report(
        title="Launch to all-ready, and parent memory per idle instance",
        columns=[
            Column("median s", stat("seconds"), "{:.3f}"),
            Column("min s", stat("seconds", 0), "{:.3f}"),
            Column("KiB/instance", stat("kib_per_instance"), "{:.1f}"),
        ],
        ratio=Column("s ÷ raw", stat("seconds"), "{:.2f}"),
        notes=[
            "KiB/instance: VmRSS growth of a fresh interpreter (warmed up with one "
            "instance, heap trimmed) from just before the launch to all-ready, divided by N.",
        ],
    )
    return run_backends(report, args, measure)


BENCHMARK = Benchmark(
    description=__doc__ or "",
    options=[
        Option("--instances", [100, 500], [100, 500], "fleet sizes"),
        Option("--rounds", 3, 2, "alternating rounds kept, after one warm-up round"),
    ],
    collect=collect,
)

if __name__ == "__main__":
    if sys.argv[1:2] == [PROBE_FLAG]:
        probe_main(*sys.argv[2:])
    else:
        BENCHMARK.main()
