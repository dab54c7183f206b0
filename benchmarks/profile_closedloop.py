"""Where the parent's CPU goes per call in the closed loop, by a sampling profiler.

cProfile's hook on every call and return inflates small functions several times over,
and the library is made of small functions. A sampling profiler reads the process from
outside; with ``--nonblocking`` it does not even pause it. This runs one contender of
``bench_closedloop`` under py-spy, recording only the samples in which the thread holds
the GIL: it is running Python code or C called from it, not waiting in a system call.
``getrusage`` in the same run gives the parent's CPU per call, split into system time
(the kernel: reads, writes, epoll) and user time. The user time is shared out by the
module of the innermost frame of those samples: the library, the event loop (anyio, its
backend and their helpers), the benchmark's callers, and the rest. Import-time samples
are left out; the start of the fleet, its shutdown and the warm-up batch are kept (the
warm-up is the same work as the measured batches, the rest is small beside them).

Needs py-spy (in the ``bench`` extra) and the right to trace a child process::

    python benchmarks/profile_closedloop.py --backend trio --transport pty --callers 8

The split of the user time is by samples, not by CPU: a thread preempted while it
holds the GIL is still sampled, and user time spent without the GIL has no samples to
be counted under (uvloop's libuv runs its loop so: on uvloop the event loop's share is
too low and the others too high). Read the shares as proportions, and compare
contenders run back to back.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio

import bench_closedloop
from _harness import Contender, configure_logs, raise_nofile_limit
from cpu_closedloop import BACKENDS, add_case_options, rusage_per_call

CONTENDERS = {
    "raw": bench_closedloop.raw_contender,
    "reader": bench_closedloop.reader_contender,
    "ours": bench_closedloop.ours_contender,
}
# Innermost frame's file -> bucket. The first pattern that matches wins.
BUCKETS = (
    # attrs generates the __init__ of aimcluster's classes (Request, Reply, Frame).
    ("aimcluster", re.compile(r"(^|/)aimcluster/|<attrs generated \w+ aimcluster\.")),
    (
        "event loop",
        re.compile(
            r"(^|/)(anyio|trio|asyncio|outcome|sniffio|uvloop)/|(^|/)selectors\.py|<attrs generated"
        ),
    ),
    ("benchmark", re.compile(r"(^|/)(benchmarks/|bench_\w+\.py|_harness\.py|profile_closedloop)")),
)
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*):\d+\)$")


def sample_stacks(path: Path) -> Iterator[tuple[list[str], int]]:
    """py-spy's raw format: ``frame;frame;...;innermost count`` per line."""
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and "importlib" not in stack:
            yield stack.split(";"), int(count)


def bucket_of(frame: str) -> str:
    match = _FRAME.match(frame)
    where = match.group("file") if match else frame
    for name, pattern in BUCKETS:
        if pattern.search(where):
            return name
    return "other Python"


def summarise(gil: Path, user: float, top: int) -> None:
    python = collections.Counter[str]()
    functions = collections.Counter[str]()
    for stack, count in sample_stacks(gil):
        bucket = bucket_of(stack[-1])
        python[bucket] += count
        if bucket == "aimcluster":
            functions[re.sub(r":\d+\)$", ")", stack[-1])] += count
    held = sum(python.values())
    if not held:
        raise SystemExit("py-spy recorded no samples: is the process traceable here?")
    for name, count in python.most_common():
        print(f"    {name:24} {count / held:6.1%}  {user * count / held:6.1f} µs")
    if functions:
        print(f"  aimcluster's {top} largest functions (own time, share of the user time):")
        for name, count in functions.most_common(top):
            print(f"    {count / held:5.1%}  {name}")


async def run_workload(args: argparse.Namespace) -> dict[str, float]:
    """The workload py-spy watches; returns the parent's user and system µs per call
    (medians over the batches)."""
    contender: Contender = CONTENDERS[args.contender](
        args.callers, args.calls, pty=args.transport == "pty"
    )
    figures = await rusage_per_call(contender, args.batches)
    return {
        "user": statistics.median(user for user, _ in figures),
        "system": statistics.median(system for _, system in figures),
    }


def find_py_spy() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("py-spy not found: pip install py-spy (or the bench extra)")
    return found


def record(args: argparse.Namespace, contender: str, scratch: Path) -> None:
    raw, out = scratch / f"{contender}.txt", scratch / f"{contender}.json"
    command = [find_py_spy(), "record", "--rate", str(args.rate), "--format", "raw", "--gil"]
    command += ["--nonblocking"]
    command += ["--output", str(raw), "--", sys.executable, __file__, "--workload"]
    command += ["--out", str(out), "--contender", contender, "--backend", args.backend]
    command += ["--transport", args.transport, "--callers", str(args.callers)]
    command += ["--calls", str(args.calls), "--batches", str(args.batches)]
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        # py-spy's own errors (ptrace refused, say) and the workload's traceback.
        raise SystemExit(f"py-spy failed ({done.returncode}):\n{done.stderr}")
    cpu = json.loads(out.read_text())
    print(
        f"{args.backend} {args.transport} N={args.callers}, {contender}: parent CPU "
        f"{cpu['user'] + cpu['system']:.1f} µs per call: system {cpu['system']:.1f}, "
        f"user {cpu['user']:.1f}"
    )
    summarise(raw, cpu["user"], args.top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    add_case_options(parser, transport="pty", calls=20000)
    parser.add_argument(
        "--contender", action="append", choices=sorted(CONTENDERS), help="default: all three"
    )
    parser.add_argument("--rate", type=int, default=1000, help="samples per second")
    parser.add_argument("--top", type=int, default=12, help="library functions to list")
    parser.add_argument("--workload", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workload:
        args.contender = args.contender[0]
        raise_nofile_limit()
        configure_logs("warning")
        backend, options = BACKENDS[args.backend]
        cpu = anyio.run(run_workload, args, backend=backend, backend_options=options)
        Path(args.out).write_text(json.dumps(cpu))
        return
    with tempfile.TemporaryDirectory(prefix="aimcluster-profile-") as scratch:
        for contender in args.contender or list(CONTENDERS):
            record(args, contender, Path(scratch))


if __name__ == "__main__":
    main()
