"""The queues between router and instances, and the requests that travel through them."""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any

import anyio
import attrs
import pytest

from aimcluster._base.dispatch import Dispatcher, Parking
from aimcluster._base.errors import (
    ClusterClosedError,
    NoHealthyInstancesError,
    PromptCancelledError,
    ReplyTimeoutError,
)
from aimcluster._base.natives import loop_natives
from aimcluster._base.request import Reply, Request, RequestState, Ticket

pytestmark = pytest.mark.anyio

# Bounds an await that returns at once unless the behaviour under test is broken, so a
# regression fails the test instead of hanging the run (pytest-timeout cannot interrupt trio).
# Nothing waits for it to pass.
HANG_GUARD = 10


@attrs.define(eq=False)
class Item:
    """A queued item as the dispatcher sees it, recording what it was resolved with."""

    name: str
    target: int | None = None
    key: str | None = None
    pinned: bool = False
    holds_slot: bool = False
    abandoned: bool = False
    results: list[BaseException] = attrs.field(factory=list)

    @property
    def live(self) -> bool:
        return not self.abandoned and not self.results

    def resolve(self, result: BaseException) -> bool:
        if self.results:
            return False
        self.results.append(result)
        return True


def make_reply(text: str = "4", *, prompt: str = "2+2") -> Reply:
    return Reply(text=text, instance=0, prompt=prompt, key=None, elapsed=0.5)


def make_request(prompt: str = "2+2", *, target: int | None = None) -> Request:
    return Request(prompt=prompt, key=None, target=target, deadline=None)


async def take(dispatcher: Dispatcher, index: int) -> Item | Request:
    """The next item for instance *index*, which must already be queued."""
    with anyio.fail_after(HANG_GUARD):
        return await dispatcher.get(index)  # type: ignore[return-value]


async def put_completes(dispatcher: Dispatcher, item: Item) -> bool:
    """Whether ``put`` returns before every task is blocked (that is, without waiting)."""
    done = False

    async def producer() -> None:
        nonlocal done
        await dispatcher.put(item)
        done = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    return done


# -- which item an instance gets ------------------------------------------------------------


async def test_get_prefers_the_private_queue_over_the_shared_one() -> None:
    dispatcher = Dispatcher(2, max_pending=10)
    shared, private = Item("shared"), Item("private", target=0)
    await dispatcher.put(shared)
    await dispatcher.put(private)

    assert [await take(dispatcher, 0), await take(dispatcher, 0)] == [private, shared]


async def test_get_takes_shared_items_but_never_another_instances_private_ones() -> None:
    dispatcher = Dispatcher(2, max_pending=10)
    shared, private = Item("shared"), Item("private", target=0)
    await dispatcher.put(private)
    await dispatcher.put(shared)

    assert await take(dispatcher, 1) is shared
    assert (dispatcher.queued(0), dispatcher.queued(1), dispatcher.queued()) == (1, 0, 0)


async def test_items_come_out_in_the_order_they_were_put() -> None:
    dispatcher = Dispatcher(1, max_pending=10)
    items = [Item(f"item-{i}") for i in range(5)]
    for item in items:
        await dispatcher.put(item)

    assert [await take(dispatcher, 0) for _ in items] == items


async def test_items_that_are_not_live_are_skipped_and_release_their_slot() -> None:
    dispatcher = Dispatcher(1, max_pending=3)
    abandoned, resolved, live = Item("abandoned"), Item("resolved"), Item("live")
    for item in (abandoned, resolved, live):
        await dispatcher.put(item)
    abandoned.abandoned = True
    resolved.resolve(PromptCancelledError("gone"))

    assert await take(dispatcher, 0) is live
    assert [item.holds_slot for item in (abandoned, resolved, live)] == [False, False, False]
    # All three slots are free again.
    assert [await put_completes(dispatcher, Item(f"new-{i}")) for i in range(3)] == [True] * 3
    assert await put_completes(dispatcher, Item("one-too-many")) is False


async def test_abandoned_request_is_skipped() -> None:
    dispatcher = Dispatcher(1, max_pending=10)
    cancelled, wanted = make_request("cancelled", target=0), make_request("wanted")
    await dispatcher.put(cancelled)
    await dispatcher.put(wanted)

    cancelled.abandon()

    assert await take(dispatcher, 0) is wanted
    assert cancelled.holds_slot is False


