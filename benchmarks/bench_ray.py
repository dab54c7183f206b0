"""Ray-hosted instances: their round trip against a local one's, and recovery from a lost node.

Starts a local Ray cluster with ``ray.cluster_utils.Cluster`` (a head and two more nodes, every
process on 127.0.0.1, as the tests do) unless ``--address`` names a running one.

Round trip, on the same child (``child.py`` through pipes): raw anyio, ``cluster.send`` on a
local one-instance cluster, ``cluster.send`` on a one-instance cluster whose instance a
``RayTransport`` hosts on another Ray node, and Ray's floor: a no-op call to an async actor
on that node, awaited the way the transport awaits its calls.

Node loss (local cluster only): four mock agents (``--delay 0.05``), one on a node added for the
purpose, under a steady load of ``cluster.map(..., retries=3)`` batches; the node is removed,
gracefully (``cluster.remove_node``'s default) or by SIGKILL to all its processes. Timed from
the removal: until the instance's loss is seen (it leaves ready/busy), and until the cluster is
back to full strength (that instance restarted on a live node, and every instance ready or
busy: under load an instance is busy half the time, so "all ready" would wait for an idle
moment). Every reply is checked against its prompt.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel

from _harness import (
    RAW,
    Benchmark,
    Cases,
    Column,
    Contender,
    Option,
    Report,
    Request,
    Samples,
    aimcluster_module,
    alternate,
    child_spec,
    count_of,
    live_children,
    ours_requester,
    raw_requester,
    request_contender,
    run_on,
    selected_backends,
    stat,
    time_calls,
)

LOCAL = "aimcluster local"
RAY = "aimcluster on Ray"
FLOOR = "Ray actor call"
LINE = "hello"
# Ray's minimum object store, one CPU: a small node.
NODE: dict[str, Any] = {"num_cpus": 1, "object_store_memory": 75 * 1024 * 1024}
LOSS_INSTANCES = 4
LOSS_DELAY = 0.05


# --------------------------------------------------------------------------
# The Ray cluster


@contextmanager
def ray_cluster(address: str | None) -> Iterator[Any]:
    """Connect to *address*, or start a local cluster of three nodes; yield it (or None)."""
    import ray
    from aimcluster.testing import ray_loopback_only

    if address is not None:
        ray.init(address=address, log_to_driver=False)
        try:
            yield None
        finally:
            ray.shutdown()
        return
    from ray.cluster_utils import Cluster

    with ray_loopback_only():
        cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
        try:
            for _ in range(2):
                cluster.add_node(**NODE)
            ray.init(address=cluster.address, log_to_driver=False)
            yield cluster
        finally:
            ray.shutdown()
            cluster.shutdown()


def other_node() -> str:
    """A node that is not the driver's, if there is one: where the Ray contenders run."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    return next((node for node in nodes if node != here), here)


# --------------------------------------------------------------------------
# Round trip


async def roundtrip_batch(request: Request, iterations: int) -> Samples:
    return {"latency": await time_calls(partial(request, LINE), iterations)}


@asynccontextmanager
async def ray_requester(node: str) -> AsyncIterator[Request]:
    from aimcluster.ray import RayTransport

    transport = RayTransport(node_ids=[node])
    async with aimcluster_module().launch_cluster(child_spec(), 1, transport=transport) as cluster:

        async def request(line: str) -> str:
            return str((await cluster.send(line)).text)

        yield request


async def resolve(ref: Any) -> Any:
    """Await a Ray ObjectRef as RayTransport does, on any backend: ref.future() + run_sync_soon."""
    future = ref.future()
    if not future.done():
        done = anyio.Event()
        token = anyio.lowlevel.current_token()
        future.add_done_callback(
            lambda _: token.backend_class.run_sync_soon(done.set, (), token.native_token)
        )
        await done.wait()
    return future.result()


