"""Supervision figures: a chaos run under random SIGKILLs, and parent memory during a flood.

Not a speed race: it reports what happened to every prompt (correct, typed error, lost, wrong),
how many processes were killed, whether any process outlived the cluster, and how long the
pool took to get back to full strength after the last kill.

    python benchmarks/bench_chaos.py [--prompts 5000] [--instances 8] [--backend all]
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
from pathlib import Path

import anyio
import attrs
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aimcluster
from aimcluster import tools
from aimcluster.testing import chaos_monkey

POLICY = aimcluster.RestartPolicy(initial_delay=0.01, max_delay=0.1, max_restarts=100_000)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def chaos(prompts: int, instances: int, delay: float) -> dict[str, object]:
    texts = [f"p{i}" for i in range(prompts)]
    pids: set[int] = set()
    async with aimcluster.launch_cluster(
        tools.mock(delay=delay), count=instances, restart=POLICY
    ) as cluster:
        start = anyio.current_time()
        async with chaos_monkey(cluster, interval=(0.05, 0.1), seed=7) as monkey:
            results = await cluster.map(texts, retries=25, return_exceptions=True)
        run_time = anyio.current_time() - start
        await cluster.wait_for(lambda m: all(i.state == "ready" for i in m.instances), timeout=60)
        recovered = anyio.current_time()
        pids = set(monkey.pids) | {p for p in cluster.pids if p is not None}
        restarts = cluster.metrics().restarts
    await anyio.sleep(0.2)  # SIGKILL is asynchronous: let the kernel finish the last ones
    correct = sum(
        isinstance(r, aimcluster.Reply) and r.text == f"echo: {t}"
        for r, t in zip(results, texts, strict=True)
    )
    typed = sum(isinstance(r, aimcluster.AimclusterError) for r in results)
    wrong = sum(
        isinstance(r, aimcluster.Reply) and r.text != f"echo: {t}"
        for r, t in zip(results, texts, strict=True)
    )
    return {
        "prompts": prompts,
        "instances": instances,
        "kills": monkey.kills,
        "restarts": restarts,
        "correct": correct,
        "typed_errors": typed,
        "lost": prompts - len(results),
        "wrong": wrong,
        "untyped": len(results) - correct - typed - wrong,
        "orphans": sum(_alive(pid) for pid in pids),
        "run_s": round(run_time, 2),
        "recovery_after_last_kill_s": round(recovered - (monkey.last_kill or recovered), 3),
    }


async def flood(megabytes: int) -> dict[str, object]:
    spec = attrs.evolve(tools.mock(), max_reply_bytes=1 << 20)
    async with aimcluster.launch_cluster(spec, restart=POLICY) as cluster:
        await cluster.send("warm up")
        before = _rss_kib()
        peak = before

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, _rss_kib())
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            try:
                await cluster.send(f"/flood {megabytes * 1_000_000}")
            except aimcluster.ReplyTooLargeError as exc:
                error = type(exc).__name__
            tg.cancel_scope.cancel()
        after = await cluster.send("after")
    return {
        "flood_mb": megabytes,
        "reply_cap_kib": 1024,
        "error": error,
        "rss_before_kib": before,
        "rss_peak_growth_kib": peak - before,
        "served_after": after.text,
        "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=5000)
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--delay", type=float, default=0.004, help="mock agent latency (s)")
    parser.add_argument("--flood-mb", type=int, default=100)
    parser.add_argument("--backend", choices=["asyncio", "trio", "all"], default="all")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    backends = ["asyncio", "trio"] if args.backend == "all" else [args.backend]
    for backend in backends:
        figures = anyio.run(chaos, args.prompts, args.instances, args.delay, backend=backend)
        print(f"chaos  [{backend}] " + ", ".join(f"{k}={v}" for k, v in figures.items()))
        figures = anyio.run(flood, args.flood_mb, backend=backend)
        print(f"flood  [{backend}] " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    print(f"pid {os.getpid()} done")


if __name__ == "__main__":
    main()
