"""Proof that nothing is lost: a chaos run under random SIGKILLs, and a Hypothesis state
machine over submit, kill, hang, cancel, scale and restart."""

from __future__ import annotations

import os
import signal
from typing import Any

import anyio
import anyio.from_thread
import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from structlog.testing import capture_logs

import aimcluster
from aimcluster import tools
from aimcluster.testing import chaos_monkey

from .conftest import wait_gone

CHAOS_POLICY = aimcluster.RestartPolicy(initial_delay=0.01, max_delay=0.1, max_restarts=10_000)
# Without jitter, which draws from the global `random`: Hypothesis, drawing on the test's
# thread, must not see it used under its feet by the event loop's thread.
MACHINE_POLICY = attrs.evolve(CHAOS_POLICY, jitter=0)


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_chaos_every_prompt_ends_correct_or_typed_and_nothing_leaks() -> None:
    prompts = [f"p{i}" for i in range(3000)]
    with capture_logs() as logs:
        async with aimcluster.launch_cluster(
            tools.mock(delay=0.004), count=8, restart=CHAOS_POLICY
        ) as cluster:
            async with chaos_monkey(cluster, interval=(0.05, 0.1), seed=1) as monkey:
                results = await cluster.map(prompts, retries=25, return_exceptions=True)
            recovered = await cluster.wait_for(
                lambda m: all(i.state == "ready" for i in m.instances), timeout=30
            )
            assert len(recovered.instances) == 8
    correct = sum(
        isinstance(r, aimcluster.Reply) and r.text == f"echo: {p}"
        for r, p in zip(results, prompts, strict=True)
    )
    typed = sum(isinstance(r, aimcluster.AimclusterError) for r in results)
    assert len(results) == len(prompts)  # nothing lost
    assert correct + typed == len(prompts)  # nothing wrong, nothing untyped
    assert monkey.kills >= 5
    every_pid = {e["pid"] for e in logs if e["event"] == "instance_started"}
    assert monkey.pids <= every_pid
    assert wait_gone(every_pid) == []  # no orphans
    # And most got through: a run where every prompt failed, typed, would pass the lines
    # above. Here all 3,000 are answered, run after run; the floor leaves a wide margin.
    assert correct >= 0.9 * len(prompts)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.timeout(300)
def test_state_machine(backend: str) -> None:
    machine = type(f"ClusterMachine_{backend}", (ClusterMachine,), {"backend": backend})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=25,
            stateful_step_count=12,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )


class ClusterMachine(RuleBasedStateMachine):
    """A real cluster of mock agents, driven from a blocking portal so that Hypothesis
    (synchronous) can run async rules on either backend. The cluster lives on the portal's
    thread: everything that touches it goes through the portal."""

    backend = "asyncio"

    def __init__(self) -> None:
        super().__init__()
        self.portal_cm = anyio.from_thread.start_blocking_portal(self.backend)
        self.portal = self.portal_cm.__enter__()
        self.tickets: list[tuple[Any, str, str]] = []  # (ticket, prompt, kind)
        self.resolutions: dict[int, int] = {}
        self.pids: set[int] = set()
        self.cluster_cm: Any = None

    @initialize()
    def start(self) -> None:
        self.cluster_cm = self.portal.wrap_async_context_manager(
            aimcluster.launch_cluster(
                # A short grace: /hang instances ignore the exit command at teardown.
                attrs.evolve(tools.mock(), shutdown_grace=0.2),
                count=2,
                restart=MACHINE_POLICY,
            )
        )
        self.cluster = self.cluster_cm.__enter__()
        self._note_pids()

    def _pids(self) -> list[int | None]:
        return self.portal.call(lambda: self.cluster.pids)

    def _note_pids(self) -> None:
        self.pids.update(pid for pid in self._pids() if pid is not None)

    def _submit(self, prompt: str, kind: str, **options: Any) -> None:
        n = len(self.tickets)
        self.resolutions[n] = 0

        def count(_request: object) -> None:
            self.resolutions[n] += 1

        async def submit() -> Any:
            # Watched from the moment it exists, before the loop can resolve it.
            ticket = await self.cluster.submit(prompt, **options)
            ticket._request.add_done_callback(count)
            return ticket

        self.tickets.append((self.portal.call(submit), prompt, kind))

    @rule(n=st.integers(0, 10_000))
    def submit(self, n: int) -> None:
        self._submit(f"p{n}", "echo", retries=3)

    @rule()
    def submit_slow(self) -> None:
        self._submit("/sleep 0.05", "sleep")

    @rule()
    def hang(self) -> None:
        self._submit("/hang", "hang", timeout=0.2)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        if self.tickets:
            ticket, _, _ = data.draw(st.sampled_from(self.tickets))
            self.portal.call(ticket.cancel)

    @rule(i=st.integers(0, 3))
    def kill(self, i: int) -> None:
        pids = self._pids()
        if i < len(pids) and pids[i] is not None:
            self.pids.add(pids[i])
            try:
                os.killpg(pids[i], signal.SIGKILL)
            except ProcessLookupError:
                pass

    @rule(n=st.integers(1, 3))
    def scale(self, n: int) -> None:
        self._note_pids()
        self.portal.call(self.cluster.scale, n)
        self._note_pids()

    @rule(i=st.integers(0, 2))
    def restart(self, i: int) -> None:
        if i < self.portal.call(lambda: self.cluster.size):
            self._note_pids()
            self.portal.call(lambda: self.cluster.restart(i, timeout=10))
            self._note_pids()

    @invariant()
    def metrics_add_up(self) -> None:
        if self.cluster_cm is None:
            return
        metrics = self.portal.call(self.cluster.metrics)
        for m in metrics.instances:
            assert m.sent == m.completed + m.failed + m.in_flight, m
        assert metrics.sent == sum(m.sent for m in metrics.instances)

    def teardown(self) -> None:
        try:
            if self.cluster_cm is not None:
                try:
                    self._note_pids()
                    self._settle()
                finally:
                    # Always leave the cluster, or the portal waits for it forever.
                    self.cluster_cm.__exit__(None, None, None)
            for n, count in self.resolutions.items():
                assert count == 1, f"ticket {n} resolved {count} times"
            assert wait_gone(self.pids) == [], "orphan processes"
        finally:
            self.portal_cm.__exit__(None, None, None)

    def _settle(self) -> None:
        """Every submitted prompt resolves (to a reply or a typed error), each exactly once,
        and read_any hands each one out exactly once."""

        async def settle() -> None:
            with anyio.fail_after(30):
                for ticket, prompt, kind in self.tickets:
                    try:
                        reply = await ticket
                    except aimcluster.AimclusterError:
                        continue  # typed: a timeout, a crash past its retries, a cancel
                    assert kind != "hang"
                    expected = "slept 0.05" if kind == "sleep" else f"echo: {prompt}"
                    assert reply.text == expected
            handed_out = 0
            while True:
                try:
                    await self.cluster.read_any(timeout=0.05)
                except TimeoutError:
                    break
                except aimcluster.AimclusterError:
                    pass
                handed_out += 1
            assert handed_out == len(self.tickets)

        self.portal.call(settle)