async def test_put_wakes_the_idle_instance_it_is_routed_to() -> None:
    dispatcher = Dispatcher(2, max_pending=10)
    item = Item("for-1", target=1)
    got: dict[int, Item] = {}

    async def consumer(index: int) -> None:
        got[index] = await dispatcher.get(index)  # type: ignore[assignment]

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer, 0)
        tg.start_soon(consumer, 1)
        await anyio.wait_all_tasks_blocked()
        dispatcher.put_nowait(item)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()

    assert got == {1: item}


async def test_a_burst_of_shared_puts_wakes_one_idle_instance_per_item() -> None:
    dispatcher = Dispatcher(3, max_pending=10)
    first, second = Item("first"), Item("second")
    got: dict[int, Item] = {}

    async def consumer(index: int) -> None:
        got[index] = await dispatcher.get(index)  # type: ignore[assignment]

    async with anyio.create_task_group() as tg:
        for index in range(3):
            tg.start_soon(consumer, index)
            await anyio.wait_all_tasks_blocked()
        dispatcher.put_nowait(first)
        dispatcher.put_nowait(second)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()

    # Instances went idle in the order 0, 1, 2: the two longest idle are woken, one per item,
    # and instance 2 sleeps on. Which of the two runs first is up to the scheduler.
    assert sorted(got) == [0, 1]
    assert sorted(item.name for item in got.values()) == ["first", "second"]


async def test_cancelled_get_that_was_woken_hands_the_wake_to_another_idle_instance() -> None:
    dispatcher = Dispatcher(2, max_pending=10)
    item = Item("shared")
    got: dict[int, Item] = {}
    scopes = {0: anyio.CancelScope(), 1: anyio.CancelScope()}

    async def consumer(index: int) -> None:
        with scopes[index]:
            got[index] = await dispatcher.get(index)  # type: ignore[assignment]

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer, 0)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(consumer, 1)
        await anyio.wait_all_tasks_blocked()
        # Instance 0 is cancelled and, before it runs again, the put picks it (the longest
        # idle) to wake: unless it passes the wake on, instance 1 sleeps with work queued.
        scopes[0].cancel()
        dispatcher.put_nowait(item)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()

    assert got == {1: item}
    assert dispatcher.queued() == 0


async def test_cancelled_idle_get_is_no_longer_woken() -> None:
    dispatcher = Dispatcher(2, max_pending=10)
    item = Item("shared")
    got: dict[int, Item] = {}

    async def consumer(index: int) -> None:
        got[index] = await dispatcher.get(index)  # type: ignore[assignment]

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer, 0)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer, 1)
        await anyio.wait_all_tasks_blocked()
        dispatcher.put_nowait(item)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()

    assert got == {1: item}


# -- backpressure ---------------------------------------------------------------------------


async def test_put_blocks_while_max_pending_items_are_queued_and_proceeds_after_a_get() -> None:
    dispatcher = Dispatcher(1, max_pending=1)
    first, second = Item("first"), Item("second")
    await dispatcher.put(first)
    second_queued = anyio.Event()

    async def producer() -> None:
        await dispatcher.put(second)
        second_queued.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        await anyio.wait_all_tasks_blocked()
        while_full = (second_queued.is_set(), dispatcher.queued())
        got = await take(dispatcher, 0)
        with anyio.fail_after(HANG_GUARD):
            await second_queued.wait()

    assert while_full == (False, 1)
    assert got is first
    assert dispatcher.queued() == 1
    assert (first.holds_slot, second.holds_slot) == (False, True)


async def test_put_nowait_never_waits_but_counts_against_max_pending() -> None:
    # Requeues and moves between pools go through put_nowait. Before, they took no slot, so
    # every item a failover moved (its slot freed, and granted to a waiting producer) came
    # back uncounted, and the queue grew past max_pending with each move.
    dispatcher = Dispatcher(1, max_pending=1)
    requeued = [Item(f"requeued-{i}") for i in range(3)]

    for item in requeued:
        dispatcher.put_nowait(item)

    assert dispatcher.queued() == 3
    assert [item.holds_slot for item in requeued] == [True, True, True]
    assert await put_completes(dispatcher, Item("new")) is False
    for _ in requeued:
        assert await dispatcher.get(0) is not None
    assert await put_completes(dispatcher, Item("new")) is True