def echo_actor_class() -> Any:
    import ray

    # Defined here, so that cloudpickle ships it by value: the workers cannot import this file.
    class EchoActor:
        async def echo(self, line: str) -> str:
            return line

    return ray.remote(num_cpus=0)(EchoActor)


@asynccontextmanager
async def floor_requester(node: str) -> AsyncIterator[Request]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    strategy = NodeAffinitySchedulingStrategy(node, soft=False)
    actor = echo_actor_class().options(scheduling_strategy=strategy).remote()
    try:
        await resolve(actor.echo.remote(""))

        async def request(line: str) -> str:
            return str(await resolve(actor.echo.remote(line)))

        yield request
    finally:
        ray.kill(actor)


def roundtrip_contenders(args: argparse.Namespace, node: str) -> dict[str, Contender]:
    batch = partial(roundtrip_batch, iterations=args.iterations)
    contenders = {RAW: request_contender(partial(raw_requester, (), pty=False), batch)}
    if not args.baseline_only:
        contenders[LOCAL] = request_contender(partial(ours_requester, (), pty=False), batch)
        contenders[RAY] = request_contender(partial(ray_requester, node), batch)
        contenders[FLOOR] = request_contender(partial(floor_requester, node), batch)
    return contenders


# --------------------------------------------------------------------------
# Node loss


async def lose_a_node(cluster: Any, *, graceful: bool) -> tuple[float, float]:
    """One node loss under load: (seconds until the loss was seen, until full strength)."""
    aimcluster = aimcluster_module()
    from aimcluster.ray import RayTransport

    # Ray installs a signal handler here: main thread only. It blocks the loop before timing.
    extra = cluster.add_node(**NODE)
    removed = False
    try:
        spec = aimcluster.tools.mock(delay=LOSS_DELAY)
        async with aimcluster.launch_cluster(
            spec, LOSS_INSTANCES, transport=RayTransport(), restart=aimcluster.RestartPolicy()
        ) as fleet:
            doomed = [i.index for i in fleet.metrics().instances if i.node == extra.node_id]
            if len(doomed) != 1:
                raise RuntimeError(f"expected one instance on the added node, got {doomed}")
            index = doomed[0]
            warm = anyio.Event()  # three batches done before the loss
            after = anyio.Event()  # three more batches done after full strength
            batches = 0
            batches_back: int | None = None

            async def load() -> None:
                nonlocal batches
                while not after.is_set():
                    prompts = [f"b{batches}-{i}" for i in range(2 * LOSS_INSTANCES)]
                    replies = await fleet.map(prompts, retries=3)
                    if [reply.text for reply in replies] != [f"echo: {p}" for p in prompts]:
                        raise RuntimeError(f"wrong replies in batch {batches}: {replies!r}")
                    batches += 1
                    if batches == 3:
                        warm.set()
                    if batches_back is not None and batches >= batches_back + 3:
                        after.set()

            seen_at = back_at = 0.0

            async def watch(start: float) -> None:
                nonlocal seen_at, back_at, batches_back
                await fleet.wait_for(
                    lambda m: (
                        m.instances[index].restarts > 0
                        or m.instances[index].state not in ("ready", "busy")
                    )
                )
                seen_at = anyio.current_time() - start
                await fleet.wait_for(
                    lambda m: (
                        m.instances[index].restarts > 0
                        and all(i.state in ("ready", "busy") for i in m.instances)
                    )
                )
                back_at = anyio.current_time() - start
                batches_back = batches

            async with anyio.create_task_group() as tg:
                tg.start_soon(load)
                await warm.wait()
                async with anyio.create_task_group() as watchers:
                    watchers.start_soon(watch, anyio.current_time())
                    await anyio.to_thread.run_sync(cluster.remove_node, extra, graceful)
                    removed = True
                moved = fleet.metrics().instances[index].node
                if moved == extra.node_id:
                    raise RuntimeError("the restarted instance is on the removed node")
        return seen_at, back_at
    finally:
        if not removed:
            cluster.remove_node(extra)


