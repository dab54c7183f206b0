"""Results that land: each job's change committed on its instance's branch, and at the end every
item's commit, in item order, on one branch for the run (``--isolation worktree``).

Theory of operation
-------------------
A run has a *key* (the id of the run that began it) and a *base* (the commit that was ``HEAD``
then). Instance N works in a git worktree on the branch ``aimcluster/<key>/instance-N``, started
from the base. The worktrees live in the repository's own git directory,
``.git/aimcluster/<key>/instance-N``: out of the user's tree (``git status`` does not list them,
and a later run's glob does not pick up their files), and out of the system temp directory,
which may be cleaned under a paused run.

Before a job, its worktree is put back to its branch's last commit (``git reset --hard`` and
``git clean -fd``) unless the job before it there ended with a commit: a failed, cancelled or
killed job's half edit is discarded, never applied twice. After a job whose steps (and checks)
all succeeded, everything in the worktree is staged (``git add -A``) and, if the tree differs,
committed as one commit on top of the branch's last commit, whatever commits the tool made
itself: one commit per item, carrying the trailer ``Aimcluster-Item: "<item as JSON>"``. The
trailer, not the journal, is what finds an item's commit later: a process killed after the
commit and before the journal record leaves a commit the next run can still find.

At the end, the commits of the items that are done are cherry-picked, in item order, onto the
base, in a scratch worktree; the outcome becomes the result branch (``aimcluster/run-<key>``
unless named). An item whose commit does not apply is failed with the conflicting paths (a
record in the journal, a line in the summary) and its commit stays on its instance's branch.
The result branch is built again from the base at the end of every run of the key, so a resumed
run's branch holds every item done so far, each once.

A state file next to the journal (``<journal>`` with the suffix ``.worktrees.json``) names the
key, the base, the branches and the worktrees: a run with the same journal reuses them. Once
every item is done and landed, the instance branches and the state file are deleted (the result
branch holds every change); otherwise they are kept for the resume. Worktrees are removed at the
end of each run unless ``keep`` is asked; a resume adds them again on their branches.

Every git call is ``anyio.run_process`` with an argv list (never a shell), file names go as
arguments after ``--`` or come back NUL-separated (``-z``), so any name git can store works.

This module owns :class:`Worktrees` (the worktree around each job, the landing, the cleanup,
the state file); :mod:`.worktree_open` opens them, :mod:`.landing` builds the result branch and
:mod:`.git` runs git.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import attrs

from aimcluster import Job, JobResult

from .git import Git, GitError, commit_message, remove_worktree
from .landing import Landing, cherry_pick, conflict_result, item_commits, pick_commit

if TYPE_CHECKING:
    from .journal import Journal

__all__ = [
    "STATE_VERSION",
    "Place",
    "Worktrees",
    "state_path_for",
]

#: The state file's format.
STATE_VERSION = 1


# -- the worktrees ------------------------------------------------------------------------------


def state_path_for(journal: str | os.PathLike[str]) -> Path:
    """Where the worktree state of the run journaled in *journal* is kept."""
    path = Path(journal)
    return path.with_name(path.stem + ".worktrees.json")


@attrs.define(eq=False)
class Place:
    """One instance's worktree. Only the job holding the instance touches it."""

    path: Path
    branch: str
    #: The commit the branch is at after the last job's commit, and its tree.
    tip: str = ""
    tree: str = ""
    #: Whether the worktree may hold changes that no commit took: put back before the next job.
    dirty: bool = False


