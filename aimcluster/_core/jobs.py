"""Jobs: short scripts of prompts, each run on one leased instance, and how each ended.

:func:`run_jobs <.scheduler.run_jobs>` schedules them across a cluster; a :class:`Workspace`
prepares each job's working place and takes its change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, Protocol

import attrs

from .._base.errors import ReplyFailedError, VerifyFailedError
from .._base.usage import Usage
from .verify import VerifyResult

__all__ = ["Job", "JobResult", "JobStatus", "Workspace"]

JobStatus = Literal["ok", "failed", "cancelled"]


class Workspace(Protocol):
    """Where jobs' changes go (``--isolation worktree``). Both methods run while the job holds
    its instance: :meth:`prepare` before each attempt, :meth:`settle` after an attempt whose
    steps and checks all succeeded; an :class:`AimclusterError` from either fails the attempt."""

    async def prepare(self, job: Job, instance: int) -> None: ...

    async def settle(self, job: Job, instance: int) -> str:
        """Take the job's change: the commit that holds it, or ``""`` if it changed nothing."""
        ...


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

    @property
    def failed_check(self) -> str | None:
        """Which check the job failed, if it did not pass: ``fail_on`` (a reply reported a
        failure), ``verify``, ``conflict`` (its change did not land), else the error's class;
        ``None`` if it passed."""
        if self.ok:
            return None
        return _CHECKS.get(self.error_type or "", self.error_type)


#: The checks a job can fail, by the error that failed it. ``ConflictError`` is the command
#: line's: a job whose change did not land on the result branch.
_CHECKS = {
    ReplyFailedError.__name__: "fail_on",
    VerifyFailedError.__name__: "verify",
    "ConflictError": "conflict",
}
