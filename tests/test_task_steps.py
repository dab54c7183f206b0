"""The fast path, counted: how many times each task runs while plain prompts go through.

A timed test would flake on a shared 2-core machine; task steps do not. trio's instruments
see every step of every task, so a change that adds a task switch per prompt (an await in the
slot's loop, a cancel scope, a hand-off through a queue) shows up here as a count, whatever
the machine's speed. The benchmarks measure what the steps cost.
"""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import trio
import trio.abc
import trio.lowlevel

import aimcluster

# A line tool with a fixed prompt: prompts go out as they are, with no framing of their own.
LINE_TOOL = """
import sys
sys.stdout.write("> ")
sys.stdout.flush()
for line in sys.stdin:
    sys.stdout.write("ok " + line + "> ")
    sys.stdout.flush()
"""

PROMPTS = 200


class _Steps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.counting = False
        self.steps: Counter[trio.lowlevel.Task] = Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.counting:
            self.steps[task] += 1


# The line tool as a spec: a prompt ends at the fixed prompt, with no framing of its own.
PLAIN = aimcluster.ToolSpec(
    name="plain", argv=[sys.executable, "-u", "-c", LINE_TOOL], ready=r"> $"
)


async def _callers_at_it(counter: _Steps, callers: int) -> Counter[trio.lowlevel.Task]:
    """Run *callers* tasks each sending PROMPTS prompts in a loop, on as many instances,
    with *counter* counting from the warm-up's end until the first caller is done (then the
    others are no longer all at it); return the prompts each caller had answered by then."""
    answered: Counter[trio.lowlevel.Task] = Counter()

    async def call(cluster: aimcluster.Cluster, name: str) -> None:
        for n in range(PROMPTS):
            assert (await cluster.send(f"{name}{n}")).text == f"ok {name}{n}"
            if counter.counting:
                answered[trio.lowlevel.current_task()] += 1
        counter.counting = False

    trio.lowlevel.add_instrument(counter)
    try:
        async with aimcluster.launch_cluster(PLAIN, callers) as cluster:
            for n in range(5):
                await cluster.send(f"warm {n}")
            counter.counting = True
            async with trio.open_nursery() as nursery:
                for c in range(callers):
                    nursery.start_soon(call, cluster, f"c{c}-")
    finally:
        trio.lowlevel.remove_instrument(counter)
    return answered


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_plain_prompts_wake_only_the_reader_and_the_caller(anyio_backend: str) -> None:
    counter = _Steps()
    caller = trio.lowlevel.current_task()
    trio.lowlevel.add_instrument(counter)
    try:
        async with aimcluster.launch_cluster(PLAIN, 1) as cluster:
            for n in range(5):  # warm-up: the slot reaches its idle loop
                await cluster.send(f"warm {n}")
            counter.counting = True
            for n in range(PROMPTS):
                assert (await cluster.send(f"p{n}")).text == f"ok p{n}"
            counter.counting = False
    finally:
        trio.lowlevel.remove_instrument(counter)
    own = counter.steps.pop(caller, 0)
    others = {task.name: steps for task, steps in counter.steps.items()}
    # The caller runs at most twice per prompt: once after the pass it gives the event loop
    # when its prompt is written (a caller alone on trio, see Cluster._await_reply), and once
    # when the reply is in, unless it came within the pass.
    assert own <= 2 * PROMPTS + 5
    # One other task runs per prompt, the reader (output in, reply out, the next prompt
    # written from there); the slot's own task sleeps through them all, and nothing else
    # wakes. The reader takes 2 steps a prompt (output in, and one pass after the reply so
    # that the caller writes first), give or take one where the counting starts and stops.
    busy = {name: steps for name, steps in others.items() if steps > 5}
    assert len(busy) == 1, others
    ((_reader, steps),) = busy.items()
    assert steps <= 2 * PROMPTS + 5, others
    assert sum(others.values()) - steps <= 5, others


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_callers_that_are_not_alone_take_no_pass(anyio_backend: str) -> None:
    """With another send awaiting its reply, a send waits at once: one step per prompt."""
    counter = _Steps()
    # Prompts answered while both callers were at it: once one has finished, the other is
    # alone, and then rightly takes the pass.
    answered = await _callers_at_it(counter, 2)
    assert len(answered) == 2, answered
    assert min(answered.values()) >= PROMPTS // 4, answered  # both were at it
    # Each ran once per prompt (its reply is in), plus its start and the pass the first to
    # send took while the other had yet to. With a pass per prompt it would be twice.
    for task, prompts in answered.items():
        assert counter.steps[task] <= prompts + 5, (counter.steps[task], prompts)


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_readers_take_no_pass_after_a_reply_with_other_instances_busy(
    anyio_backend: str,
) -> None:
    """A reader gives the loop a pass after a reply only while at most one instance is busy:
    with eight callers on eight instances, most replies are followed by a wait at once, so
    the readers take well under two steps a prompt (output in, and the pass): 1.2 measured."""
    callers = 8
    counter = _Steps()
    answered = sum((await _callers_at_it(counter, callers)).values())
    readers = sum(steps for task, steps in counter.steps.items() if task.name.endswith("._read"))
    assert answered >= callers * PROMPTS // 2, answered
    assert readers <= 1.6 * answered, (readers, answered)
