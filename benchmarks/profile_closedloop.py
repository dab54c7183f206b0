"""Where the parent's CPU goes per call in the closed loop, by a sampling profiler.

cProfile's hook on every call and return inflates small functions several times over,
and the library is made of small functions; a sampling profiler outside the process
changes nothing in it. This runs one contender of ``bench_closedloop`` under py-spy
twice, the same workload each time: once recording every sample of the running
thread, once only the samples in which it holds the GIL. What the first has over the
second is time in system calls (``os.read``, ``os.write``, epoll), which run without
the GIL. The Python samples are split by the module of the innermost frame: the
library, the event loop (anyio, its backend and their helpers), the benchmark's own
callers, and the rest. Each share is applied to the parent's CPU per call
(``getrusage``), measured in the same runs. Import-time samples are left out; the
warm-up batch is the same work as the measured ones and is kept.

Needs py-spy (in the ``bench`` extra) and the right to trace a child process::

    python benchmarks/profile_closedloop.py --backend trio --transport pty --callers 8

The shares are of samples, not of CPU: a thread preempted while it holds the GIL is
still sampled as running Python. On a loaded machine read them as proportions.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import resource
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

BACKENDS = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}
CONTENDERS = {
    "raw": bench_closedloop.raw_contender,
    "reader": bench_closedloop.reader_contender,
    "ours": bench_closedloop.ours_contender,
}
# Innermost frame's file -> bucket. The first pattern that matches wins.
BUCKETS = (
    ("aimcluster", re.compile(r"(^|/)aimcluster/")),
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


def summarise(every: Path, gil: Path, cpu_per_call: float, top: int) -> None:
    running = sum(count for _, count in sample_stacks(every))
    python = collections.Counter[str]()
    functions = collections.Counter[str]()
    for stack, count in sample_stacks(gil):
        python[bucket_of(stack[-1])] += count
        if bucket_of(stack[-1]) == "aimcluster":
            functions[re.sub(r":\d+\)$", ")", stack[-1]).replace(str(Path.cwd()) + "/", "")] += (
                count
            )
    held = sum(python.values())
    if not running or not held:
        raise SystemExit("py-spy recorded no samples: is the process traceable here?")
    # Both runs do the same calls: the GIL-held share of the running samples.
    python_share = min(1.0, held / running)
    rows = [("system calls (GIL released)", 1 - python_share)]
    rows += [(name, python_share * count / held) for name, count in python.most_common()]
    for name, share in rows:
        print(f"  {name:28} {share:6.1%}  {share * cpu_per_call:6.1f} µs")
    if functions:
        print(f"  aimcluster's {top} largest functions (own time, share of all):")
        for name, count in functions.most_common(top):
            print(f"    {python_share * count / held:5.1%}  {name}")


async def run_workload(args: argparse.Namespace) -> float:
    """The workload py-spy watches; returns the parent's CPU per call (median of batches)."""
    contender: Contender = CONTENDERS[args.contender](
        args.callers, args.calls, pty=args.transport == "pty"
    )
    figures = []
    async with contender() as step:
        await step()
        for _ in range(args.batches):
            before = resource.getrusage(resource.RUSAGE_SELF)
            samples = await step()
            after = resource.getrusage(resource.RUSAGE_SELF)
            spent = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            figures.append(spent / len(samples["latency"]) * 1e6)
    return statistics.median(figures)


def find_py_spy() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("py-spy not found: pip install py-spy (or the bench extra)")
    return found


def record(args: argparse.Namespace, contender: str, scratch: Path) -> None:
    py_spy = find_py_spy()
    cpu = []
    raw: dict[bool, Path] = {}
    for gil in (False, True):
        raw[gil] = scratch / f"{contender}-{'gil' if gil else 'all'}.txt"
        out = scratch / f"{contender}-{gil}.json"
        command = [py_spy, "record", "--rate", str(args.rate), "--format", "raw"]
        command += ["--output", str(raw[gil]), *(["--gil"] if gil else []), "--"]
        command += [sys.executable, __file__, "--workload", "--out", str(out)]
        command += ["--contender", contender, "--backend", args.backend]
        command += ["--transport", args.transport, "--callers", str(args.callers)]
        command += ["--calls", str(args.calls), "--batches", str(args.batches)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        cpu.append(json.loads(out.read_text())["cpu_per_call"])
    cpu_per_call = statistics.mean(cpu)
    print(
        f"{args.backend} {args.transport} N={args.callers}, {contender}: "
        f"parent CPU {cpu_per_call:.1f} µs per call (runs: {cpu[0]:.1f}, {cpu[1]:.1f})"
    )
    summarise(raw[False], raw[True], cpu_per_call, args.top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="trio")
    parser.add_argument("--transport", choices=bench_closedloop.TRANSPORTS, default="pty")
    parser.add_argument("--callers", type=int, default=8, help="caller tasks (and instances)")
    parser.add_argument("--calls", type=int, default=20000, help="calls per batch")
    parser.add_argument("--batches", type=int, default=3, help="measured batches, after a warm-up")
    parser.add_argument(
        "--contender", action="append", choices=sorted(CONTENDERS), help="default: reader, ours"
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
        cpu_per_call = anyio.run(run_workload, args, backend=backend, backend_options=options)
        Path(args.out).write_text(json.dumps({"cpu_per_call": cpu_per_call}))
        return
    with tempfile.TemporaryDirectory(prefix="aimcluster-profile-") as scratch:
        for contender in args.contender or ["reader", "ours"]:
            record(args, contender, Path(scratch))


if __name__ == "__main__":
    main()