# -- close ----------------------------------------------------------------------------------


async def test_close_resolves_every_queued_item_with_cluster_closed_error() -> None:
    dispatcher = Dispatcher(2, max_pending=10)
    items = [Item("shared"), Item("private-0", target=0), Item("private-1", target=1)]
    for item in items:
        await dispatcher.put(item)

    dispatcher.close()

    assert [[type(error) for error in item.results] for item in items] == [[ClusterClosedError]] * 3
    assert str(items[0].results[0]) == "the cluster was shut down before the prompt was sent"
    assert [dispatcher.queued(), dispatcher.queued(0), dispatcher.queued(1)] == [0, 0, 0]
    assert [item.holds_slot for item in items] == [False, False, False]


async def test_close_resolves_queued_requests_so_their_waiters_get_the_error() -> None:
    dispatcher = Dispatcher(1, max_pending=10)
    request = make_request()
    await dispatcher.put(request)

    dispatcher.close()

    with pytest.raises(ClusterClosedError), anyio.fail_after(HANG_GUARD):
        await request.wait()


async def test_put_after_close_raises_cluster_closed_error() -> None:
    dispatcher = Dispatcher(1, max_pending=10)
    dispatcher.close()
    item = Item("late")

    with pytest.raises(ClusterClosedError, match=r"^the cluster is shut down$"):
        await dispatcher.put(item)

    assert (dispatcher.queued(), item.holds_slot) == (0, False)


async def test_put_waiting_for_a_slot_raises_cluster_closed_error_on_close() -> None:
    dispatcher = Dispatcher(1, max_pending=1)
    first, second, third = Item("first"), Item("second"), Item("third")
    await dispatcher.put(first)
    errors: list[str] = []

    async def producer(item: Item) -> None:
        try:
            await dispatcher.put(item)
        except ClusterClosedError as exc:
            errors.append(f"{item.name}: {exc}")

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer, second)
            tg.start_soon(producer, third)
            await anyio.wait_all_tasks_blocked()
            dispatcher.close()

    assert sorted(errors) == [
        "second: the cluster is shut down",
        "third: the cluster is shut down",
    ]
    assert [type(error) for error in first.results] == [ClusterClosedError]
    assert (second.results, third.results) == ([], [])
    assert dispatcher.queued() == 0


async def test_put_nowait_after_close_resolves_the_item_with_cluster_closed_error() -> None:
    dispatcher = Dispatcher(1, max_pending=10)
    dispatcher.close()
    item = Item("requeued")

    dispatcher.put_nowait(item)

    assert [type(error) for error in item.results] == [ClusterClosedError]
    assert dispatcher.queued() == 0


# -- re-routing and inspection --------------------------------------------------------------


async def test_take_private_removes_and_returns_the_instances_items() -> None:
    dispatcher = Dispatcher(2, max_pending=10)
    a, b, c, shared = Item("a", target=0), Item("b", target=0), Item("c", target=1), Item("s")
    for item in (a, b, c, shared):
        await dispatcher.put(item)

    assert dispatcher.take_private(0) == [a, b]
    assert [dispatcher.queued(0), dispatcher.queued(1), dispatcher.queued()] == [0, 1, 1]
    assert dispatcher.take_private(0) == []


async def test_items_taken_from_a_failed_instance_can_be_requeued_elsewhere() -> None:
    dispatcher = Dispatcher(2, max_pending=10)
    item = Item("moved", target=0)
    await dispatcher.put(item)

    for taken in dispatcher.take_private(0):
        taken.target = 1
        dispatcher.put_nowait(taken)

    assert await take(dispatcher, 1) is item
    assert item.holds_slot is False


async def test_items_taken_from_a_failed_instance_and_resolved_free_their_slots() -> None:
    dispatcher = Dispatcher(1, max_pending=1)
    await dispatcher.put(Item("pinned", target=0, pinned=True))

    for taken in dispatcher.take_private(0):
        taken.resolve(NoHealthyInstancesError("instance 0 has failed"))

    assert await put_completes(dispatcher, Item("next")) is True


