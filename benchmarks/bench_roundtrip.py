"""Round-trip latency: one line to one child, then read until its next prompt.

raw anyio (``open_process`` pipes, or ``os.openpty`` read with ``wait_readable``)
against ``cluster.send`` on a one-instance cluster of the same child, on
asyncio, asyncio+uvloop and trio, through pipes and through a PTY. pexpect
(synchronous, backend-independent) joins the first backend's rounds: with its
default settings (``delaybeforesend=0.05`` makes each send sleep 50 ms, so it
runs fewer iterations) and tuned (no sleeps before send or after read).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from subprocess import TimeoutExpired

import pexpect
from pexpect.popen_spawn import PopenSpawn

from _harness import (
    Benchmark,
    Cases,
    Column,
    Contender,
    Option,
    Report,
    Request,
    Samples,
    Step,
    alternate,
    child_argv,
    count_of,
    request_pair,
    run_backends,
    selected_backends,
    stat,
    time_calls,
)

TRANSPORTS = ("pipe", "pty")
LINE = "hello"


async def roundtrip_batch(request: Request, iterations: int) -> Samples:
    return {"latency": await time_calls(partial(request, LINE), iterations)}


def _spawn_pexpect(*, pty: bool, tuned: bool) -> pexpect.spawnbase.SpawnBase:
    argv = child_argv()
    if pty:
        child: pexpect.spawnbase.SpawnBase = pexpect.spawn(argv[0], argv[1:], use_poll=tuned)
    else:
        child = PopenSpawn(argv)
    if tuned:
        # The two sleeps pexpect adds to every exchange; the timeout (30 s)
        # only bounds a wait that ends as soon as the prompt arrives.
        child.delaybeforesend = None
        child.delayafterread = None
    return child


def _close_pexpect(child: pexpect.spawnbase.SpawnBase) -> None:
    if isinstance(child, PopenSpawn):
        child.sendeof()
        try:
            child.proc.wait(timeout=5)
        except TimeoutExpired:
            child.proc.kill()
            child.proc.wait()
    else:
        child.close(force=True)


def pexpect_contender(*, pty: bool, tuned: bool, iterations: int) -> Contender:
    @asynccontextmanager
    async def open_() -> AsyncIterator[Step]:
        child = _spawn_pexpect(pty=pty, tuned=tuned)
        try:
            child.expect_exact("> ")

            async def step() -> Samples:
                # Synchronous on purpose: this is how pexpect is used. It blocks
                # the event loop, which has nothing else to do meanwhile.
                samples: list[float] = []
                for _ in range(iterations):
                    start = time.perf_counter_ns()
                    child.sendline(LINE)
                    child.expect_exact("> ")
                    samples.append(time.perf_counter_ns() - start)
                return {"latency": samples}

            yield step
        finally:
            _close_pexpect(child)

    return open_


def pexpect_contenders(args: argparse.Namespace, *, pty: bool) -> dict[str, Contender]:
    if not pty:
        # PopenSpawn never sleeps before a send, and the sleep after each read
        # is what lets its reader thread run: its expect loop busy-polls a queue
        # that thread fills, so without the sleep each reply waits for a GIL
        # switch interval (~5 ms). Its defaults are its best settings.
        return {
            "pexpect default": pexpect_contender(pty=False, tuned=False, iterations=args.iterations)
        }
    return {
        # delaybeforesend=0.05: each round trip takes ~50 ms, so fewer of them.
        "pexpect default": pexpect_contender(
            pty=True, tuned=False, iterations=args.pexpect_default_iterations
        ),
        "pexpect tuned": pexpect_contender(pty=True, tuned=True, iterations=args.iterations),
    }


async def measure(args: argparse.Namespace, backend: str) -> Cases:
    cases = []
    for transport in TRANSPORTS:
        pty = transport == "pty"
        batch = partial(roundtrip_batch, iterations=args.iterations)
        contenders = request_pair(args, (), pty=pty, batch=batch)
        if backend == selected_backends(args)[0]:
            contenders |= pexpect_contenders(args, pty=pty)
        cases.append((f"{backend} {transport}", await alternate(contenders, rounds=args.rounds)))
    return cases


def collect(args: argparse.Namespace) -> list[Report]:
    report = Report(
        title="Round-trip latency (one child, one line in, reply + prompt out)",
        columns=[
            Column("n", count_of("latency"), "{:.0f}"),
            Column("p50 µs", stat("latency", 50, 1e-3)),
            Column("p99 µs", stat("latency", 99, 1e-3)),
        ],
        ratio=Column("p50 ÷ raw", stat("latency", 50), "{:.2f}"),
        notes=[
            "pexpect is synchronous: it runs once, in the first backend's rounds; "
            "pipe rows use pexpect.popen_spawn.PopenSpawn, pty rows pexpect.spawn.",
        ],
    )
    return run_backends(report, args, measure)


BENCHMARK = Benchmark(
    description=__doc__ or "",
    options=[
        Option("--rounds", 5, 3, "alternating rounds kept, after one warm-up round"),
        Option("--iterations", 1000, 200, "round trips per contender per round"),
        Option(
            "--pexpect-default-iterations",
            20,
            5,
            "round trips per round for untuned pexpect (~50 ms each)",
        ),
    ],
    collect=collect,
)

if __name__ == "__main__":
    BENCHMARK.main()
