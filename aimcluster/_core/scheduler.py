"""The scheduler: jobs run on leased instances, ordered by the resources they share.

A :class:`Job` declares the resources it touches (by default its item). Jobs that share a
resource never overlap and run in submission order; all others run concurrently, up to the
cluster's size. :func:`run_jobs` yields a :class:`JobResult` for each job as it ends.

The scheduler starts a job only when every earlier job on each of its resources has ended *and*
a slot is free, so a job that waits for a resource never holds a slot another job could use.

A reply is not success by itself: a step whose reply matches a failure pattern (the tool's own
``ToolSpec.failure_replies``, such as aider's "Can't edit", or the caller's ``fail_on``) fails
the job, and a job's ``verify`` command (:mod:`.verify`), run in the instance's working
directory while the job still holds the instance, fails it with a non-zero exit.
"""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import anyio
import attrs
from anyio.streams.memory import MemoryObjectSendStream

from .._base.errors import (
    AimclusterError,
    ClusterClosedError,
    NoHealthyInstancesError,
    RateLimitedError,
    ReplyFailedError,
    VerifyFailedError,
)
from .._base.usage import Usage
from .._transport.local import _child_cwd
from .checks import ReplyCheck
from .jobs import Job, JobResult, JobStatus, Workspace
from .stream import ResultStream
from .verify import VerifyResult, run_verify, verify_failure

if TYPE_CHECKING:
    from .cluster import Cluster

__all__ = ["JobRun", "run_jobs"]

# Errors after which running the job again cannot help: the cluster itself is gone.
_FATAL = (ClusterClosedError, NoHealthyInstancesError)


@attrs.define(eq=False)
class _Node:
    """A job in the scheduler: how many earlier jobs it still waits for, and who waits for it."""

    index: int
    job: Job
    waiting: int = 0
    successors: list[_Node] = attrs.field(factory=list)
    started: bool = False


@attrs.define(eq=False)
class _Attempt:
    """What the current attempt has got so far; a cancelled job reports it."""

    number: int = 0
    instance: int | None = None
    tool: str | None = None
    #: The pools the job left (never reset: a moved job stays off them).
    failovers: tuple[str, ...] = ()
    replies: list[str] = attrs.field(factory=list)
    timings: list[float] = attrs.field(factory=list)
    cwd: str | None = None
    verify: VerifyResult | None = None
    commit: str | None = None
    #: What the job's replies cost, over every attempt (never reset: each one was paid for).
    usage: Usage | None = None