async def test_queued_counts_only_live_items() -> None:
    dispatcher = Dispatcher(2, max_pending=10)
    shared = [Item("s0"), Item("s1"), Item("s2")]
    private = [Item("p0", target=1), Item("p1", target=1)]
    for item in (*shared, *private):
        await dispatcher.put(item)

    shared[1].abandoned = True
    private[0].resolve(PromptCancelledError("gone"))

    assert [dispatcher.queued(), dispatcher.queued(0), dispatcher.queued(1)] == [2, 0, 1]


async def test_fail_shared_resolves_only_the_shared_items_and_frees_their_slots() -> None:
    dispatcher = Dispatcher(1, max_pending=2)
    shared, private = Item("shared"), Item("private", target=0)
    await dispatcher.put(shared)
    await dispatcher.put(private)
    error = NoHealthyInstancesError("all instances have failed")

    dispatcher.fail_shared(error)

    assert (shared.results, private.results) == ([error], [])
    assert [dispatcher.queued(), dispatcher.queued(0)] == [0, 1]
    assert await put_completes(dispatcher, Item("next")) is True


async def test_add_slot_gives_the_next_index_with_its_own_queue() -> None:
    dispatcher = Dispatcher(2, max_pending=10)

    index = dispatcher.add_slot()
    item = Item("for-new-slot", target=index)
    await dispatcher.put(item)

    assert index == 2
    assert dispatcher.queued(2) == 1
    assert await take(dispatcher, 2) is item


async def test_remove_slots_forgets_the_queues_of_removed_slots() -> None:
    dispatcher = Dispatcher(4, max_pending=10)
    moved = Item("moved", target=3)
    await dispatcher.put(moved)
    for taken in dispatcher.take_private(3):
        taken.target = 1
        dispatcher.put_nowait(taken)

    dispatcher.remove_slots(2)

    with pytest.raises(IndexError):
        dispatcher.queued(2)
    assert dispatcher.add_slot() == 2
    assert await take(dispatcher, 1) is moved


# -- Request --------------------------------------------------------------------------------


async def test_request_is_resolved_only_once() -> None:
    request = make_request()
    reply = make_reply()

    assert request.resolve(reply) is True
    assert request.resolve(PromptCancelledError("too late")) is False

    assert request.result() is reply
    assert request.exception() is None
    assert (request.done, request.live, request.state) == (True, False, RequestState.DONE)


async def test_request_resolved_with_an_error_raises_it() -> None:
    request = make_request()
    error = ClusterClosedError("the cluster is shut down")
    request.resolve(error)

    assert request.exception() is error
    with pytest.raises(ClusterClosedError) as excinfo:
        request.result()
    assert excinfo.value is error


async def test_done_callbacks_run_exactly_once() -> None:
    request = make_request()
    calls: list[tuple[str, Request]] = []
    request.add_done_callback(lambda r: calls.append(("first", r)))
    request.add_done_callback(lambda r: calls.append(("second", r)))

    request.resolve(make_reply())
    request.resolve(PromptCancelledError("again"))
    request.abandon()

    assert calls == [("first", request), ("second", request)]


async def test_done_callback_added_after_resolution_runs_immediately() -> None:
    request = make_request()
    request.resolve(make_reply())
    calls: list[Request] = []

    request.add_done_callback(calls.append)

    assert calls == [request]


async def test_wait_past_deadline_while_queued_raises_reply_timeout_without_instance() -> None:
    request = Request(prompt="2+2", key=None, target=None, deadline=anyio.current_time() - 1)

    with pytest.raises(ReplyTimeoutError) as excinfo, anyio.fail_after(HANG_GUARD):
        await request.wait()

    assert excinfo.value.instance is None
    assert excinfo.value.prompt == "2+2"
    assert str(excinfo.value) == "no instance took the prompt '2+2' before its deadline"
    assert (request.abandoned, request.live, request.done) == (True, False, True)


async def test_request_that_timed_out_in_the_queue_is_never_handed_out() -> None:
    dispatcher = Dispatcher(1, max_pending=1)
    request = Request(prompt="late", key=None, target=None, deadline=anyio.current_time() - 1)
    await dispatcher.put(request)
    with pytest.raises(ReplyTimeoutError), anyio.fail_after(HANG_GUARD):
        await request.wait()
    other = Item("other")

    dispatcher.put_nowait(other)

    assert await take(dispatcher, 0) is other
    assert request.holds_slot is False


