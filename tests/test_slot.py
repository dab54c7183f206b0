"""A slot, driven with a fake process handle: the fast paths, supervision, leases, probes,
recycling. No process starts (see ``test_process.py`` for the fake), and the upkeep schedule
runs on a fake clock."""

from __future__ import annotations

import math
import random
import signal
from collections.abc import AsyncIterator

import anyio
import pytest
import structlog

from aimcluster import InstanceCrashedError, Probe, RestartPolicy, ToolSpec
from aimcluster._base.dispatch import Dispatcher
from aimcluster._base.lease import LeaseRequest
from aimcluster._base.request import Request
from aimcluster._slot.instance import Instance, InstanceState
from aimcluster._slot.upkeep import Upkeep

from .test_process import FakeHandle, FakeTransport, Responder, echo, tool

pytestmark = pytest.mark.anyio

#: Restart at once, as often as needed.
POLICY = RestartPolicy(initial_delay=0.0, jitter=0.0, max_restarts=100)


class Slot:
    def __init__(self, spec: ToolSpec, transport: FakeTransport, instance: Instance) -> None:
        self.spec, self.transport, self.instance = spec, transport, instance
        self.dispatcher = instance.dispatcher

    async def put(self, prompt: str, *, retries: int = 0) -> Request:
        request = Request(prompt=prompt, key=None, target=None, deadline=None, retries=retries)
        await self.dispatcher.put(request)
        return request

    async def send(self, prompt: str) -> str:
        request = await self.put(prompt)
        with anyio.fail_after(10):
            return (await request.wait()).text


@pytest.fixture
async def slot_factory() -> AsyncIterator[object]:
    async with anyio.create_task_group() as tg:
        instances: list[Instance] = []

        async def make(
            spec: ToolSpec | None = None,
            respond: Responder = echo,
            policy: RestartPolicy | None = POLICY,
        ) -> Slot:
            spec = spec or tool()
            transport = FakeTransport(respond)
            dispatcher = Dispatcher(1, max_pending=1000)
            instance = Instance(
                index=0,
                slot=0,
                tool="fake",
                spec=spec,
                transport=transport,
                dispatcher=dispatcher,
                policy=policy,
                log=structlog.get_logger(),
                on_state=lambda _: None,
                requeue=dispatcher.put_nowait,
            )
            await tg.start(instance.run)
            instances.append(instance)
            return Slot(spec, transport, instance)

        yield make
        for instance in instances:
            instance.stop()
            instance.dispatcher.close()
        with anyio.fail_after(10):
            for instance in instances:
                await instance.stopped.wait()


async def test_a_put_to_an_idle_slot_writes_the_prompt_itself(slot_factory) -> None:
    slot = await slot_factory()
    handle = await slot.transport.spawned(1)
    await slot.send("warm")
    sends, try_sends = handle.sends, handle.try_sends
    request = await slot.put("p0")
    # Written by the put, before anything else ran: the slot's task still sleeps.
    assert bytes(handle.written).endswith(b"p0\n")
    assert (handle.try_sends, handle.sends) == (try_sends + 1, sends)
    assert (await request.wait()).text == "ok p0"


@pytest.mark.parametrize("settled", [False, True], ids=["waking", "asleep"])
async def test_the_reader_writes_each_next_prompt_and_the_task_writes_none(
    slot_factory, settled: bool
) -> None:
    slot = await slot_factory()
    handle = await slot.transport.spawned(1)
    await slot.send("warm")
    if settled:
        # The slot's task sleeps in get: the first put's offer wakes it, and the reply to
        # that prompt may come in before it runs. The reader still writes the next one.
        await anyio.wait_all_tasks_blocked()
    sends, try_sends = handle.sends, handle.try_sends
    requests = [await slot.put(f"p{n}") for n in range(20)]
    with anyio.fail_after(10):
        replies = [(await request.wait()).text for request in requests]
    assert replies == [f"ok p{n}" for n in range(20)]
    assert (handle.try_sends, handle.sends) == (try_sends + 20, sends)
    assert slot.instance.metrics().completed == 21


