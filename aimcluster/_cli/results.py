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
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from aimcluster import AimclusterError, Job, JobResult

from .items import InputError

if TYPE_CHECKING:
    from .journal import Journal

__all__ = [
    "Conflict",
    "GitError",
    "LandedItem",
    "Landing",
    "Worktrees",
    "item_of_message",
    "open_worktrees",
    "state_path_for",
]

#: The trailer that names a commit's item, as a JSON string (one line, any name).
ITEM_TRAILER = "Aimcluster-Item"
#: The state file's format.
STATE_VERSION = 1
#: How long one git command may take before the run gives up on it.
GIT_TIMEOUT = 120.0
#: Commits cherry-picked by one git process (an argv stays far below the system's limit).
_PICK_CHUNK = 500
# Variables that would point git at another repository than the worktree it runs in.
_GIT_LOCATION_VARIABLES = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_NAMESPACE",
    "GIT_CEILING_DIRECTORIES",
)


class GitError(AimclusterError):
    """A git command failed."""

    def __init__(self, args: Sequence[str], exit_code: int | None, stderr: str) -> None:
        last = stderr.strip().splitlines()
        detail = last[-1] if last else "no message"
        code = "did not finish" if exit_code is None else f"exited with code {exit_code}"
        super().__init__(f"git {' '.join(args[:3])} {code}: {detail}")
        self.args_ = tuple(args)
        self.exit_code = exit_code
        self.stderr = stderr


class Git:
    """Runs git in one repository, with an identity for commits when the user has none."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)

    @classmethod
    def from_environment(cls) -> Git:
        env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_VARIABLES}
        env["GIT_TERMINAL_PROMPT"] = "0"
        # Commits are made by the program: no editor, no pager, no signing prompt.
        env["GIT_EDITOR"] = "true"
        env["GIT_PAGER"] = "cat"
        return cls(env)

    async def run(
        self, *args: str, cwd: Path, input: bytes | None = None, check: bool = True
    ) -> tuple[int, bytes, str]:
        """Run ``git args`` in *cwd*: (exit code, stdout, stderr).

        :raises GitError: if *check* and it exits non-zero, or it overruns ``GIT_TIMEOUT``
        """
        # The user's hooks are not run: a failing or slow hook (post-checkout on ``worktree
        # add``, prepare-commit-msg on ``cherry-pick``) would fail the landing of work that is
        # done, and a hook may prompt. With no input, stdin is /dev/null: git never reads the
        # terminal the run's display is on.
        argv = [
            "git",
            "-c",
            "commit.gpgSign=false",
            "-c",
            "core.quotePath=false",
            "-c",
            f"core.hooksPath={os.devnull}",
            *args,
        ]
        try:
            with anyio.fail_after(GIT_TIMEOUT):
                done = await anyio.run_process(
                    argv,
                    cwd=cwd,
                    input=input,
                    stdin=subprocess.DEVNULL if input is None else None,
                    env=self.env,
                    check=False,
                )
        except TimeoutError:
            raise GitError(args, None, f"no answer within {GIT_TIMEOUT:g} s") from None
        stderr = done.stderr.decode("utf-8", "replace")
        if check and done.returncode != 0:
            raise GitError(args, done.returncode, stderr)
        return done.returncode, done.stdout, stderr

    async def out(self, *args: str, cwd: Path) -> str:
        """The stripped stdout of ``git args`` (names decoded as the file system has them)."""
        _, stdout, _ = await self.run(*args, cwd=cwd)
        return os.fsdecode(stdout).strip()

    async def ok(self, *args: str, cwd: Path) -> bool:
        code, _, _ = await self.run(*args, cwd=cwd, check=False)
        return code == 0

    async def ensure_identity(self, cwd: Path) -> None:
        """Commit as ``aimcluster`` where the user has configured no name or e-mail."""
        for role in ("AUTHOR", "COMMITTER"):
            if not await self.ok("var", f"GIT_{role}_IDENT", cwd=cwd):
                self.env.setdefault(f"GIT_{role}_NAME", "aimcluster")
                self.env.setdefault(f"GIT_{role}_EMAIL", "aimcluster@localhost")


# -- commit messages ------------------------------------------------------------------------------


def commit_message(item: str, key: str) -> bytes:
    """One commit's message: the item in the subject (escaped if it is not printable UTF-8) and
    as a JSON trailer, which any name survives."""
    try:
        subject = item if item.isprintable() else json.dumps(item)[1:-1]
        subject.encode("utf-8")
    except UnicodeEncodeError:
        subject = json.dumps(item)[1:-1]
    trailer = json.dumps(item, ensure_ascii=True)
    return (f"aimcluster: {subject}\n\n{ITEM_TRAILER}: {trailer}\nAimcluster-Run: {key}\n").encode()


def item_of_message(message: str) -> str | None:
    """The item named by a commit message's trailer, if it has one."""
    prefix = f"{ITEM_TRAILER}: "
    for line in reversed(message.splitlines()):
        if line.startswith(prefix):
            try:
                value = json.loads(line[len(prefix) :])
            except ValueError:
                return None
            return value if isinstance(value, str) else None
    return None