async def test_wait_past_deadline_once_sent_waits_for_the_worker() -> None:
    request = Request(prompt="2+2", key=None, target=0, deadline=anyio.current_time() - 1)
    request.state = RequestState.SENT
    reply = make_reply()
    replies: list[Reply] = []

    async def waiter() -> None:
        replies.append(await request.wait())

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            waited_past_deadline = (request.done, replies == [])
            request.resolve(reply)

    assert waited_past_deadline == (False, True)
    assert replies == [reply]


async def test_wait_before_the_deadline_returns_the_reply() -> None:
    request = Request(prompt="2+2", key=None, target=None, deadline=anyio.current_time() + 60)
    reply = make_reply()
    request.resolve(reply)

    assert await request.wait() is reply


async def test_the_sender_waits_on_the_loop_s_own_future_or_event() -> None:
    # What Cluster.send passes: on asyncio a future for the sender alone; on trio no future,
    # and the request waits on trio's event.
    natives = loop_natives(anyio.lowlevel.current_token())
    request, reply = make_request(), make_reply()
    replies: list[Reply] = []

    async def sender() -> None:
        replies.append(await request.wait(natives.new_event, natives.new_future))

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sender)
            await anyio.wait_all_tasks_blocked()
            request.resolve(reply)
    assert replies == [reply]

    # An error ends the wait with that error.
    request = make_request()

    async def failed_sender() -> None:
        with pytest.raises(ReplyTimeoutError, match="too slow"):
            await request.wait(natives.new_event, natives.new_future)

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(failed_sender)
            await anyio.wait_all_tasks_blocked()
            request.resolve(ReplyTimeoutError("too slow", prompt=request.prompt, instance=0))

    # A sender cancelled while it waits leaves the request to be resolved as usual.
    request = make_request()
    with anyio.move_on_after(0.01) as scope:
        await request.wait(natives.new_event, natives.new_future)
    assert scope.cancelled_caught
    request.abandon()
    with pytest.raises(PromptCancelledError):
        request.result()


async def test_abandon_resolves_with_prompt_cancelled_error() -> None:
    request = make_request("2+2")

    request.abandon()

    assert (request.abandoned, request.live, request.done) == (True, False, True)
    with pytest.raises(PromptCancelledError, match=r"^prompt '2\+2' was cancelled$"):
        await request.wait()


async def test_abandon_after_the_reply_keeps_the_reply() -> None:
    request = make_request()
    reply = make_reply()
    request.resolve(reply)

    request.abandon()

    assert await request.wait() is reply


async def test_ticket_is_awaitable_for_its_reply() -> None:
    request = make_request("2+2")
    ticket = Ticket(request)
    reply = make_reply()
    replies: list[Reply] = []

    async def waiter() -> None:
        replies.append(await ticket)

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            before = (ticket.prompt, ticket.key, ticket.done, replies == [])
            request.resolve(reply)

    assert before == ("2+2", None, False, True)
    assert replies == [reply]
    assert ticket.done is True
    assert await ticket.wait() is reply


async def test_cancelled_ticket_raises_prompt_cancelled_error() -> None:
    request = make_request()
    ticket = Ticket(request)

    ticket.cancel()

    assert request.live is False
    with pytest.raises(PromptCancelledError):
        await ticket


# -- the short cuts: offers, parking, peek and remove ------------------------------------------


@pytest.mark.parametrize("takes", [True, False], ids=["taken", "refused"])
async def test_an_idle_instance_is_offered_an_item_and_gets_it_either_way(takes: bool) -> None:
    # Taken: handed over without a queue. Refused: queued, and the instance woken to take it.
    dispatcher = Dispatcher(1, max_pending=2)
    offered: list[object] = []

    def offer(item: object) -> bool:
        offered.append(item)
        return takes

    got: list[object] = []

    async def idle() -> None:
        got.append(await dispatcher.get(0, offer=offer))

    item = Item("item")
    async with anyio.create_task_group() as tg:
        tg.start_soon(idle)
        await anyio.wait_all_tasks_blocked()
        await dispatcher.put(item)
    assert got == [item]
    assert offered == [item]
    assert dispatcher.queued() == 0
    # Its slot is back: two more fit without waiting.
    with anyio.fail_after(HANG_GUARD):
        await dispatcher.put(Item("a"))
        await dispatcher.put(Item("b"))


