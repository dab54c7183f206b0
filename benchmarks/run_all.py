"""Run every benchmark at its default sizes, print each table, write results.json.

Each benchmark runs with its own defaults (every backend, except fan-out, which
runs on asyncio only); ``--quick`` shrinks the sizes, ``--baseline-only`` skips
the aimcluster halves. A full run takes about six and a half minutes, ``--quick``
about two and a half.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import bench_closedloop
import bench_detection
import bench_fanout
import bench_launch
import bench_roundtrip
import bench_throughput
from _harness import (
    BENCHMARKS,
    Report,
    add_log_level_option,
    prepare_process,
    print_report,
    write_json,
)

SUITE = {
    "roundtrip": bench_roundtrip.BENCHMARK,
    "throughput": bench_throughput.BENCHMARK,
    "closedloop": bench_closedloop.BENCHMARK,
    "launch": bench_launch.BENCHMARK,
    "detection": bench_detection.BENCHMARK,
    "fanout": bench_fanout.BENCHMARK,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    add_log_level_option(parser)
    parser.add_argument("--baseline-only", action="store_true", help="skip the aimcluster halves")
    parser.add_argument("--json", type=Path, default=BENCHMARKS / "results.json", metavar="PATH")
    parser.add_argument("--only", nargs="+", choices=list(SUITE), help="run just these")
    args = parser.parse_args()
    # Passed on to each benchmark's own parser, which resolves its sizes.
    flags = ["--log-level", args.log_level]
    if args.quick:
        flags.append("--quick")
    if args.baseline_only:
        flags.append("--baseline-only")

    prepare_process(args.log_level)
    reports: list[Report] = []
    for name in args.only or SUITE:
        benchmark = SUITE[name]
        start = time.perf_counter()
        for report in benchmark.collect(benchmark.parse(flags)):
            print_report(report)
            reports.append(report)
        print(f"[{name}: {time.perf_counter() - start:.0f} s]", file=sys.stderr, flush=True)
    write_json(args.json, reports)


if __name__ == "__main__":
    main()