async def measure_losses(args: argparse.Namespace, cluster: Any) -> Cases:
    results: dict[str, Samples] = {}
    for graceful in (True, False):
        name = "graceful" if graceful else "SIGKILL"
        samples: Samples = {"seen": [], "back": []}
        for _ in range(args.losses):
            seen, back = await lose_a_node(cluster, graceful=graceful)
            samples["seen"].append(seen * 1e9)
            samples["back"].append(back * 1e9)
        results[name] = samples
    return [("node loss", results)]


# --------------------------------------------------------------------------
# Running


def run_backend(backend: str, func: Any, *args: Any) -> Any:
    """run_on, sparing the Ray cluster's own processes, which were there before."""
    return run_on(backend, func, *args, keep=set(live_children()))


def collect(args: argparse.Namespace) -> list[Report]:
    roundtrip = Report(
        title="Round trip on Ray (one child, one line in, reply + prompt out)",
        columns=[
            Column("n", count_of("latency"), "{:.0f}"),
            Column("p50 µs", stat("latency", 50, 1e-3)),
            Column("p99 µs", stat("latency", 99, 1e-3)),
        ],
        ratio=Column("p50 ÷ raw", stat("latency", 50), "{:.2f}"),
    )
    losses = Report(
        title=f"Node loss under load ({LOSS_INSTANCES} mock agents, one on the lost node)",
        columns=[
            Column("n", count_of("back"), "{:.0f}"),
            Column("seen p50 ms", stat("seen", 50, 1e-6)),
            Column("back p50 ms", stat("back", 50, 1e-6)),
            Column("back max ms", stat("back", 100, 1e-6)),
        ],
        ratio=Column("back ÷ graceful", stat("back", 50), "{:.2f}"),
        baseline="graceful",
    )
    with ray_cluster(args.address) as cluster:
        node = other_node()
        for backend in selected_backends(args):
            cases = run_backend(backend, measure_roundtrip, args, node)
            for case, results in cases:
                roundtrip.add(f"{backend} {case}", results)
                if LOCAL in results and RAY in results:
                    ratio = stat("latency")(results[RAY]) / stat("latency")(results[LOCAL])
                    roundtrip.notes.append(f"{backend}: Ray p50 ÷ local p50 = {ratio:.1f}")
        if cluster is not None and not args.baseline_only and args.losses:
            for backend in selected_backends(args):
                for case, results in run_backend(backend, measure_losses, args, cluster):
                    losses.add(f"{backend} {case}", results)
    reports = [roundtrip]
    if losses.rows:
        losses.notes.append(
            "seen: removal -> the instance leaves ready/busy; back: -> it runs again on a live "
            "node and every instance is ready or busy. Default RestartPolicy (first restart "
            "after 50 ms)."
        )
        reports.append(losses)
    return reports


async def measure_roundtrip(args: argparse.Namespace, node: str) -> Cases:
    return [("pipe", await alternate(roundtrip_contenders(args, node), rounds=args.rounds))]


def main() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        sys.exit("bench_ray.py needs Ray: pip install 'aimcluster[ray]'")
    BENCHMARK.main()


@dataclass(frozen=True)
class RayBenchmark(Benchmark):
    def parser(self) -> argparse.ArgumentParser:
        parser = super().parser()
        parser.add_argument(
            "--address",
            help="a running Ray cluster to use (default: start a local one; no node loss then)",
        )
        return parser


BENCHMARK = RayBenchmark(
    description=__doc__ or "",
    options=[
        Option("--rounds", 5, 3, "alternating rounds kept, after one warm-up round"),
        Option("--iterations", 500, 100, "round trips per contender per round"),
        Option("--losses", 3, 1, "node losses of each kind per backend (0: none)"),
    ],
    collect=collect,
)

if __name__ == "__main__":
    main()