async def test_has_room_says_whether_put_would_queue_at_once() -> None:
    # The cluster queues a prompt with put_nowait() where has_room says put() would not wait:
    # never past max_pending, never ahead of a producer in line, never once closed.
    dispatcher = Dispatcher(1, max_pending=2)
    assert dispatcher.has_room
    dispatcher.put_nowait(Item("a"))
    assert dispatcher.has_room
    dispatcher.put_nowait(Item("b"))
    assert not dispatcher.has_room  # full
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher.put, Item("c"))
        await anyio.wait_all_tasks_blocked()
        assert await dispatcher.get(0) is not None  # a slot frees: "c" is granted it
        assert not dispatcher.has_room
        assert await dispatcher.get(0) is not None  # "b"; "c" is queued now
        assert dispatcher.has_room
    dispatcher.close()
    assert not dispatcher.has_room


async def test_an_item_an_idle_instance_takes_at_once_holds_no_slot() -> None:
    # Taken by an offer, an item never waits in a queue: it takes no slot, and one it holds
    # from a wait in put() is freed as it is taken.
    dispatcher = Dispatcher(1, max_pending=1)
    taken = Item("taken")
    assert dispatcher.park(0, Parking(lambda item: True, lambda: None))
    dispatcher.put_nowait(taken)
    assert not taken.holds_slot
    assert dispatcher.queued() == 0
    dispatcher.put_nowait(Item("queued"))  # the one slot
    assert not dispatcher.has_room
    waiter = Item("waited")
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher.put, waiter)
        await anyio.wait_all_tasks_blocked()
        assert await dispatcher.get(0) is not None  # the slot goes to the waiting put()
        assert dispatcher.park(0, Parking(lambda item: True, lambda: None))
    assert not waiter.holds_slot  # offered, taken, and its slot freed
    assert dispatcher.queued() == 0
    assert dispatcher.has_room


async def test_an_offer_never_lets_an_item_jump_the_queue() -> None:
    dispatcher = Dispatcher(2, max_pending=10)
    first = Item("first")
    dispatcher.put_nowait(first)  # nobody idle: queued
    calls: list[object] = []

    def offer(item: object) -> bool:
        calls.append(item)
        return True

    assert dispatcher.park(1, Parking(offer, lambda: None)) is False  # an item waits for it
    assert await take(dispatcher, 0) is first
    woken: list[str] = []
    assert dispatcher.park(1, Parking(offer, lambda: woken.append("woken"))) is True
    second, third = Item("second"), Item("third", target=0)
    dispatcher.put_nowait(second)
    assert calls == [second]  # the parked instance took it; its task was not woken
    assert woken == []
    dispatcher.put_nowait(third)  # for instance 0, which is not idle: queued
    assert calls == [second]
    assert dispatcher.peek(0) is third


async def test_a_parked_instance_is_woken_for_what_it_refuses_and_for_interrupts() -> None:
    dispatcher = Dispatcher(1, max_pending=10)
    woken: list[str] = []
    assert dispatcher.park(0, Parking(lambda item: False, lambda: woken.append("wake")))
    dispatcher.put_nowait(Item("refused"))
    assert woken == ["wake"]
    assert dispatcher.peek(0) is not None  # queued for the task to take
    assert await take(dispatcher, 0) is not None

    assert dispatcher.park(0, Parking(lambda item: False, lambda: woken.append("interrupt")))
    dispatcher.interrupt(0)
    assert woken == ["wake", "interrupt"]
    # An interrupt is pending.
    assert dispatcher.park(0, Parking(lambda item: True, lambda: None)) is False
    assert await take(dispatcher, 0) is None

    assert dispatcher.park(0, Parking(lambda item: True, lambda: None))
    dispatcher.unpark(0)
    dispatcher.put_nowait(Item("after"))  # no offer once unparked
    assert dispatcher.queued() == 1