@attrs.define(eq=False)
class Worktrees:
    """A run's worktrees, branches and result branch; make it with :func:`open_worktrees`.

    :meth:`prepare` and :meth:`settle` run around each job on the instance it holds,
    :meth:`land` once the jobs have ended, :meth:`close` last.
    """

    git: Git
    #: The main worktree's top directory, and the shared git directory.
    top: Path
    git_dir: Path
    #: Where ``--cwd`` is, relative to :attr:`top`: the instances work there in their worktrees.
    subdir: Path
    key: str
    base: str
    result_branch: str
    #: Branches of every instance the run (key) ever had, by index.
    branches: list[str]
    places: dict[int, Place]
    #: The jobs of the run, in item order, done ones included, and the items done before it.
    jobs: Sequence[Job]
    done: frozenset[str]
    #: The commit each item's last ``ok`` journal record names.
    journaled: Mapping[str, str]
    state_path: Path | None
    keep: bool
    notes: list[str] = attrs.field(factory=list)
    landing: Landing | None = None
    #: Set by :meth:`land`: every item is done and landed.
    complete: bool = False
    #: The commit the run last wrote to :attr:`result_branch` (``""``: none yet, the branch
    #: must not exist; ``None``: unknown, from a state file that did not record it).
    result_tip: str | None = ""
    #: The index of the run's first instance: in a cluster of several pools, a pool's
    #: instances are numbered after those of the pools before it (:attr:`branches` holds
    #: names, never made, for the indices below it).
    first: int = 0
    #: Whether a later run may resume this one. If not (a compare run), the instance branches
    #: are deleted once every commit they hold has landed, done or not every item is.
    resumable: bool = True

    @property
    def instance_branches(self) -> list[str]:
        """The branches of this run's instances (those from :attr:`first` on)."""
        return self.branches[self.first :]

    def _branches_needed(self, conflicts: bool) -> bool:
        """Whether the instance branches hold something yet to land: a resume's commits, or
        those of items that conflicted."""
        return not self.complete and (self.resumable or conflicts)

    @property
    def home(self) -> Path:
        """Where this run's worktrees are."""
        return self.git_dir / "aimcluster" / self.key

    @property
    def cwd_template(self) -> str:
        """The instances' working directory, with ``{instance}`` for the index."""
        return str(self.home / "instance-{instance}" / self.subdir)

    # -- around each job --------------------------------------------------------------------

    async def prepare(self, job: Job, instance: int) -> None:
        """Put *instance*'s worktree back to its last commit if a job may have left changes."""
        place = self.places[instance]
        if place.dirty:
            await self.git.run("reset", "-q", "--hard", place.tip, cwd=place.path)
            await self.git.run("clean", "-q", "-f", "-d", cwd=place.path)
        # Until the job's change is committed, whatever is in the worktree is unfinished.
        place.dirty = True

    async def settle(self, job: Job, instance: int) -> str:
        """Commit the job's change on *instance*'s branch: the commit, or ``""`` for no change.

        Runs shielded (a stop does not cut a commit in half), for at most ``GIT_TIMEOUT``
        seconds per command.
        """
        place = self.places[instance]
        with anyio.CancelScope(shield=True):
            await self.git.run("add", "-A", "--", ".", cwd=place.path)
            tree = await self.git.out("write-tree", cwd=place.path)
            if tree == place.tree:
                # No change. Commits the tool made (that undo each other) may have moved the
                # branch: harmless, as the next commit's parent is the tip, not the branch.
                place.dirty = False
                return ""
            _, stdout, _ = await self.git.run(
                "commit-tree",
                tree,
                "-p",
                place.tip,
                cwd=place.path,
                input=commit_message(job.item, self.key),
            )
            commit = stdout.decode().strip()
            await self.git.run("update-ref", f"refs/heads/{place.branch}", commit, cwd=place.path)
            place.tip, place.tree, place.dirty = commit, tree, False
        return commit

    # -- at the end ---------------------------------------------------------------------------

    async def land(
        self,
        results: Sequence[JobResult],
        *,
        journal: Journal | None = None,
        fingerprints: Mapping[str, str] | None = None,
    ) -> tuple[list[JobResult], int]:
        """Build the result branch from every done item's commit, in item order.

        An item whose commit conflicts is failed: its result is replaced by a failed one (and
        journaled), or one is added for an item done before this run. Returns the results and
        how many items done before this run are failed now.
        """
        try:
            return await self._land(results, journal=journal, fingerprints=fingerprints)
        except GitError as exc:
            # The commits are on the instance branches, which are kept: a resume lands them.
            self.notes.append(f"the result branch {self.result_branch} was not updated: {exc}")
            self.complete = False
            return list(results), 0

    async def _land(
        self,
        results: Sequence[JobResult],
        *,
        journal: Journal | None,
        fingerprints: Mapping[str, str] | None,
    ) -> tuple[list[JobResult], int]:
        by_item = {result.item: result for result in results}
        found = await item_commits(self.git, self.top, self.base, self.branches)
        picks: list[tuple[Job, str, str]] = []
        unchanged: list[str] = []
        done_items = 0
        for job in self.jobs:
            result = by_item.get(job.item)
            if result is not None and not result.ok:
                continue
            if result is None and job.item not in self.done:
                continue
            done_items += 1
            pick = pick_commit(job.item, result, found, self.journaled)
            if pick is None and result is None and job.item in self.journaled:
                # Done and landed by an earlier, completed run of this journal: not this
                # branch's to hold.
                continue
            if pick is None:
                unchanged.append(job.item)
            else:
                picks.append((job, *pick))
        tip, landed, conflicts = await cherry_pick(
            self.git, self.top, self.base, self.home / "result", picks
        )
        branch = await self._write_result(tip)
        replaced = list(results)
        reopened = 0
        for conflict in conflicts:
            failed = conflict_result(conflict, by_item.get(conflict.item), self._job(conflict.item))
            if conflict.item in by_item:
                replaced[replaced.index(by_item[conflict.item])] = failed
            else:
                replaced.append(failed)
                reopened += 1
            if journal is not None:
                fingerprint = (fingerprints or {}).get(conflict.item)
                await journal.append(failed, job=fingerprint)
        self.complete = not conflicts and done_items == len(self.jobs)
        self.landing = Landing(
            branch=branch,
            base=self.base,
            tip=tip,
            commits=tuple(landed),
            unchanged=tuple(unchanged),
            conflicts=tuple(conflicts),
            kept_branches=(
                tuple(self.instance_branches)
                if self.keep or self._branches_needed(bool(conflicts))
                else ()
            ),
            kept_worktrees=tuple(str(p.path) for p in self.places.values()) if self.keep else (),
        )
        return replaced, reopened

    async def _write_result(self, tip: str) -> str:
        """Point the result branch at *tip*, unless someone else moved it since the run last
        wrote it: then the result goes to a new branch, and the user's commits stay where they
        are. Returns the branch written."""
        ref = f"refs/heads/{self.result_branch}"
        _, stdout, _ = await self.git.run(
            "rev-parse", "-q", "--verify", ref, cwd=self.top, check=False
        )
        current = stdout.decode().strip()
        if self.result_tip is not None and current not in ("", self.result_tip):
            # A commit the user made on the result branch (as a conflict's message tells them
            # to) is not thrown away by the next run's rebuild.
            return await self._write_elsewhere(tip)
        # Compare and swap with what was read: a change made meanwhile is not overwritten.
        await self.git.run("update-ref", ref, tip, current, cwd=self.top)
        self.result_tip = tip
        self.save()
        return self.result_branch

    async def _write_elsewhere(self, tip: str) -> str:
        for number in range(2, 1000):
            branch = f"{self.result_branch}-{number}"
            if await self.git.ok(
                "check-ref-format", "--branch", branch, cwd=self.top
            ) and await self.git.ok("update-ref", f"refs/heads/{branch}", tip, "", cwd=self.top):
                self.notes.append(
                    f"the result branch {self.result_branch} has moved since this run wrote "
                    f"it (commits of yours?); it is left as it is, and this run's result is "
                    f"on {branch}"
                )
                return branch
        raise GitError(
            ("update-ref", f"refs/heads/{self.result_branch}"),
            1,
            "the result branch moved, and no free name was found for the result",
        )

    def _job(self, item: str) -> Job:
        return next(job for job in self.jobs if job.item == item)

    async def close(self) -> None:
        """Remove the worktrees (unless kept); drop the instance branches and the state once
        the run is complete (or, not resumable, once all they hold has landed); say what is
        left."""
        if self.keep:
            self.notes.append(f"worktrees kept in {self.home} (--keep-worktrees)")
            return
        # Every instance the run ever had, not only this run's: a resume with fewer instances
        # than the run that began it would otherwise leave the others' worktrees, and with
        # them their branches (git keeps a branch that a worktree has checked out).
        for index in range(self.first, len(self.branches)):
            await remove_worktree(self.git, self.top, self.home / f"instance-{index}")
        # A landing that failed (a git error) leaves everything for a look, or a resume.
        landing = self.landing
        if landing is not None and not self._branches_needed(bool(landing.conflicts)):
            left = [
                branch
                for branch in self.instance_branches
                if await self.git.ok(
                    "rev-parse", "-q", "--verify", f"refs/heads/{branch}", cwd=self.top
                )
                and not await self.git.ok("branch", "-q", "-D", branch, cwd=self.top)
            ]
            if left:
                # The state names them: a later run of this journal finds them again.
                self.notes.append(
                    f"the instance branches {', '.join(left)} could not be deleted; "
                    "delete them by hand (git branch -D)"
                )
                return
            if self.state_path is not None:
                self.state_path.unlink(missing_ok=True)
            with_rmdir(self.home)
        elif self.resumable:
            self.notes.append(
                f"the instance branches ({', '.join(self.instance_branches)}) are kept: they "
                "hold the commits of a resume, and of any item that conflicted"
            )
        else:
            self.notes.append(
                f"the instance branches ({', '.join(self.instance_branches)}) are kept: they "
                "hold the commits of the items that did not land"
            )

    # -- the state file -----------------------------------------------------------------------

    def save(self) -> None:
        """Write the state file (atomically: a crash leaves the old one or the new one)."""
        if self.state_path is None:
            return
        state = {
            "v": STATE_VERSION,
            "repo": str(self.top),
            "key": self.key,
            "base": self.base,
            "result_branch": self.result_branch,
            "result_tip": self.result_tip,
            "instances": [
                {"branch": branch, "worktree": str(self.home / f"instance-{index}")}
                for index, branch in enumerate(self.branches)
            ],
        }
        temporary = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(state, file, indent=2, ensure_ascii=True)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.state_path)


def with_rmdir(path: Path) -> None:
    """Remove *path* and its parent ``aimcluster`` directory if they are empty."""
    for directory in (path, path.parent):
        try:
            directory.rmdir()
        except OSError:
            return
