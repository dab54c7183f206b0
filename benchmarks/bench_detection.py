"""Detection latency: from the child writing its prompt to the parent knowing it.

The child (``child.py --stamp``) reads CLOCK_MONOTONIC right before it writes
its reply and prompt, and puts the reading on the reply line (``t=<ns>``). The
parent reads the same clock (one clock for every process on Linux) as soon as
the raw read loop has seen the prompt, or as soon as ``cluster.send`` returns.
The difference is how long noticing the prompt took: pipe or PTY transfer,
event-loop wake-up, framing and, for ours, handing the reply to the caller.
"""

from __future__ import annotations

import argparse
import re
import time
from functools import partial

from _harness import (
    Benchmark,
    Cases,
    Column,
    Option,
    Report,
    Request,
    Samples,
    alternate,
    count_of,
    request_pair,
    run_backends,
    stat,
)

TRANSPORTS = ("pipe", "pty")
STAMP = re.compile(r"t=(\d+)")


def written_at(reply: str) -> int:
    match = STAMP.search(reply)
    if match is None:
        raise RuntimeError(f"no t=<ns> stamp in reply {reply!r}")
    return int(match.group(1))


async def detection_batch(request: Request, iterations: int) -> Samples:
    samples: list[float] = []
    for index in range(iterations):
        reply = await request(f"hello {index}")
        # First thing after the reply is in hand: anything later is not detection.
        seen = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        samples.append(seen - written_at(reply))
    return {"detection": samples}


async def measure(args: argparse.Namespace, backend: str) -> Cases:
    cases = []
    batch = partial(detection_batch, iterations=args.iterations)
    for transport in TRANSPORTS:
        contenders = request_pair(args, ("--stamp",), pty=transport == "pty", batch=batch)
        cases.append((f"{backend} {transport}", await alternate(contenders, rounds=args.rounds)))
    return cases


def collect(args: argparse.Namespace) -> list[Report]:
    report = Report(
        title="Detection latency (child's write of the prompt -> parent has the reply)",
        columns=[
            Column("n", count_of("detection"), "{:.0f}"),
            Column("p50 µs", stat("detection", 50, 1e-3)),
            Column("p99 µs", stat("detection", 99, 1e-3)),
            Column("max µs", stat("detection", 100, 1e-3)),
        ],
        ratio=Column("p99 ÷ raw", stat("detection", 99), "{:.2f}"),
    )
    return run_backends(report, args, measure)


BENCHMARK = Benchmark(
    description=__doc__ or "",
    options=[
        Option("--rounds", 5, 3, "alternating rounds kept, after one warm-up round"),
        Option("--iterations", 1000, 200, "prompts per contender per round"),
    ],
    collect=collect,
)

if __name__ == "__main__":
    BENCHMARK.main()