async def test_the_busy_count_follows_the_prompt_in_flight_through_a_crash(slot_factory) -> None:
    """The cluster's count of busy instances (which decides how readers read) goes up with a
    prompt in flight and back down when it ends, however it ends."""
    held: list[FakeHandle] = []

    def respond(handle: FakeHandle, line: str) -> None:
        if line == "hold":
            held.append(handle)
        elif line == "crash":
            handle.exit(1)
        else:
            echo(handle, line)

    slot = await slot_factory(respond=respond)
    busy = slot.instance.busy
    assert await slot.send("warm") == "ok warm"
    await anyio.wait_all_tasks_blocked()
    assert busy.count == 0
    request = await slot.put("hold")
    await anyio.wait_all_tasks_blocked()
    assert busy.count == 1
    held[0].print(b"ok late\n> ")
    assert (await request.wait()).text == "ok late"
    await anyio.wait_all_tasks_blocked()
    assert busy.count == 0
    request = await slot.put("crash")
    with pytest.raises(InstanceCrashedError):
        await request.wait()
    await slot.transport.spawned(2)
    assert await slot.send("after") == "ok after"
    await anyio.wait_all_tasks_blocked()
    assert busy.count == 0


async def test_a_crash_mid_reply_fails_the_prompt_and_the_policy_restarts_it(slot_factory) -> None:
    def crashing(handle: FakeHandle, line: str) -> None:
        if line == "crash":
            handle.print(b"half a rep")
            handle.exit(1)
        else:
            echo(handle, line)

    slot = await slot_factory(respond=crashing)
    first = await slot.transport.spawned(1)
    request = await slot.put("crash")
    with pytest.raises(InstanceCrashedError) as caught:
        await request.wait()
    assert (caught.value.exit_code, caught.value.partial_output) == (1, "half a rep")
    second = await slot.transport.spawned(2)
    assert second is not first
    assert await slot.send("after") == "ok after"
    assert slot.instance.restarts == 1
    assert slot.instance.metrics().failed == 1


async def test_a_crash_without_a_policy_fails_the_slot(slot_factory) -> None:
    slot = await slot_factory(policy=None)
    handle = await slot.transport.spawned(1)
    handle.exit(1)
    with anyio.fail_after(10):
        await slot.instance.stopped.wait()
    assert slot.instance.state is InstanceState.FAILED
    assert len(slot.transport.handles) == 1


async def test_a_crash_mid_reply_retries_the_prompt_on_the_next_process(slot_factory) -> None:
    def crashing_once(handle: FakeHandle, line: str) -> None:
        if handle.pid == 1000:
            handle.exit(-9)
        else:
            echo(handle, line)

    slot = await slot_factory(respond=crashing_once)
    request = await slot.put("again", retries=1)
    with anyio.fail_after(10):
        reply = await request.wait()
    assert (reply.text, reply.attempts) == ("ok again", 2)


async def test_a_lease_keeps_its_prompts_on_the_instance_and_others_wait(slot_factory) -> None:
    slot = await slot_factory()
    handle = await slot.transport.spawned(1)
    lease = LeaseRequest(key=None, target=None)
    await slot.dispatcher.put(lease)
    with anyio.fail_after(10):
        assert await lease.wait_granted() == 0
    outsider = await slot.put("outsider")
    assert b"outsider" not in handle.written  # no fast path into a leased slot
    for n in range(3):
        request = Request(prompt=f"l{n}", key=None, target=0, deadline=None, pinned=True)
        lease.submit(request)
        with anyio.fail_after(10):
            assert (await request.wait()).text == f"ok l{n}"
    assert b"outsider" not in handle.written
    assert handle.sends == 3  # the task writes a lease's prompts
    lease.release()
    with anyio.fail_after(10):
        assert (await outsider.wait()).text == "ok outsider"


async def test_a_crash_during_a_lease_loses_the_lease_and_fails_its_prompt(slot_factory) -> None:
    def crashing(handle: FakeHandle, line: str) -> None:
        handle.exit(1) if line == "crash" else echo(handle, line)

    slot = await slot_factory(respond=crashing)
    lease = LeaseRequest(key=None, target=None)
    await slot.dispatcher.put(lease)
    with anyio.fail_after(10):
        await lease.wait_granted()
    request = Request(prompt="crash", key=None, target=0, deadline=None, pinned=True)
    lease.submit(request)
    with pytest.raises(InstanceCrashedError), anyio.fail_after(10):
        await request.wait()
    assert isinstance(lease.error, InstanceCrashedError)
    await slot.transport.spawned(2)
    lease.release()


async def test_an_exit_while_a_lease_waits_for_its_next_prompt_loses_it(slot_factory) -> None:
    slot = await slot_factory()
    handle = await slot.transport.spawned(1)
    lease = LeaseRequest(key=None, target=None)
    await slot.dispatcher.put(lease)
    with anyio.fail_after(10):
        await lease.wait_granted()
    handle.exit(-9)
    await slot.transport.spawned(2)
    assert isinstance(lease.error, InstanceCrashedError)
    assert lease.error.exit_code == -9
    lease.release()


