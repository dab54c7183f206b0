"""Where each instance works: all in one directory, one directory each, or one git worktree each.

``none``
    every instance runs in ``--cwd``.
``dir``
    instance N runs in ``<cwd>/.aimcluster/instance-N``, a directory of its own for what the
    tool keeps there (chat histories, caches, scratch files), kept afterwards. It is not a copy
    of the project: path items are given to steps as absolute paths, so every instance edits
    the one shared tree, and jobs on one file never overlap only because they share the file.
``worktree``
    instance N runs in its own git worktree of the repository that holds ``--cwd``, under
    ``.git/aimcluster/<run>/``; each job's change is committed on the instance's branch, and
    the run ends with every item's commit on one result branch (see :mod:`._results`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
import attrs

from aimcluster import Job, ToolSpec

from .git import GitError
from .items import InputError
from .results import Worktrees
from .worktree_open import open_worktrees

__all__ = ["ISOLATIONS", "Isolation", "IsolationName", "WorktreeOptions", "isolate"]

IsolationName = Literal["none", "dir", "worktree"]
ISOLATIONS: tuple[IsolationName, ...] = ("none", "dir", "worktree")


@attrs.define
class Isolation:
    """The spec to launch with, and what the user should hear about at the end."""

    spec: ToolSpec
    notes: list[str] = attrs.field(factory=list)
    #: With ``worktree``: the worktrees, which commit each job's change and land them all.
    workspace: Worktrees | None = None


@attrs.frozen(kw_only=True)
class WorktreeOptions:
    """What ``--isolation worktree`` needs besides the spec."""

    #: Every job of the run, in item order (those done before included), and the done items.
    jobs: Sequence[Job]
    done: Iterable[str] = ()
    #: The journal's records (the commits they name), and where the run's state is kept
    #: (``None``: nowhere, no resume).
    records: Sequence[Mapping[str, Any]] = ()
    state_path: Path | None = None
    result_branch: str | None = None
    keep: bool = False
    fresh: bool = False
    #: The event loop the git commands of the set-up and the clean-up run on.
    backend: str = "asyncio"


@contextmanager
def isolate(
    mode: IsolationName,
    spec: ToolSpec,
    *,
    root: Path,
    count: int,
    run: str,
    worktree: WorktreeOptions | None = None,
) -> Iterator[Isolation]:
    """Prepare *count* working places for *spec*'s instances; clean up on the way out.

    :raises InputError: if ``worktree`` cannot be set up (no git, no repository, no commit,
        a result branch that exists, a git command that fails)
    """
    if mode == "none":
        yield Isolation(attrs.evolve(spec, cwd=root))
    elif mode == "dir":
        base = root / ".aimcluster"
        for index in range(count):
            (base / f"instance-{index}").mkdir(parents=True, exist_ok=True)
        isolation = Isolation(attrs.evolve(spec, cwd=str(base / "instance-{instance}")))
        yield isolation
        isolation.notes.append(f"instance working directories are kept in {base}")
    else:
        options = worktree or WorktreeOptions(jobs=())
        try:
            worktrees = anyio.run(
                functools.partial(
                    open_worktrees,
                    root,
                    count,
                    run=run,
                    jobs=options.jobs,
                    done=options.done,
                    records=options.records,
                    state_path=options.state_path,
                    result_branch=options.result_branch,
                    keep=options.keep,
                    fresh=options.fresh,
                ),
                backend=options.backend,
            )
        except GitError as exc:
            # Nothing ran yet: like a bad option, a repository git cannot set up is the
            # user's to fix, told in git's words, not a traceback.
            raise InputError(f"--isolation worktree could not be set up: {exc}") from None
        isolation = Isolation(
            attrs.evolve(spec, cwd=worktrees.cwd_template), worktrees.notes, worktrees
        )
        try:
            yield isolation
        finally:
            anyio.run(worktrees.close, backend=options.backend)