async def test_one_parking_serves_every_park_of_its_instance() -> None:
    # The slot makes its Parking once and parks it after each reply: an offer that takes an
    # item, a wake for one it refuses and an unpark each leave it fit for the next park.
    dispatcher = Dispatcher(1, max_pending=10)
    taken: list[object] = []
    woken: list[str] = []
    accept = [True]

    def offer(item: object) -> bool:
        if accept[0]:
            taken.append(item)
        return accept[0]

    parking = Parking(offer, lambda: woken.append("wake"))
    first, second = Item("first"), Item("second")
    assert dispatcher.park(0, parking)
    dispatcher.put_nowait(first)
    assert dispatcher.park(0, parking)  # after the offer took the last one
    dispatcher.put_nowait(second)
    assert taken == [first, second]
    assert dispatcher.park(0, parking)
    dispatcher.unpark(0)
    assert dispatcher.park(0, parking)
    accept[0] = False
    refused = Item("refused")
    dispatcher.put_nowait(refused)
    assert woken == ["wake"]
    assert dispatcher.park(0, parking) is False  # the refused item waits for the task
    assert await take(dispatcher, 0) is refused
    assert dispatcher.park(0, parking)
    assert dispatcher.queued() == 0


async def test_peek_and_remove_take_the_head_in_get_order() -> None:
    dispatcher = Dispatcher(2, max_pending=10)
    dead = Item("dead", target=0, abandoned=True)
    mine, shared = Item("mine", target=0), Item("shared")
    for item in (shared, dead, mine):
        await dispatcher.put(item)
    assert dispatcher.peek(0) is mine  # its own queue first, the dead item dropped
    dispatcher.remove(0, mine)
    assert dispatcher.peek(0) is shared
    assert dispatcher.peek(1) is shared
    dispatcher.remove(1, shared)
    assert dispatcher.peek(0) is None
    # Every slot is back: ten more fit without waiting.
    with anyio.fail_after(HANG_GUARD):
        for number in range(10):
            await dispatcher.put(Item(str(number)))


async def test_a_full_queue_wakes_its_producer_at_the_low_water_mark_not_per_slot() -> None:
    dispatcher = Dispatcher(1, max_pending=16)  # the mark: 16 - 16 // 8 = 14
    for number in range(16):
        await dispatcher.put(Item(str(number)))
    queued = anyio.Event()

    async def producer() -> None:
        await dispatcher.put(Item("more"))
        queued.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        await anyio.wait_all_tasks_blocked()
        await take(dispatcher, 0)
        await anyio.wait_all_tasks_blocked()
        after_one = queued.is_set()
        await take(dispatcher, 0)
        with anyio.fail_after(HANG_GUARD):
            await queued.wait()
    assert after_one is False
    assert dispatcher.queued() == 15


@pytest.mark.parametrize("pinned", [False, True])
async def test_a_put_waiting_for_room_whose_instance_is_scaled_away(pinned: bool) -> None:
    dispatcher = Dispatcher(2, max_pending=1)
    first, waiting = Item("first"), Item("waiting", target=1, pinned=pinned)
    await dispatcher.put(first)
    errors: list[Exception] = []

    async def producer() -> None:
        try:
            await dispatcher.put(waiting)
        except ValueError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        await anyio.wait_all_tasks_blocked()
        dispatcher.take_private(1)
        dispatcher.remove_slots(1)  # instance 1 is gone
        assert await take(dispatcher, 0) is first

    if pinned:
        assert [str(error) for error in errors] == ["instance must be in range(0, 1), got 1"]
        assert dispatcher.queued() == 0
        assert await put_completes(dispatcher, Item("after")) is True  # its slot is back
    else:
        # Routed to the removed instance, not pinned to it: any instance may take it.
        assert errors == []
        assert await take(dispatcher, 0) is waiting


