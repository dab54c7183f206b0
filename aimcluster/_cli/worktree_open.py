"""Opening a run's worktrees (``--isolation worktree``): the checks that git and a repository
with a commit are there, a fresh run's branches from ``HEAD``, or an earlier run's state file
read back to resume it, one worktree per instance, and the commits no journal record names taken
off again.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio

from aimcluster import Job

from .git import Git, item_of_message, remove_worktree
from .items import InputError
from .results import STATE_VERSION, Place, Worktrees

__all__ = ["open_worktrees"]


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
            await remove_worktree(git, top, Path(entry["worktree"]))
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
        place = Place(path=path, branch=branches[index])
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


async def _rewind_unrecorded(worktrees: Worktrees, place: Place, notes: list[str]) -> None:
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