class JobRun(ResultStream[JobResult]):
    """A running batch of jobs; create it with :func:`run_jobs`.

    ``async with run_jobs(...) as run:`` starts it, ``async for result in run`` yields results
    as jobs end, and leaving the block cancels whatever has not ended. A bare
    ``async for result in run_jobs(...)`` does the same in one statement; iterate it to the
    end (a ``break`` needs the ``async with`` form, to stop the jobs in the same task).
    """

    def __init__(
        self,
        cluster: Cluster,
        jobs: Iterable[Job],
        *,
        timeout: float | None,
        retries: int,
        concurrency: int | None,
        fail_on: Iterable[str] | None = None,
        workspace: Workspace | None = None,
        max_cost: float | None = None,
        max_tokens: int | None = None,
    ) -> None:
        if max_cost is not None and not max_cost > 0:
            raise ValueError(f"max_cost must be > 0, got {max_cost!r}")
        if max_tokens is not None and not max_tokens > 0:
            raise ValueError(f"max_tokens must be > 0, got {max_tokens!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")
        super().__init__()
        self._cluster = cluster
        self._timeout = timeout
        self._reply_check = ReplyCheck(
            fail_on, {pool.name: pool.spec for pool in cluster.pools.values()}
        )
        self._retries = retries
        self._concurrency = concurrency
        self._max_cost = max_cost
        self._max_tokens = max_tokens
        self._spent = Usage()
        self._budget_spent: str | None = None
        self._workspace = workspace
        self._nodes: list[_Node] = []
        self._ready: list[int] = []
        tails: dict[str, _Node] = {}
        for index, job in enumerate(jobs):
            if not isinstance(job, Job):
                raise TypeError(f"jobs must be aimcluster.Job objects, got {job!r}")
            node = _Node(index, job)
            for predecessor in {tails[r] for r in job.resources if r in tails}:
                predecessor.successors.append(node)
                node.waiting += 1
            for resource in job.resources:
                tails[resource] = node
            if node.waiting == 0:
                self._ready.append(index)
            self._nodes.append(node)
        self._running = 0
        self._stopping = False
        self._grace: float | None = None
        # The grace the first stop gave, and whether a later stop cut it short: what a
        # cancelled job's message states.
        self._first_grace: float | None = None
        self._hurried = False
        self._scopes: dict[_Node, anyio.CancelScope] = {}
        self._active: dict[int, Job] = {}
        self._wake: anyio.Event | None = None
        self._send: MemoryObjectSendStream[JobResult]

    # -- observing ------------------------------------------------------------------------

    @property
    def total(self) -> int:
        """How many jobs were submitted."""
        return len(self._nodes)

    @property
    def active(self) -> Mapping[int, Job]:
        """The job each instance is running now, by instance index."""
        return dict(self._active)

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping

    @property
    def spent(self) -> Usage:
        """What the replies so far cost, as the tool reported them."""
        return self._spent

    @property
    def budget_spent(self) -> str | None:
        """Why no more jobs start, if ``max_cost`` or ``max_tokens`` was reached: what was
        spent against which limit (``None``: the budget was not reached)."""
        return self._budget_spent

    @property
    def unstarted(self) -> list[Job]:
        """The jobs that have not started (after :meth:`stop`: those that never will)."""
        return [node.job for node in self._nodes if not node.started]

    # -- control --------------------------------------------------------------------------

    def stop(self, grace: float | None = None) -> None:
        """Start no more jobs; cancel those in flight after *grace* seconds (``None``: never).

        May be called again with a shorter grace (a second Ctrl-C). Cancelled jobs end with
        status ``cancelled``; iteration ends once every started job has ended.
        """
        self._stopping = True
        if grace is not None:
            if self._grace is None:
                self._first_grace = grace
            elif grace < self._grace:
                self._hurried = True
            self._grace = grace if self._grace is None else min(grace, self._grace)
            deadline = anyio.current_time() + grace
            for scope in self._scopes.values():
                scope.deadline = min(scope.deadline, deadline)
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- lifecycle ------------------------------------------------------------------------

    async def _start(self, stack: AsyncExitStack, send: MemoryObjectSendStream[JobResult]) -> None:
        self._send = send
        task_group = await stack.enter_async_context(anyio.create_task_group())
        # Leaving the block early cancels the jobs instead of waiting for them.
        stack.callback(task_group.cancel_scope.cancel)
        task_group.start_soon(self._schedule)

    # -- scheduling -----------------------------------------------------------------------

    def _limit(self) -> int:
        # Read each time: a cluster that is scaled up takes more jobs at once.
        return self._cluster.size if self._concurrency is None else self._concurrency

    async def _schedule(self) -> None:
        with self._send:
            async with anyio.create_task_group() as task_group:
                started = 0
                while started < len(self._nodes) and not self._stopping:
                    while self._ready and self._running < self._limit() and not self._stopping:
                        if self._over_budget():
                            break
                        node = self._nodes[heapq.heappop(self._ready)]
                        node.started = True
                        started += 1
                        self._running += 1
                        scope = anyio.CancelScope()
                        self._scopes[node] = scope
                        task_group.start_soon(self._run_node, node, scope)
                    if started == len(self._nodes) or self._stopping:
                        break
                    self._wake = anyio.Event()
                    await self._wake.wait()
                    self._wake = None

    def _over_budget(self) -> bool:
        """Whether the budget is spent; if so, stop as :meth:`stop` does, jobs in flight
        carrying on (what they spend still counts, and is reported)."""
        spent = self._spent
        if self._max_cost is not None and (spent.cost_usd or 0) >= self._max_cost:
            self._budget_spent = f"${spent.cost_usd:.4f} spent of max_cost ${self._max_cost:g}"
        elif self._max_tokens is not None and (spent.tokens or 0) >= self._max_tokens:
            self._budget_spent = f"{spent.tokens:,} tokens spent of max_tokens {self._max_tokens:,}"
        else:
            return False
        self.stop()
        return True

    def _finish(self, node: _Node) -> None:
        self._running -= 1
        del self._scopes[node]
        for successor in node.successors:
            successor.waiting -= 1
            if successor.waiting == 0:
                heapq.heappush(self._ready, successor.index)
        self._poke()

    async def _run_node(self, node: _Node, scope: anyio.CancelScope) -> None:
        attempt = _Attempt()
        started_at = time.time()
        start = anyio.current_time()
        error: Exception | None = None
        try:
            with scope:
                error = await self._attempts(node.job, attempt)
            status: JobStatus = "ok" if error is None else "failed"
            error_type = None if error is None else type(error).__name__
            message = None if error is None else str(error)
            output = None if error is None else _output_of(error)
            if scope.cancelled_caught:
                status, error_type = "cancelled", "Cancelled"
                message = self._cancelled_message()
            self._send.send_nowait(
                JobResult(
                    job=node.job,
                    status=status,
                    instance=attempt.instance,
                    replies=tuple(attempt.replies),
                    attempts=attempt.number,
                    started_at=started_at,
                    ended_at=time.time(),
                    elapsed=anyio.current_time() - start,
                    error_type=error_type,
                    error=message,
                    timings=tuple(attempt.timings),
                    cwd=attempt.cwd,
                    output=output,
                    verify=attempt.verify,
                    commit=attempt.commit,
                    usage=attempt.usage,
                    tool=attempt.tool,
                    failovers=attempt.failovers,
                )
            )
        finally:
            self._finish(node)

    def _cancelled_message(self) -> str:
        if self._hurried:
            return (
                f"cancelled by a second stop, before the end of the {self._first_grace:g} s "
                "grace period of the first"
            )
        return f"cancelled after the {self._grace:g} s grace period of the stop"

    async def _attempts(self, job: Job, attempt: _Attempt) -> Exception | None:
        """Run *job* until it succeeds or its retries are spent; return the last error."""
        error: AimclusterError | None = None
        number = 0
        while number <= self._retries:
            number += 1
            attempt.number, attempt.instance, attempt.replies = number, None, []
            attempt.timings, attempt.cwd, attempt.verify = [], None, None
            attempt.commit, attempt.tool = None, None
            try:
                await self._attempt(job, attempt)
            except RateLimitedError as exc:
                # The whole job moves to the next pool, from its first step (its workspace
                # is prepared afresh there); a move is not a retry.
                attempt.failovers += (exc.tool,)
                error = exc
                number -= 1
                if self._stopping:
                    break
                continue
            except _FATAL as exc:
                return exc
            except ValueError as exc:
                # A step the tool cannot take (a character its encoding lacks, a newline it
                # cannot read as one prompt) was refused before a byte was written: this job
                # fails, the others run, and trying again would be refused the same way.
                return exc
            except AimclusterError as exc:
                error = exc
                if self._stopping:
                    break
            else:
                return None
        return error

    async def _attempt(self, job: Job, attempt: _Attempt) -> None:
        lease = self._cluster._lease(job.key, instance=None, tool=job.tool, avoid=attempt.failovers)
        async with lease as session:
            attempt.instance, attempt.tool = session.instance, session.tool
            # The pools the job left, and those its lease moved away from while queued.
            attempt.failovers = session.failovers
            spec = session.spec
            attempt.cwd = _child_cwd(spec, session.instance) or os.getcwd()
            self._active[session.instance] = job
            try:
                if self._workspace is not None:
                    await self._workspace.prepare(job, session.instance)
                try:
                    for number, step in enumerate(job.steps, start=1):
                        reply = await session.send(step, timeout=self._timeout)
                        attempt.replies.append(reply.text)
                        attempt.timings.append(reply.elapsed)
                        if reply.usage is not None:
                            attempt.usage = (attempt.usage or Usage()) + reply.usage
                            self._spent += reply.usage
                        self._reply_check(session.tool, spec, number, step, reply.text)
                except BaseException:
                    if len(attempt.replies) < len(job.steps):
                        # Its last steps (a /drop, say) will not be sent: what the job left
                        # in the tool must not reach the next job on this instance.
                        session.recycle()
                    raise
                if job.verify is not None:
                    attempt.verify = await run_verify(job.verify, attempt.cwd, self._timeout)
                    if not attempt.verify.ok:
                        raise verify_failure(attempt.verify)
                if self._workspace is not None:
                    attempt.commit = await self._workspace.settle(job, session.instance)
            finally:
                del self._active[session.instance]


