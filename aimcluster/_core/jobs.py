"""Jobs: short scripts of prompts run on one leased instance, scheduled across a cluster.

A :class:`Job` declares the resources it touches (by default its item). Jobs that share a
resource never overlap and run in submission order; all others run concurrently, up to the
cluster's size. :func:`run_jobs` yields a :class:`JobResult` for each job as it ends.

The scheduler starts a job only when every earlier job on each of its resources has ended *and*
a slot is free, so a job that waits for a resource never holds a slot another job could use.

A reply is not success by itself: a step whose reply matches a failure pattern (the tool's own
``ToolSpec.failure_replies``, such as aider's "Can't edit", or the caller's ``fail_on``) fails
the job, and a job's ``verify`` command, run in the instance's working directory while the job
still holds the instance, fails it with a non-zero exit.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._base.errors import (
    AimclusterError,
    ClusterClosedError,
    NoHealthyInstancesError,
    RateLimitedError,
)
from .._base.usage import Usage
from .._transport.local import _child_cwd

if TYPE_CHECKING:
    from .._base.spec import ToolSpec
    from .cluster import Cluster

__all__ = [
    "Job",
    "JobResult",
    "JobRun",
    "JobStatus",
    "ReplyFailedError",
    "VerifyFailedError",
    "VerifyResult",
    "Workspace",
    "run_jobs",
]

JobStatus = Literal["ok", "failed", "cancelled"]

# Errors after which running the job again cannot help: the cluster itself is gone.
_FATAL = (ClusterClosedError, NoHealthyInstancesError)

#: The most output of a verify command that is kept (its end: where the verdict usually is).
MAX_VERIFY_OUTPUT = 16 * 1024
#: How long the end of a verify command's output is read for once it has exited.
_VERIFY_DRAIN = 0.5


class Workspace(Protocol):
    """Where jobs' changes go (``--isolation worktree``). Both methods run while the job holds
    its instance: :meth:`prepare` before each attempt, :meth:`settle` after an attempt whose
    steps and checks all succeeded; an :class:`AimclusterError` from either fails the attempt."""

    async def prepare(self, job: Job, instance: int) -> None: ...

    async def settle(self, job: Job, instance: int) -> str:
        """Take the job's change: the commit that holds it, or ``""`` if it changed nothing."""
        ...


class ReplyFailedError(AimclusterError):
    """A step's reply says the step failed: it matches a failure pattern."""

    def __init__(self, *, step: int, prompt: str, pattern: str, reply: str, line: str) -> None:
        super().__init__(
            f"the reply to step {step} reports a failure (it matches {pattern!r}): {line!r}"
        )
        #: The step's number, from 1.
        self.step = step
        self.prompt = prompt
        #: The pattern that matched, and the whole reply.
        self.pattern = pattern
        self.reply = reply


class VerifyFailedError(AimclusterError):
    """The job's verify command exited non-zero, did not finish in time, or did not start."""

    def __init__(self, message: str, *, result: VerifyResult) -> None:
        super().__init__(message)
        self.result = result


@attrs.frozen(kw_only=True)
class VerifyResult:
    """What a job's verify command did."""

    #: The command line, as run (no shell).
    argv: tuple[str, ...]
    #: Its exit code (negative: killed by that signal); ``None`` if it did not run to its end.
    exit_code: int | None
    #: The end of its output, stdout and stderr together (at most ``MAX_VERIFY_OUTPUT``
    #: characters).
    output: str
    #: Seconds it took.
    elapsed: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError(f"expected a sequence of strings, got the string {value!r}")
    return tuple(value)


def _non_empty_strings(
    instance: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]
) -> None:
    if attribute.name == "steps" and not value:
        raise ValueError("a job needs at least one step")
    for element in value:
        if not isinstance(element, str):
            raise TypeError(f"{attribute.name} must hold strings, got {element!r}")


def _default_resources(job: Job) -> tuple[str, ...]:
    return (job.item,)


@attrs.frozen(kw_only=True)
class Job:
    """A short script of prompts, sent in order to one instance held for the whole job."""

    #: What the job is about (a path, an id); names it in results, logs and the journal.
    item: str
    #: The prompts, sent one after another through one :meth:`Cluster.lease`.
    steps: tuple[str, ...] = attrs.field(converter=_str_tuple, validator=_non_empty_strings)
    #: The lease's routing key: with ``sticky`` routing, jobs with one key share an instance.
    key: str | None = None
    #: What the job touches. Jobs that share any resource never run at the same time, and run
    #: in the order they were submitted. Defaults to ``(item,)``.
    resources: tuple[str, ...] = attrs.field(
        default=attrs.Factory(_default_resources, takes_self=True),
        converter=_str_tuple,
        validator=_non_empty_strings,
    )
    #: A command run (without a shell) in the instance's working directory once every step
    #: has its reply, while the job still holds the instance: a non-zero exit fails the job.
    verify: tuple[str, ...] | None = attrs.field(
        default=None, converter=attrs.converters.optional(_str_tuple)
    )
    #: The pool to run on, by name or tag (``None``: any). With a failover order the job may
    #: still move, as a whole, to another pool (see :attr:`JobResult.failovers`).
    tool: str | None = None