class CountWakeUps:
    """Awaits a coroutine, counting how often the event loop resumed it after it suspended.

    Counted from the outside, so the count covers every pass the coroutine takes, whatever
    it waits on inside.
    """

    def __init__(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self._coroutine = coroutine
        self.wake_ups = 0

    def __await__(self) -> Generator[Any, Any, None]:
        inner = self._coroutine.__await__()
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                request = inner.send(value) if error is None else inner.throw(error)
            except StopIteration:
                return
            try:
                value, error = (yield request), None
            except BaseException as exc:  # delivered to the coroutine, which decides
                value, error = None, exc
            self.wake_ups += 1


async def test_producers_waiting_for_room_wake_once_each_in_the_order_they_came() -> None:
    # Every freed slot used to wake every waiting producer: N waiters took about N**2 / 8
    # wake-ups (5,000 here), and 10,000 sends to a cluster 155 s. One wake-up each now.
    waiters = 200
    dispatcher = Dispatcher(1, max_pending=4)
    for number in range(4):
        await dispatcher.put(Item(f"first-{number}"))
    arrived: list[Item] = []
    wake_ups: list[int] = []

    async def producer(number: int) -> None:
        item = Item(f"waiting-{number}")
        arrived.append(item)  # nothing between here and taking its place in line
        put = CountWakeUps(dispatcher.put(item))
        await put
        wake_ups.append(put.wake_ups)

    async with anyio.create_task_group() as tg:
        for number in range(waiters):
            tg.start_soon(producer, number)
        await anyio.wait_all_tasks_blocked()
        assert (len(arrived), wake_ups) == (waiters, [])  # all of them wait in line
        taken = []
        for _ in range(4 + waiters):
            taken.append(await take(dispatcher, 0))  # frees a slot: one producer's turn
            await anyio.wait_all_tasks_blocked()  # it queues its item before the next turn

    assert len(wake_ups) == waiters
    assert sum(wake_ups) <= 2 * waiters
    assert taken[4:] == arrived


async def test_producers_cancelled_in_line_strand_nobody() -> None:
    # "b" is cancelled while in line; "a" once it has been woken with a slot, which it still
    # uses (anyio on either backend delivers a cancel at the next checkpoint, not to a task
    # already woken). "c" must get its turn, and every slot must come back.
    dispatcher = Dispatcher(1, max_pending=1)
    first, a, c = Item("first"), Item("a"), Item("c")
    items = {"a": a, "b": Item("b"), "c": c}
    await dispatcher.put(first)
    scopes: dict[str, anyio.CancelScope] = {}
    queued: list[str] = []

    async def producer(name: str) -> None:
        with anyio.CancelScope() as scopes[name]:
            await dispatcher.put(items[name])
            queued.append(name)

    async with anyio.create_task_group() as tg:
        for name in "abc":
            tg.start_soon(producer, name)
            await anyio.wait_all_tasks_blocked()  # so they queue up in this order
        scopes["b"].cancel()
        await anyio.wait_all_tasks_blocked()
        assert await take(dispatcher, 0) is first  # the slot goes to "a"
        scopes["a"].cancel()
        await anyio.wait_all_tasks_blocked()
        assert await take(dispatcher, 0) is a  # the slot goes to "c", not "b"
        await anyio.wait_all_tasks_blocked()

    assert queued == ["a", "c"]
    assert await take(dispatcher, 0) is c
    # Every slot is back, and nobody left waiting in line holds a newcomer back.
    assert await put_completes(dispatcher, Item("after")) is True
    assert await put_completes(dispatcher, Item("one-too-many")) is False


async def test_a_producer_never_jumps_the_line_of_producers_waiting_for_room() -> None:
    dispatcher = Dispatcher(1, max_pending=16)  # the low-water mark: 14
    for number in range(16):
        await dispatcher.put(Item(str(number)))
    order: list[str] = []

    async def producer(name: str) -> None:
        await dispatcher.put(Item(name))
        order.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer, "waiting")
        await anyio.wait_all_tasks_blocked()
        await take(dispatcher, 0)  # 15 queued: room, but the waiter is not woken yet
        tg.start_soon(producer, "newcomer")
        await anyio.wait_all_tasks_blocked()
        assert order == []  # the newcomer waits behind the producer that came first
        await take(dispatcher, 0)  # the mark: a slot each (they run in the scheduler's order)
    assert sorted(order) == ["newcomer", "waiting"]


async def test_no_offer_while_an_earlier_item_waits_in_the_shared_queue() -> None:
    # Instance 0 refuses "a" (it is queued, and 0 woken to take it); "b" must then queue behind
    # "a", not be handed to idle instance 1 before 0's task has even run.
    dispatcher = Dispatcher(2, max_pending=10)
    offered: list[object] = []
    woken: list[int] = []

    def take_it(item: object) -> bool:
        offered.append(item)
        return True

    assert dispatcher.park(0, Parking(lambda item: False, lambda: woken.append(0)))
    assert dispatcher.park(1, Parking(take_it, lambda: woken.append(1)))
    a, b = Item("a"), Item("b")
    dispatcher.put_nowait(a)
    assert woken == [0]
    dispatcher.put_nowait(b)

    assert offered == []
    dispatcher.unpark(1)
    assert [await take(dispatcher, 1), await take(dispatcher, 0)] == [a, b]