def _output_of(error: Exception) -> str | None:
    """What the tool printed last, as the error holds it."""
    if isinstance(error, ReplyFailedError):
        return error.reply
    if isinstance(error, VerifyFailedError):
        return error.output
    for name in ("partial_output", "output"):
        value = getattr(error, name, None)
        if isinstance(value, str) and value:
            return value
    return None


def run_jobs(
    cluster: Cluster,
    jobs: Iterable[Job],
    *,
    timeout: float | None = None,
    retries: int = 0,
    concurrency: int | None = None,
    fail_on: Iterable[str] | None = None,
    workspace: Workspace | None = None,
    max_cost: float | None = None,
    max_tokens: int | None = None,
) -> JobRun:
    """Run *jobs* on *cluster*; iterate the result to get each :class:`JobResult` as it ends.

    Each job holds one instance (:meth:`Cluster.lease`) while it sends its steps in order.
    Jobs that share a resource run one after another in submission order; the others run
    concurrently, at most *concurrency* (default: the cluster's size) at a time. A failed job
    does not stop the others or the jobs queued behind it on its resources. A step the tool
    cannot take (``send`` raises ``ValueError``) fails its job, with that error, at once.

    ::

        async with launch_cluster("mock", 4) as cluster:
            async for result in run_jobs(cluster, jobs):
                print(result.item, result.status)

    :param timeout: seconds each step's reply may take (default: ``ToolSpec.reply_timeout``);
        an instance that overruns is restarted
    :param retries: run a failed job again, from its first step, up to this many times
        (a job's steps are rarely idempotent: opt in)
    :param fail_on: regexes searched in each reply; a match fails the job at that step
        (default: the tool's own ``ToolSpec.failure_replies``; ``()``: none)
    :param workspace: prepares each job's working place and takes its change (a commit)
    :param max_cost: once the replies' reported cost (``Reply.usage``) reaches this many US
        dollars, start no new job (as :meth:`JobRun.stop` without a grace: jobs in flight
        finish); :attr:`JobRun.budget_spent` says so
    :param max_tokens: the same with input plus output tokens
    :raises ValueError: for a *fail_on* entry that is not a regex
    """
    return JobRun(
        cluster,
        jobs,
        timeout=timeout,
        retries=retries,
        concurrency=concurrency,
        fail_on=fail_on,
        workspace=workspace,
        max_cost=max_cost,
        max_tokens=max_tokens,
    )