async def test_a_probe_with_the_wrong_answer_restarts_the_process(slot_factory) -> None:
    def sick(handle: FakeHandle, line: str) -> None:
        handle.print(b"nope\n> " if line == "ping" else f"ok {line}\n> ".encode())

    spec = tool(probe=Probe(command="ping", expect="pong", interval=0.01, timeout=5))
    slot = await slot_factory(spec, respond=sick)
    first = await slot.transport.spawned(1)
    await slot.transport.spawned(2)
    assert b"ping\n" in first.written
    assert first.signals[0] == signal.SIGKILL
    assert slot.instance.metrics().sent == 0  # a probe is not a prompt


async def test_a_probe_answered_right_keeps_the_process(slot_factory) -> None:
    probed = anyio.Event()

    def healthy(handle: FakeHandle, line: str) -> None:
        if line == "ping":
            handle.print(b"pong\n> ")
            if handle.written.count(b"ping\n") == 2:
                probed.set()
        else:
            echo(handle, line)

    spec = tool(probe=Probe(command="ping", expect="pong", interval=0.01, timeout=5))
    slot = await slot_factory(spec, respond=healthy)
    with anyio.fail_after(10):
        await probed.wait()
    assert await slot.send("still") == "ok still"
    assert len(slot.transport.handles) == 1


async def test_after_max_prompts_the_process_is_recycled_gracefully(slot_factory) -> None:
    slot = await slot_factory(tool(max_prompts=2, recycle_jitter=0.0))
    first = await slot.transport.spawned(1)
    assert [await slot.send(f"p{n}") for n in range(2)] == ["ok p0", "ok p1"]
    second = await slot.transport.spawned(2)
    assert first.signals[0] == signal.SIGTERM  # stopped gracefully, not killed
    assert await slot.send("p2") == "ok p2"
    assert b"p2" in second.written
    assert b"p2" not in first.written
    assert slot.instance.restarts == 1
    assert not math.isinf(slot.instance.metrics().latency_p50 or 0.0)


# -- the upkeep schedule, on a fake clock ---------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_max_prompts_makes_the_process_due_once_it_served_them() -> None:
    clock = Clock()
    upkeep = Upkeep(tool(max_prompts=3, recycle_jitter=0.0), clock)
    upkeep.start()
    assert upkeep.wake_at == math.inf  # nothing to wake for: the count is checked per prompt
    upkeep.count(2)
    assert not upkeep.due()
    assert upkeep.recycle_reason() is None
    upkeep.count(1)
    assert upkeep.due()
    assert upkeep.recycle_reason() == "max_prompts"
    upkeep.start()
    assert not upkeep.due()


def test_max_age_and_probes_wake_the_idle_slot_when_they_are_due() -> None:
    clock = Clock()
    spec = tool(max_age=50.0, recycle_jitter=0.0, probe=Probe(command="1", expect="1", interval=10))
    upkeep = Upkeep(spec, clock)
    upkeep.start()
    assert upkeep.wake_at == 110.0
    clock.now = 110.0
    assert upkeep.probe_due()
    assert upkeep.due()
    assert upkeep.recycle_reason() is None  # a probe, not a recycle
    upkeep.idle_from_now()
    assert (upkeep.wake_at, upkeep.due()) == (120.0, False)
    clock.now = 150.0
    assert upkeep.recycle_reason() == "max_age"


def test_a_restart_or_retirement_asked_for_makes_the_process_due_until_acted_on() -> None:
    upkeep = Upkeep(tool(), Clock())
    upkeep.start()
    assert not upkeep.due()
    upkeep.request_restart()
    upkeep.start()  # a process started before the slot took the request: still asked for
    assert upkeep.due()
    assert upkeep.take_restart_request()
    assert not upkeep.take_restart_request()
    assert not upkeep.due()
    upkeep.retire()
    upkeep.start()
    assert upkeep.due()
    assert upkeep.retiring  # for good


def test_jitter_spreads_max_prompts_and_a_one_shot_slot_is_never_recycled() -> None:
    clock = Clock()
    spec = tool(max_prompts=100, recycle_jitter=0.1)
    upkeep = Upkeep(spec, clock)
    for seed in range(20):
        upkeep.start(rng=random.Random(seed))
        upkeep.count(89)
        assert not upkeep.due()
        upkeep.count(22)
        assert upkeep.due()
    upkeep.start(recycle=False)
    upkeep.count(1000)
    assert not upkeep.due()
