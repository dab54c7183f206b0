"""Building the result branch: each item's commit found on the instance branches, picked, and
cherry-picked in item order onto the base, and what landed or conflicted.

:class:`~aimcluster._cli.results.Worktrees` decides which items land and where the result goes;
the functions here find the commits (:func:`item_commits`, :func:`pick_commit`), apply them in
a scratch worktree (:func:`cherry_pick`) and turn a conflict into the item's failed result
(:func:`conflict_result`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
import attrs

from aimcluster import Job, JobResult

from .git import Git, GitError, item_of_message, remove_worktree

__all__ = [
    "Conflict",
    "LandedItem",
    "Landing",
    "cherry_pick",
    "conflict_result",
    "item_commits",
    "pick_commit",
]

#: Commits cherry-picked by one git process (an argv stays far below the system's limit).
_PICK_CHUNK = 500


@attrs.frozen(kw_only=True)
class LandedItem:
    """An item whose change is on the result branch."""

    item: str
    #: Its commit on its instance's branch, and the commit it became on the result branch.
    commit: str
    landed: str


@attrs.frozen(kw_only=True)
class Conflict:
    """An item whose commit does not apply on top of the items before it."""

    item: str
    commit: str
    #: The instance branch that keeps the commit.
    branch: str
    #: The paths that conflict.
    paths: tuple[str, ...]


@attrs.frozen(kw_only=True)
class Landing:
    """Where a run's results are: the result branch and what it holds."""

    #: The branch that holds every done item's change, and the commits it starts from and
    #: ends at.
    branch: str
    base: str
    tip: str
    #: The items with a change on :attr:`branch`, in item order.
    commits: tuple[LandedItem, ...]
    #: Items done that changed nothing.
    unchanged: tuple[str, ...]
    conflicts: tuple[Conflict, ...]
    #: The instance branches and worktrees left in place (for a resume, or as asked).
    kept_branches: tuple[str, ...] = ()
    kept_worktrees: tuple[str, ...] = ()


async def item_commits(
    git: Git, top: Path, base: str, branches: Sequence[str]
) -> dict[str, list[tuple[str, str]]]:
    """Every item's commits on *branches* since *base*: item -> [(commit, branch)], newest
    first."""
    found: dict[str, list[tuple[str, str]]] = {}
    for branch in branches:
        if not await git.ok("rev-parse", "-q", "--verify", f"refs/heads/{branch}", cwd=top):
            continue
        _, stdout, _ = await git.run(
            "log", "-z", "--format=%H%n%B", f"{base}..refs/heads/{branch}", cwd=top
        )
        for entry in stdout.decode("utf-8", "replace").split("\0"):
            commit, _, message = entry.partition("\n")
            item = item_of_message(message)
            if commit and item is not None:
                found.setdefault(item, []).append((commit, branch))
    return found


def pick_commit(
    item: str,
    result: JobResult | None,
    found: Mapping[str, list[tuple[str, str]]],
    journaled: Mapping[str, str],
) -> tuple[str, str] | None:
    """The commit (and its branch) that holds *item*'s change, if it has one."""
    candidates = found.get(item, [])
    wanted = []
    if result is not None and result.commit:
        wanted.append(result.commit)
    if item in journaled:
        wanted.append(journaled[item])
    for commit in wanted:
        for candidate in candidates:
            if candidate[0] == commit:
                return candidate
    # No record names it (the process died between the commit and the record, and the
    # item's next run found its change already there): the newest commit for the item.
    return candidates[0] if candidates else None


async def cherry_pick(
    git: Git, top: Path, base: str, scratch: Path, picks: Sequence[tuple[Job, str, str]]
) -> tuple[str, list[LandedItem], list[Conflict]]:
    """Cherry-pick *picks* in order onto *base* in a worktree added at *scratch*: (tip,
    landed, conflicts)."""
    if not picks:
        return base, [], []
    await remove_worktree(git, top, scratch)
    await git.run("worktree", "add", "-q", "--detach", str(scratch), base, cwd=top)
    conflicts: list[Conflict] = []
    branch_of = {commit: branch for _, commit, branch in picks}
    item_of = {commit: job.item for job, commit, _ in picks}
    try:
        commits = [commit for _, commit, _ in picks]
        for start in range(0, len(commits), _PICK_CHUNK):
            chunk = commits[start : start + _PICK_CHUNK]
            # An item whose change is already there (the same edit twice) gets an empty
            # commit, instead of stopping the sequence.
            code, _, stderr = await git.run(
                "cherry-pick", "--keep-redundant-commits", *chunk, cwd=scratch, check=False
            )
            while code != 0:
                stopped = await git.run(
                    "rev-parse", "-q", "--verify", "CHERRY_PICK_HEAD", cwd=scratch, check=False
                )
                commit = stopped[1].decode().strip()
                if stopped[0] != 0 or commit not in item_of:
                    raise GitError(("cherry-pick", *chunk), code, stderr)
                _, names, _ = await git.run(
                    "diff", "--name-only", "-z", "--diff-filter=U", cwd=scratch
                )
                paths = tuple(os.fsdecode(n) for n in names.split(b"\0") if n)
                conflicts.append(
                    Conflict(
                        item=item_of[commit],
                        commit=commit,
                        branch=branch_of[commit],
                        paths=paths,
                    )
                )
                code, _, stderr = await git.run("cherry-pick", "--skip", cwd=scratch, check=False)
        tip = await git.out("rev-parse", "HEAD", cwd=scratch)
        _, stdout, _ = await git.run("log", "-z", "--format=%H%n%B", f"{base}..HEAD", cwd=scratch)
    finally:
        with anyio.CancelScope(shield=True):
            await remove_worktree(git, top, scratch)
    landed_by_item: dict[str, str] = {}
    for entry in stdout.decode("utf-8", "replace").split("\0"):
        commit, _, message = entry.partition("\n")
        item = item_of_message(message)
        if commit and item is not None:
            landed_by_item.setdefault(item, commit)
    failed = {conflict.item for conflict in conflicts}
    landed = [
        LandedItem(item=job.item, commit=commit, landed=landed_by_item.get(job.item, ""))
        for job, commit, _ in picks
        if job.item not in failed
    ]
    return tip, landed, conflicts


def conflict_result(conflict: Conflict, result: JobResult | None, job: Job) -> JobResult:
    """*job* failed by *conflict*: its *result* turned failed, or a failed result made for an
    item done before this run (*result* ``None``)."""
    paths = ", ".join(json.dumps(path, ensure_ascii=False) for path in conflict.paths)
    message = (
        f"its change (commit {conflict.commit[:12]}) conflicts with the items before it in "
        f"{paths or 'the tree'}; the commit stays on {conflict.branch} (to take it by hand: "
        f"git cherry-pick {conflict.commit[:12]} on the result branch)"
    )
    if result is not None:
        return attrs.evolve(
            result,
            status="failed",
            error_type="ConflictError",
            error=message,
            commit=conflict.commit,
        )
    now = time.time()
    return JobResult(
        job=job,
        status="failed",
        instance=None,
        replies=(),
        attempts=0,
        started_at=now,
        ended_at=now,
        elapsed=0.0,
        error_type="ConflictError",
        error=message,
        commit=conflict.commit,
    )