@attrs.frozen(kw_only=True)
class JobResult:
    """How one job ended."""

    #: The job.
    job: Job
    #: ``ok`` (every step got a reply), ``failed`` (a step failed, retries spent, or was
    #: refused with a ``ValueError``, never retried) or ``cancelled`` (stopped by
    #: :meth:`JobRun.stop` after its grace period).
    status: JobStatus
    #: The instance that ran the last attempt (``None`` if no instance was ever granted).
    instance: int | None
    #: The reply texts of the last attempt, one per step that got a reply.
    replies: tuple[str, ...]
    #: How many times the job was started (more than 1 only with ``retries``).
    attempts: int
    #: Wall-clock start and end (``time.time()``), for humans and journals.
    started_at: float
    ended_at: float
    #: Seconds the job took, waiting for its lease included (monotonic clock).
    elapsed: float
    #: The exception's class name and message when the job did not succeed.
    error_type: str | None = None
    error: str | None = None
    #: Seconds each reply of the last attempt took, one per entry of :attr:`replies`.
    timings: tuple[float, ...] = ()
    #: The working directory of the instance that ran the last attempt, if known.
    cwd: str | None = None
    #: When the job failed: what the tool printed last (the partial output of a crash or a
    #: timeout, the reply that reported a failure, the verify command's output).
    output: str | None = None
    #: What the job's verify command did, if it ran.
    verify: VerifyResult | None = None
    #: With a :class:`Workspace`: the commit that holds the job's change, ``""`` if it changed
    #: nothing; ``None`` without one, or if the job did not get that far.
    commit: str | None = None
    #: Tokens and cost of every reply the job got, over all its attempts, as the tool
    #: reported them (:attr:`ToolSpec.usage <aimcluster.ToolSpec.usage>`); ``None`` if none did.
    usage: Usage | None = None
    #: The pool whose instance ran the last attempt (``None`` if none was ever granted).
    tool: str | None = None
    #: The pools the job moved away from, in order: each time its provider rate-limited it
    #: there, it started again, from its first step, on the next pool of the failover order.
    failovers: tuple[str, ...] = ()

    @property
    def item(self) -> str:
        return self.job.item

    @property
    def ok(self) -> bool:
        return self.status == "ok"


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


