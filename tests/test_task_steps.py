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
_TOOL = """
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


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_plain_prompts_wake_only_the_reader_and_the_caller(anyio_backend: str) -> None:
    spec = aimcluster.ToolSpec(name="plain", argv=[sys.executable, "-u", "-c", _TOOL], ready=r"> $")
    counter = _Steps()
    caller = trio.lowlevel.current_task()
    trio.lowlevel.add_instrument(counter)
    try:
        async with aimcluster.launch_cluster(spec, 1) as cluster:
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
    # The caller runs twice per prompt: once to give the event loop a pass after its prompt
    # is written (a caller alone on trio, see Cluster._await_reply), and once when the reply
    # is in and its send returns.
    assert own <= 2 * PROMPTS + 5
    # One other task runs per prompt, the reader (output in, reply out, the next prompt
    # written from there); the slot's own task sleeps through them all, and nothing else
    # wakes. Today the reader takes under 2 steps a prompt.
    busy = {name: steps for name, steps in others.items() if steps > 5}
    assert len(busy) == 1, others
    ((_reader, steps),) = busy.items()
    assert steps <= 2 * PROMPTS, others
    assert sum(others.values()) - steps <= 5, others
