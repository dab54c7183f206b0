"""The parent's CPU per call in the closed loop: raw, raw + reader and aimcluster.

Latency and calls/s on a 2-core machine move with whatever else runs; the CPU the
parent spends per call moves much less, and from 8 callers on it is what sets the
calls/s (the parent runs at a full core). Each contender of ``bench_closedloop``
runs on its own: a warm-up batch, then ``--batches`` batches of ``--calls`` calls,
each measured with ``getrusage(RUSAGE_SELF)`` (user + system time of the parent,
children excluded) and divided by the calls in it. Prints the median and the
spread per contender, in µs per call.

    python benchmarks/cpu_closedloop.py --backend trio --callers 8 --transport pty
"""

from __future__ import annotations

import argparse
import resource
import statistics

import anyio

import bench_closedloop
from _harness import Contender, configure_logs, raise_nofile_limit

BACKENDS = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}


async def rusage_per_call(contender: Contender, batches: int) -> list[tuple[float, float]]:
    """µs of the parent's user and system time per call, one pair per batch."""
    figures = []
    async with contender() as step:
        await step()  # warm-up: children started, caches filled
        for _ in range(batches):
            before = resource.getrusage(resource.RUSAGE_SELF)
            samples = await step()
            after = resource.getrusage(resource.RUSAGE_SELF)
            calls = len(samples["latency"])
            user = (after.ru_utime - before.ru_utime) / calls * 1e6
            figures.append((user, (after.ru_stime - before.ru_stime) / calls * 1e6))
    return figures


async def cpu_per_call(contender: Contender, batches: int) -> list[float]:
    """µs of the parent's user + system time per call, one figure per batch."""
    return [user + system for user, system in await rusage_per_call(contender, batches)]


def add_case_options(parser: argparse.ArgumentParser, *, transport: str, calls: int) -> None:
    """The options that pick a closed-loop case and its batches (shared with the profiler)."""
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="trio")
    parser.add_argument("--transport", choices=bench_closedloop.TRANSPORTS, default=transport)
    parser.add_argument("--callers", type=int, default=8, help="caller tasks (and instances)")
    parser.add_argument("--calls", type=int, default=calls, help="calls per batch")
    parser.add_argument("--batches", type=int, default=3, help="measured batches, after a warm-up")


async def measure(args: argparse.Namespace) -> None:
    pty = args.transport == "pty"
    contenders = {
        "raw anyio": bench_closedloop.raw_contender(args.callers, args.calls, pty=pty),
        "raw + reader": bench_closedloop.reader_contender(args.callers, args.calls, pty=pty),
        "aimcluster": bench_closedloop.ours_contender(args.callers, args.calls, pty=pty),
    }
    print(f"{args.backend} {args.transport} N={args.callers}: parent CPU per call, µs")
    for name, contender in contenders.items():
        figures = await cpu_per_call(contender, args.batches)
        print(
            f"  {name:13} median {statistics.median(figures):6.1f}"
            f"  (min {min(figures):.1f}, max {max(figures):.1f}, {len(figures)} batches)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    add_case_options(parser, transport="pipe", calls=8000)
    args = parser.parse_args()
    raise_nofile_limit()
    configure_logs("warning")
    backend, options = BACKENDS[args.backend]
    anyio.run(measure, args, backend=backend, backend_options=options)


if __name__ == "__main__":
    main()
