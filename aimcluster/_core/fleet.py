"""The fleet: a cluster's pools and instances, and where each piece of work goes.

It owns what placement needs and nothing else: the pools (each with its dispatcher, pause and
instances), every instance by index, the routing, and the failover order with its queue of
items waiting to be moved on (``failover_after``). The cluster asks it where a new prompt or
lease goes; the instances call it back with work to queue again (a retry), with work their
pool cannot serve (rate-limited), and when their health changes.

A prompt names a pool (``tool=``, by name or tag) or lets the routing pick among every
healthy instance; with a failover order a prompt its pool cannot serve (rate-limited, failed,
or queued past ``failover_after``) moves to the next pool in that order, each pool at most
once. Only prompts nothing was written for yet, or whose provider refused them (a rate
limit), ever move: a prompt never runs on two tools.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable

import anyio
import attrs
import structlog

from .._base.dispatch import Queued
from .._base.errors import NoHealthyInstancesError, RateLimitedError
from .._base.lease import LeaseRequest
from .._base.metrics import ClusterMetrics, PoolMetrics
from .._base.request import Request, RequestState
from .._base.routing import Router
from .._base.statedir import resolve as resolve_state
from .._slot.instance import Instance, InstanceState
from .._slot.process import Busy
from ..abc import Transport
from .pool import PoolState, check_prompt

__all__ = ["Fleet", "Item"]

Item = Request | LeaseRequest


@attrs.define(eq=False)
class Fleet:
    """A running cluster's pools and instances, and the placement of its work."""

    router: Router
    transport: Transport
    #: The cluster's callback for every instance state change.
    on_state: Callable[[Instance], None]
    log: structlog.typing.FilteringBoundLogger
    #: The failover order (pool names; empty: no failover) and the wait in a queue that
    #: moves an item on (``None``: none).
    fallback: tuple[str, ...] = ()
    failover_after: float | None = None
    clock: Callable[[], float] = anyio.current_time
    pools: dict[str, PoolState] = attrs.field(factory=dict)
    #: Every instance by index (a pool shrunk by scale() may leave a gap in a cluster of
    #: several pools, until another instance takes that index).
    by_index: dict[int, Instance] = attrs.field(factory=dict)
    #: How many instances are busy, kept by the instances for their readers.
    busy: Busy = attrs.field(factory=Busy)
    #: The cluster is shutting down: nothing is moved any more.
    closing: bool = False
    # Items queued with a failover wait: (due, order, item, pool name), earliest first, and
    # the event that wakes the task that moves them.
    _saturation: list[tuple[float, int, Item, str]] = attrs.field(init=False, factory=list)
    _saturation_order: itertools.count[int] = attrs.field(init=False, factory=itertools.count)
    _saturation_changed: anyio.Event | None = attrs.field(init=False, default=None)

    @property
    def only(self) -> PoolState:
        """The pool of a cluster of one pool."""
        (pool,) = self.pools.values()
        return pool

    def instances(self) -> list[Instance]:
        """Every instance, in index order."""
        return [self.by_index[index] for index in sorted(self.by_index)]

    def add_instance(self, pool: PoolState, slot: int) -> Instance:
        """A new instance for *slot* of *pool* (not started), with the lowest index free: a
        cluster of one pool keeps its indices 0 to N-1 through scale(), as
        ``metrics().instances`` and sticky keys expect."""
        index = next(i for i in itertools.count() if i not in self.by_index)
        spec = pool.spec
        if pool.state is not None:
            spec = resolve_state(spec, pool.state.for_instance(index))
        instance = Instance(
            index=index,
            slot=slot,
            tool=pool.name,
            spec=spec,
            transport=self.transport,
            dispatcher=pool.dispatcher,
            policy=pool.policy,
            log=self.log.bind(tool=pool.name) if len(self.pools) > 1 else self.log,
            on_state=self.on_state,
            requeue=self.requeue,
            limiter=pool.limiter,
            clock=self.clock,
            busy=self.busy,
            failover=self.on_failover if pool.name in self.fallback else None,
        )
        self.by_index[index] = instance
        return instance

    def remove_instances(self, pool: PoolState, keep: int) -> None:
        """Forget *pool*'s instances from slot *keep* on, which have stopped."""
        for instance in pool.instances[keep:]:
            del self.by_index[instance.index]
        del pool.instances[keep:]
        pool.dispatcher.remove_slots(keep)
        pool.refresh_healthy()

    def metrics(self) -> ClusterMetrics:
        pools = self.pools.values()
        return ClusterMetrics(
            instances=tuple(instance.metrics() for instance in self.instances()),
            queued=sum(pool.dispatcher.queued(None) for pool in pools),
            pools=tuple(
                PoolMetrics(
                    name=pool.name,
                    tool=pool.spec.name,
                    instances=tuple(i.index for i in pool.instances),
                    queued=pool.dispatcher.queued(None),
                    paused=pool.limiter.paused,
                    failovers_out=pool.failovers_out,
                    failovers_in=pool.failovers_in,
                )
                for pool in pools
            ),
        )

    def close(self) -> None:
        self.closing = True
        if self._saturation_changed is not None:
            self._saturation_changed.set()

    def check_pinned(self, item: Item) -> PoolState:
        """The pool of an item pinned to an instance, which must still be healthy."""
        assert item.pool is not None
        assert item.target is not None
        pool = self.pools[item.pool]
        if item.target not in pool.healthy:
            raise self.no_healthy(pool, pool.instances[item.target].index)
        return pool

    def job_moved(self, lease: LeaseRequest, left: str) -> None:
        """A job that left pool *left* (rate-limited there) got its lease elsewhere."""
        assert lease.pool is not None
        gone, to = self.pools[left], self.pools[lease.pool]
        self._book_move(gone, to, reason="rate_limited", key=lease.key, lease=True, job=True)

    def instance(self, index: int) -> Instance:
        try:
            return self.by_index[index]
        except KeyError:
            indices = sorted(self.by_index)
            where = (
                f"in range(0, {len(indices)})"
                if indices == list(range(len(indices)))
                else f"one of the cluster's instances ({_ranges(indices)})"
            )
            raise ValueError(f"instance must be {where}, got {index!r}") from None

    def select(self, tool: str | None) -> list[PoolState]:
        """The pools a prompt for *tool* (a pool name, a tag or ``None``: any) may go to."""
        if tool is None:
            return list(self.pools.values())
        pool = self.pools.get(tool)
        if pool is not None:
            return [pool]
        tagged = [pool for pool in self.pools.values() if tool in pool.tags]
        if not tagged:
            tags = sorted({tag for pool in self.pools.values() for tag in pool.tags})
            known = ", ".join(list(self.pools) + tags)
            raise ValueError(f"no pool is named or tagged {tool!r}; the cluster has: {known}")
        return tagged

    def state_changed(self, instance: Instance) -> None:
        """*instance* left the per-prompt flip between ready and busy: it may have become
        unhealthy (failed, retired) or healthy again."""
        pool = self.pools[instance.tool]
        pool.refresh_healthy()
        if instance.state is InstanceState.FAILED and not self.closing:
            self.reroute_from(pool, instance.slot, why="has failed (restart budget spent)")

    def reroute_from(self, pool: PoolState, slot: int, *, why: str) -> None:
        """Slot *slot* of *pool* is gone for good: move its queued work to the healthy
        instances, of its pool or, failing that, of the next pool in the failover order."""
        index = pool.instances[slot].index
        for item in map(item_of, pool.dispatcher.take_private(slot)):
            if item.pinned:
                item.resolve(self.no_healthy(pool, index, why=why))
            else:
                self.requeue_in(pool, item)
        if not pool.healthy:
            for item in map(item_of, pool.dispatcher.take_movable()):
                self.requeue_in(pool, item)
            pool.dispatcher.fail_shared(self.no_healthy(pool, None))

    def requeue_in(self, pool: PoolState, item: Item) -> None:
        """Queue *item* again: in *pool* if it has a healthy instance, else in the next pool
        of the failover order, else fail it."""
        if pool.healthy:
            item.target = self.target_in(pool, item.key)
            pool.dispatcher.put_nowait(item)
            return
        following = self.next_pool(item, pool)
        if following is None:
            item.resolve(self.no_healthy(pool, None))
        else:
            self.move(item, pool, following, reason="failed")

    def no_healthy(
        self, pool: PoolState, index: int | None, *, why: str = "has failed (restart budget spent)"
    ) -> NoHealthyInstancesError:
        if index is not None:
            return NoHealthyInstancesError(
                f"instance {index} {why} and the prompt was pinned to it"
            )
        count = len(pool.instances)
        return NoHealthyInstancesError(
            f"all {count} instances of {pool.name!r} have failed (restart budget spent)"
        )

    def requeue(self, request: Request) -> None:
        """An attempt failed and may be retried: queue the request again."""
        if self.expired(request):
            return
        assert request.pool is not None
        pool = self.pools[request.pool]
        if request.pinned:
            if request.target not in pool.healthy:
                index = None if request.target is None else pool.instances[request.target].index
                request.resolve(self.no_healthy(pool, index))
            else:
                pool.dispatcher.put_nowait(request)
            return
        # Any instance may take the retry; the one that failed is restarting, so another
        # ready instance normally gets there first.
        request.target = None
        if pool.healthy:
            pool.dispatcher.put_nowait(request)
        else:
            self.requeue_in(pool, request)

    def target_in(self, pool: PoolState, key: str | None) -> int | None:
        """The slot of *pool* the routing picks for *key* (``None``: the pool's shared queue)."""
        if len(self.pools) == 1:
            return self.router.route(key, pool.healthy)
        index = self.router.route(key, pool.healthy_indices())
        return None if index is None else self.by_index[index].slot

    def place(self, item: Item, tool: str | None) -> PoolState:
        """Decide where a new, unpinned *item* goes; set its pool and target slot."""
        selected = self.select(tool)
        candidates = [pool for pool in selected if pool.healthy]
        if item.failovers and candidates:
            # A job moving on stays off the pools it left: among those it may go to, or, if
            # it left them all, on the next pool of the failover order (a job for one tool
            # whose pool is rate-limited for good must not go back to it forever).
            fresh = [pool for pool in candidates if pool.name not in item.failovers]
            if not fresh:
                onward = [self.next_pool(item, pool) for pool in candidates]
                fresh = [next((p for p in onward if p is not None), candidates[0])]
            candidates = fresh
        if not candidates:
            for pool in selected:
                following = self.next_pool(item, pool)
                if following is not None:
                    self.moved(item, pool, following, reason="failed")
                    candidates = [following]
                    break
            else:
                raise self.all_failed(selected)
        if isinstance(item, Request):
            candidates = self.taking(candidates, item.prompt)
        if len(candidates) == 1:
            pool = candidates[0]
            item.target = self.target_in(pool, item.key)
        else:
            # Across pools: a rate-limited pool only if every one is.
            open_pools = [pool for pool in candidates if not pool.limiter.paused] or candidates
            healthy = sorted(i for pool in open_pools for i in pool.healthy_indices())
            index = self.router.route(item.key, healthy)
            if index is None:
                pool = min(open_pools, key=PoolState.load)  # the first of the least busy
                item.target = None
            else:
                instance = self.by_index[index]
                pool, item.target = self.pools[instance.tool], instance.slot
        item.pool = pool.name
        return pool

    def all_failed(self, pools: list[PoolState]) -> NoHealthyInstancesError:
        if len(pools) == 1:
            return self.no_healthy(pools[0], None)
        names = ", ".join(repr(pool.name) for pool in pools)
        return NoHealthyInstancesError(
            f"every instance of {names} has failed (restart budget spent)"
        )

    @staticmethod
    def taking(pools: list[PoolState], prompt: str) -> list[PoolState]:
        """The pools whose tool can take *prompt*; if none can, the first one's error."""
        taking = [pool for pool in pools if pool.accepts(prompt)]
        if not taking:
            check_prompt(pools[0].spec, prompt)
        return taking

    # -- failover ---------------------------------------------------------------------------

    def next_pool(self, item: Item, pool: PoolState, *, leased: bool = False) -> PoolState | None:
        """The pool *item* moves to from *pool* (``None``: it stays): the next in the failover
        order that it has not left before, that has a healthy instance and that can take its
        prompt, preferring one that is not rate-limited itself. Pinned items never move; a
        lease's prompt (*leased*) does not either, but its lease's work may."""
        if (item.pinned and not leased) or pool.name not in self.fallback:
            return None
        at = self.fallback.index(pool.name)
        order = self.fallback[at + 1 :] + self.fallback[:at]
        prompt = item.prompt if isinstance(item, Request) else None
        fits = [
            self.pools[name]
            for name in order
            if name not in item.failovers
            and self.pools[name].healthy
            and (prompt is None or self.pools[name].accepts(prompt))
        ]
        if not fits:
            return None
        for following in fits:
            if not following.limiter.paused:
                return following
        # Every one is rate-limited too: waiting out the pause here is as good as there,
        # unless this pool has nobody left to wait.
        return None if pool.healthy else fits[0]

    def moved(self, item: Item, pool: PoolState, to: PoolState, *, reason: str) -> None:
        """Book *item*'s move from *pool* to *to*."""
        item.failovers += (pool.name,)
        lease = isinstance(item, LeaseRequest)
        self._book_move(pool, to, reason=reason, key=item.key, lease=lease)

    def _book_move(self, pool: PoolState, to: PoolState, *, reason: str, **context: object) -> None:
        """Count a move from *pool* to *to* in both pools' metrics, and log it."""
        pool.failovers_out += 1
        to.failovers_in += 1
        self.log.info("failover", pool=pool.name, to=to.name, reason=reason, **context)

    def recheck(self, item: Item, pool: PoolState) -> None:
        """After a put that waited for room in *pool*: the pool, or the instance the item was
        routed to, may have failed or been scaled away meanwhile, and nobody would take it.
        Route it again (to the next pool of the failover order, if need be), or fail it."""
        if not item.live:
            return
        if pool.healthy and (item.target is None or item.target in pool.healthy):
            return
        if not pool.dispatcher.withdraw(item):
            return  # taken already
        if item.pinned:
            assert item.target is not None
            item.resolve(self.no_healthy(pool, pool.instances[item.target].index))
        else:
            self.requeue_in(pool, item)

    def expired(self, item: Item) -> bool:
        """Fail *item* if it is a prompt past its deadline (one going back to a queue: a
        retry or a move), rather than queue it for an instance to find so later."""
        return isinstance(item, Request) and item.expired(self.clock())

    def move(self, item: Item, pool: PoolState, to: PoolState, *, reason: str) -> None:
        """Queue *item*, taken off *pool*'s queues (or never written), in pool *to*."""
        if self.expired(item):
            return
        self.moved(item, pool, to, reason=reason)
        item.pool = to.name
        if isinstance(item, Request):
            item.state = RequestState.QUEUED
        item.target = self.target_in(to, item.key)
        to.dispatcher.put_nowait(item)
        self.watch_saturation(item, to)

    def on_failover(self, request: Request, leased: bool) -> bool:
        """An instance's prompt was rate-limited, or its pool is paused: move it on (a lease's
        prompt cannot move alone: it fails, for its job to move); also move the pool's other
        queued work. Return whether the prompt was taken over."""
        assert request.pool is not None
        pool = self.pools[request.pool]
        following = self.next_pool(request, pool, leased=leased)
        if following is None:
            return False
        if leased:
            request.resolve(
                RateLimitedError(
                    f"the provider of {pool.name!r} rate-limited the prompt "
                    f"{request.prompt[:60]!r}, sent in a lease; its work may move to "
                    f"{following.name!r}",
                    tool=pool.name,
                    instance=pool.instances[request.target or 0].index,
                    prompt=request.prompt,
                )
            )
        else:
            self.move(request, pool, following, reason="rate_limited")
        for item in map(item_of, pool.dispatcher.take_movable()):
            self.fail_over_queued(item, pool, reason="rate_limited")
        return True

    def fail_over_queued(self, item: Item, pool: PoolState, *, reason: str) -> None:
        following = self.next_pool(item, pool)
        if following is None:
            pool.dispatcher.put_nowait(item)  # back where it was (at the end of its queue)
        else:
            self.move(item, pool, following, reason=reason)

    def watch_saturation(self, item: Item, pool: PoolState) -> None:
        """Move *item* on if it is still queued in *pool* ``failover_after`` seconds from now."""
        if self.failover_after is None or item.pinned or pool.name not in self.fallback:
            return
        due = self.clock() + self.failover_after
        entry = (due, next(self._saturation_order), item, pool.name)
        heapq.heappush(self._saturation, entry)
        if self._saturation[0] is entry and self._saturation_changed is not None:
            self._saturation_changed.set()

    async def move_saturated(self) -> None:
        """The task that moves items queued past ``failover_after`` (sleeping until the next
        one is due: nothing polls)."""
        while not self.closing:
            self._saturation_changed = anyio.Event()
            with anyio.move_on_at(self._saturation[0][0] if self._saturation else math.inf):
                await self._saturation_changed.wait()
            now = self.clock()
            while self._saturation and self._saturation[0][0] <= now and not self.closing:
                _, _, item, name = heapq.heappop(self._saturation)
                pool = self.pools[name]
                if not item.live or item.pool != name:
                    continue
                following = self.next_pool(item, pool)
                if following is None:
                    # Nowhere to go now (every other pool rate-limited, say): look again
                    # after another wait, as long as it is still queued here.
                    self.watch_saturation(item, pool)
                elif pool.dispatcher.withdraw(item):
                    self.move(item, pool, following, reason="saturated")


def item_of(queued: Queued) -> Item:
    """A dispatcher's item, as what the cluster queued: a prompt or a lease."""
    assert isinstance(queued, Request | LeaseRequest)
    return queued


def _ranges(indices: list[int]) -> str:
    """``0-3, 6`` for ``[0, 1, 2, 3, 6]``."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and runs[-1][-1] == index - 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs) or "none"