# -- what landed --------------------------------------------------------------------------------


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


# -- the worktrees ------------------------------------------------------------------------------


def state_path_for(journal: str | os.PathLike[str]) -> Path:
    """Where the worktree state of the run journaled in *journal* is kept."""
    path = Path(journal)
    return path.with_name(path.stem + ".worktrees.json")


@attrs.define(eq=False)
class _Place:
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
    places: dict[int, _Place]
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

    async def _item_commits(self) -> dict[str, list[tuple[str, str]]]:
        """Every item's commits on the instance branches: item -> [(commit, branch)], newest
        first."""
        found: dict[str, list[tuple[str, str]]] = {}
        for branch in self.branches:
            if not await self.git.ok(
                "rev-parse", "-q", "--verify", f"refs/heads/{branch}", cwd=self.top
            ):
                continue
            _, stdout, _ = await self.git.run(
                "log", "-z", "--format=%H%n%B", f"{self.base}..refs/heads/{branch}", cwd=self.top
            )
            for entry in stdout.decode("utf-8", "replace").split("\0"):
                commit, _, message = entry.partition("\n")
                item = item_of_message(message)
                if commit and item is not None:
                    found.setdefault(item, []).append((commit, branch))
        return found

    def _pick(
        self,
        item: str,
        result: JobResult | None,
        found: Mapping[str, list[tuple[str, str]]],
    ) -> tuple[str, str] | None:
        """The commit (and its branch) that holds *item*'s change, if it has one."""
        candidates = found.get(item, [])
        wanted = []
        if result is not None and result.commit:
            wanted.append(result.commit)
        if item in self.journaled:
            wanted.append(self.journaled[item])
        for commit in wanted:
            for candidate in candidates:
                if candidate[0] == commit:
                    return candidate
        # No record names it (the process died between the commit and the record, and the
        # item's next run found its change already there): the newest commit for the item.
        return candidates[0] if candidates else None

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
        found = await self._item_commits()
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
            pick = self._pick(job.item, result, found)
            if pick is None and result is None and job.item in self.journaled:
                # Done and landed by an earlier, completed run of this journal: not this
                # branch's to hold.
                continue
            if pick is None:
                unchanged.append(job.item)
            else:
                picks.append((job, *pick))
        tip, landed, conflicts = await self._cherry_pick(picks)
        branch = await self._write_result(tip)
        replaced = list(results)
        reopened = 0
        for conflict in conflicts:
            failed = _conflict_result(
                conflict, by_item.get(conflict.item), self._job(conflict.item)
            )
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

    async def _cherry_pick(
        self, picks: Sequence[tuple[Job, str, str]]
    ) -> tuple[str, list[LandedItem], list[Conflict]]:
        """Cherry-pick *picks* in order onto the base in a scratch worktree: (tip, landed,
        conflicts)."""
        if not picks:
            return self.base, [], []
        scratch = self.home / "result"
        await self._remove_worktree(scratch)
        await self.git.run(
            "worktree", "add", "-q", "--detach", str(scratch), self.base, cwd=self.top
        )
        conflicts: list[Conflict] = []
        branch_of = {commit: branch for _, commit, branch in picks}
        item_of = {commit: job.item for job, commit, _ in picks}
        try:
            commits = [commit for _, commit, _ in picks]
            for start in range(0, len(commits), _PICK_CHUNK):
                chunk = commits[start : start + _PICK_CHUNK]
                # An item whose change is already there (the same edit twice) gets an empty
                # commit, instead of stopping the sequence.
                code, _, stderr = await self.git.run(
                    "cherry-pick", "--keep-redundant-commits", *chunk, cwd=scratch, check=False
                )
                while code != 0:
                    stopped = await self.git.run(
                        "rev-parse", "-q", "--verify", "CHERRY_PICK_HEAD", cwd=scratch, check=False
                    )
                    commit = stopped[1].decode().strip()
                    if stopped[0] != 0 or commit not in item_of:
                        raise GitError(("cherry-pick", *chunk), code, stderr)
                    _, names, _ = await self.git.run(
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
                    code, _, stderr = await self.git.run(
                        "cherry-pick", "--skip", cwd=scratch, check=False
                    )
            tip = await self.git.out("rev-parse", "HEAD", cwd=scratch)
            _, stdout, _ = await self.git.run(
                "log", "-z", "--format=%H%n%B", f"{self.base}..HEAD", cwd=scratch
            )
        finally:
            with anyio.CancelScope(shield=True):
                await self._remove_worktree(scratch)
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

    async def _remove_worktree(self, path: Path) -> None:
        await _remove_worktree(self.git, self.top, path)

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
            await self._remove_worktree(self.home / f"instance-{index}")
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


async def _remove_worktree(git: Git, top: Path, path: Path) -> None:
    """Remove the worktree at *path*, changes and all, and forget it."""
    if await anyio.Path(path).exists():
        await git.run("worktree", "remove", "--force", str(path), cwd=top, check=False)
        if await anyio.Path(path).exists():
            await anyio.to_thread.run_sync(
                functools.partial(shutil.rmtree, path, ignore_errors=True)
            )
    await git.run("worktree", "prune", cwd=top, check=False)


def with_rmdir(path: Path) -> None:
    """Remove *path* and its parent ``aimcluster`` directory if they are empty."""
    for directory in (path, path.parent):
        try:
            directory.rmdir()
        except OSError:
            return


def _conflict_result(conflict: Conflict, result: JobResult | None, job: Job) -> JobResult:
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


def _journaled_commits(records: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Item -> the commit its last ``ok`` record names (a later record without one clears it)."""
    commits: dict[str, str] = {}
    for record in records:
        item = record.get("item")
        if not isinstance(item, str) or record.get("status") != "ok":
            continue
        commit = record.get("commit")
        if isinstance(commit, str) and commit:
            commits[item] = commit
        else:
            commits.pop(item, None)
    return commits


def _load_state(path: Path | None, top: Path) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the worktree state {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("v") != STATE_VERSION:
        raise InputError(f"the worktree state {path} is not one this version of aimcluster wrote")
    if state.get("repo") != str(top):
        return None
    return state


async def open_worktrees(
    root: Path,
    count: int,
    *,
    run: str,
    jobs: Sequence[Job],
    done: Iterable[str] = (),
    records: Iterable[Mapping[str, Any]] = (),
    state_path: Path | None = None,
    result_branch: str | None = None,
    keep: bool = False,
    fresh: bool = False,
    first: int = 0,
    resumable: bool = True,
) -> Worktrees:
    """Make (or, with the state of an earlier run of the same journal, reuse) one worktree for
    each of *count* instances, for the repository that holds *root*.

    The instances are numbered from *first* (a pool of a cluster of several pools). A run that
    is not *resumable* deletes its instance branches once all they hold has landed.

    :raises InputError: if git is missing, *root* is not in a repository with a commit, or
        *result_branch* is not a valid branch name or names a branch that is not this run's
    """
    if shutil.which("git") is None:
        raise InputError("--isolation worktree needs git, which was not found on PATH")
    git = Git.from_environment()
    code, stdout, _ = await git.run("rev-parse", "--show-toplevel", cwd=root, check=False)
    if code != 0:
        raise InputError(f"--isolation worktree needs --cwd inside a git repository: {root}")
    top = Path(os.fsdecode(stdout).strip())
    if not await git.ok("rev-parse", "--verify", "-q", "HEAD", cwd=top):
        raise InputError(f"--isolation worktree needs a commit to start from; {top} has none")
    git_dir = Path(
        await git.out("rev-parse", "--path-format=absolute", "--git-common-dir", cwd=top)
    )
    await git.ensure_identity(top)
    subdir = Path(await git.out("rev-parse", "--show-prefix", cwd=root))
    notes: list[str] = []
    state = _load_state(state_path, top)
    if fresh and state is not None:
        # A fresh run starts from HEAD again; the old run's worktrees go, its branches stay.
        for entry in state["instances"]:
            await _remove_worktree(git, top, Path(entry["worktree"]))
        notes.append(
            f"--fresh: the earlier run's branches ({state['result_branch']}, "
            f"aimcluster/{state['key']}/instance-*) are left as they were"
        )
        state = None
    if state is None:
        head = await git.out("rev-parse", "HEAD", cwd=top)
        key, base, branches, ours = run, head, [], None
        _, status, _ = await git.run("status", "--porcelain", "--untracked-files=no", cwd=top)
        if status.strip():
            notes.append(
                f"{top} has uncommitted changes; the worktrees start from HEAD {head[:12]} "
                "without them"
            )
    else:
        key, base = str(state["key"]), str(state["base"])
        branches = [str(entry["branch"]) for entry in state["instances"]]
        ours = str(state["result_branch"])
    branch = result_branch or ours or f"aimcluster/run-{key}"
    # What the run last wrote there; a branch that is not the run's own must not exist yet.
    result_tip: str | None = ""
    if state is not None and branch == ours:
        recorded = state.get("result_tip", None)
        result_tip = recorded if isinstance(recorded, str) else None
    if not await git.ok("check-ref-format", "--branch", branch, cwd=top):
        raise InputError(f"--result-branch {branch!r} is not a valid branch name")
    _, listing, _ = await git.run("worktree", "list", "--porcelain", "-z", cwd=top)
    if f"branch refs/heads/{branch}".encode() in listing.split(b"\0"):
        raise InputError(
            f"the result branch {branch!r} is checked out; switch to another branch first "
            "(the run moves it), or name another with --result-branch"
        )
    if branch != ours and await git.ok(
        "rev-parse", "-q", "--verify", f"refs/heads/{branch}", cwd=top
    ):
        raise InputError(
            f"the branch {branch!r} already exists; name another with --result-branch "
            "(the run's results go there), or delete it"
        )
    worktrees = Worktrees(
        git=git,
        top=top,
        git_dir=git_dir,
        subdir=subdir,
        key=key,
        base=base,
        result_branch=branch,
        branches=branches,
        places={},
        jobs=jobs,
        done=frozenset(done),
        journaled=_journaled_commits(records),
        state_path=state_path,
        keep=keep,
        notes=notes,
        result_tip=result_tip,
        first=first,
        resumable=resumable,
    )
    while len(branches) < first + count:
        branches.append(f"aimcluster/{key}/instance-{len(branches)}")
    # Saved before the first worktree is added: a run killed at any point is found again.
    worktrees.save()
    pruned = False
    for index in range(first, first + count):
        path = worktrees.home / f"instance-{index}"
        place = _Place(path=path, branch=branches[index])
        if await anyio.Path(path / ".git").exists():
            # Left by a run that was killed, or kept: whatever it holds is not committed.
            place.dirty = True
        else:
            if not pruned:
                await git.run("worktree", "prune", cwd=top, check=False)
                pruned = True
            ref = f"refs/heads/{place.branch}"
            if await git.ok("rev-parse", "-q", "--verify", ref, cwd=top):
                await git.run("worktree", "add", "-q", str(path), place.branch, cwd=top)
            else:
                await git.run("worktree", "add", "-q", "-b", place.branch, str(path), base, cwd=top)
        place.tip = await git.out("rev-parse", f"refs/heads/{place.branch}", cwd=top)
        if state is not None:
            await _rewind_unrecorded(worktrees, place, notes)
        place.tree = await git.out("rev-parse", f"{place.tip}^{{tree}}", cwd=top)
        worktrees.places[index] = place
    return worktrees


async def _rewind_unrecorded(worktrees: Worktrees, place: _Place, notes: list[str]) -> None:
    """Take off the instance branch the commits no journal record names, of items not done:
    a run killed between an item's commit and its record. The item runs again from the state
    before that commit, so that its new commit holds all of its change (one on top would hold
    only what the new run added, and land alone)."""
    git, top = worktrees.git, worktrees.top
    recorded = set(worktrees.journaled.values())
    while place.tip != worktrees.base and place.tip not in recorded:
        message = await git.out("log", "-1", "--format=%B", place.tip, cwd=top)
        item = item_of_message(message)
        if item is None or item in worktrees.done:
            return
        parent = await git.out("rev-parse", f"{place.tip}^", cwd=top)
        ref = f"refs/heads/{place.branch}"
        await git.run("update-ref", ref, parent, place.tip, cwd=top)
        notes.append(
            f"took the commit {place.tip[:12]} of {item!r} off {place.branch}: no journal "
            "record names it (the run was stopped after it), so the item runs again"
        )
        place.tip, place.dirty = parent, True