class JobRun:
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
        self._cluster = cluster
        self._timeout = timeout
        if isinstance(fail_on, str):
            raise TypeError(f"fail_on must be a sequence of regexes, got the string {fail_on!r}")
        # Without fail_on, each pool's tool's own failure_replies (compiled on first use).
        self._fail_on: dict[str | None, list[re.Pattern[str]]] = {}
        if fail_on is not None:
            self._fail_on[None] = _compile(fail_on, "fail_on")
        for pool in cluster.pools.values():
            _compile(pool.spec.failure_replies, f"the failure_replies of {pool.name!r}")
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
        self._entered = False
        self._stack: AsyncExitStack | None = None
        self._wake: anyio.Event | None = None
        self._send: MemoryObjectSendStream[JobResult]
        self._receive: MemoryObjectReceiveStream[JobResult]

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

    async def __aenter__(self) -> JobRun:
        if self._entered:
            raise RuntimeError("a JobRun can be started only once")
        self._entered = True
        self._send, self._receive = anyio.create_memory_object_stream[JobResult](math.inf)
        async with AsyncExitStack() as stack:
            stack.enter_context(self._receive)
            task_group = await stack.enter_async_context(anyio.create_task_group())
            # Leaving the block early cancels the jobs instead of waiting for them.
            stack.callback(task_group.cancel_scope.cancel)
            task_group.start_soon(self._schedule)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None
        try:
            return await self._stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # A single error is raised as itself at the public boundary.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    def __aiter__(self) -> AsyncIterator[JobResult]:
        if self._entered:
            return self
        return self._run_and_iterate()

    async def _run_and_iterate(self) -> AsyncGenerator[JobResult, None]:
        async with self:
            async for result in self:
                yield result

    async def __anext__(self) -> JobResult:
        if not self._entered:
            raise RuntimeError("iterate a JobRun with 'async for', or enter it first")
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

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
                        patterns = self._patterns(session.tool, spec)
                        self._check_reply(patterns, number, step, reply.text)
                except BaseException:
                    if len(attempt.replies) < len(job.steps):
                        # Its last steps (a /drop, say) will not be sent: what the job left
                        # in the tool must not reach the next job on this instance.
                        session.recycle()
                    raise
                if job.verify is not None:
                    attempt.verify = await _run_verify(job.verify, attempt.cwd, self._timeout)
                    if not attempt.verify.ok:
                        raise VerifyFailedError(
                            _verify_message(attempt.verify), result=attempt.verify
                        )
                if self._workspace is not None:
                    attempt.commit = await self._workspace.settle(job, session.instance)
            finally:
                del self._active[session.instance]

    def _patterns(self, tool: str, spec: ToolSpec) -> list[re.Pattern[str]]:
        """What fails a reply: ``fail_on``, else the tool's own ``failure_replies``."""
        if None in self._fail_on:
            return self._fail_on[None]
        if tool not in self._fail_on:
            self._fail_on[tool] = _compile(spec.failure_replies, "failure_replies")
        return self._fail_on[tool]

    @staticmethod
    def _check_reply(patterns: list[re.Pattern[str]], number: int, prompt: str, text: str) -> None:
        for pattern in patterns:
            match = pattern.search(text)
            if match is not None:
                start = text.rfind("\n", 0, match.start()) + 1
                end = text.find("\n", match.end())
                line = text[start : len(text) if end == -1 else end]
                raise ReplyFailedError(
                    step=number, prompt=prompt, pattern=pattern.pattern, reply=text, line=line
                )


def _compile(patterns: Iterable[str], what: str) -> list[re.Pattern[str]]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ValueError(f"{what}: not a valid regex: {pattern!r} ({exc})") from None
    return compiled


def _output_of(error: Exception) -> str | None:
    """What the tool printed last, as the error holds it."""
    if isinstance(error, ReplyFailedError):
        return error.reply
    if isinstance(error, VerifyFailedError):
        return error.result.output
    for name in ("partial_output", "output"):
        value = getattr(error, name, None)
        if isinstance(value, str) and value:
            return value
    return None


def _verify_message(result: VerifyResult) -> str:
    command = shlex.join(result.argv)
    if result.exit_code is None:
        # The last line is the runner's own note in brackets: why it did not run to its end.
        reason = result.output.rstrip().rpartition("\n")[2].strip("[]")
        return f"the verify command {command!r}: {reason}"
    if result.exit_code < 0:
        return f"the verify command {command!r} was killed by signal {-result.exit_code}"
    return f"the verify command {command!r} exited with code {result.exit_code}"


async def _run_verify(
    argv: tuple[str, ...], cwd: str | None, timeout: float | None
) -> VerifyResult:
    """Run *argv* in *cwd*, in a session of its own; keep the end of its output.

    Whatever it leaves behind (an ``sh -c '... &'``) is killed with its process group, and so
    is everything when the job is cancelled or the command overruns *timeout*.
    """
    begin = anyio.current_time()
    tail = bytearray()
    try:
        process = await anyio.open_process(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return VerifyResult(
            argv=argv,
            exit_code=None,
            output=f"[it could not be started: {exc.strerror or exc}]",
            elapsed=anyio.current_time() - begin,
        )
    stdout = process.stdout
    assert stdout is not None
    read_all = anyio.Event()

    async def read() -> None:
        async for chunk in stdout:
            tail.extend(chunk)
            del tail[: -4 * MAX_VERIFY_OUTPUT]
        read_all.set()

    code: int | None = None
    async with process, anyio.create_task_group() as reading:
        reading.start_soon(read)
        # The command is done when it exits, not when its output closes: a child it left
        # behind may hold that open for as long as it lives.
        try:
            with anyio.fail_after(timeout):
                code = await process.wait()
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        # What it wrote before it exited is still in the pipe. The kill closes the group's
        # hold on it; one that left the group (setsid) is not waited for.
        with anyio.move_on_after(_VERIFY_DRAIN):
            await read_all.wait()
        reading.cancel_scope.cancel()
    if code is None:
        tail += f"\n[it did not finish within {timeout:g} s]".encode()
    output = tail.decode("utf-8", errors="replace")[-MAX_VERIFY_OUTPUT:]
    return VerifyResult(
        argv=argv, exit_code=code, output=output, elapsed=anyio.current_time() - begin
    )


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
