"""Where each instance works: all in one directory, one directory each, or one git worktree each.

``none``
    every instance runs in ``--cwd``.
``dir``
    instance N runs in ``<cwd>/.aimcluster/instance-N`` (kept afterwards: tools keep their
    chat histories and caches there); path items are given to steps as absolute paths.
``worktree``
    instance N runs in its own git worktree of the repository that holds ``--cwd``, on a new
    branch ``aimcluster/<run>/instance-N`` started from ``HEAD``. Worktrees are removed at the
    end unless they hold uncommitted changes; branches that got commits are kept.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import attrs

from ._items import InputError
from ._spec import ToolSpec

__all__ = ["ISOLATIONS", "Isolation", "IsolationName", "isolate"]

IsolationName = Literal["none", "dir", "worktree"]
ISOLATIONS: tuple[IsolationName, ...] = ("none", "dir", "worktree")


@attrs.define
class Isolation:
    """The spec to launch with, and what the user should hear about at the end."""

    spec: ToolSpec
    notes: list[str] = attrs.field(factory=list)


def _git(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )


def _git_ok(*args: str, cwd: Path) -> str:
    result = _git(*args, cwd=cwd)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise InputError(f"git {' '.join(args)} failed: {message[-1] if message else '?'}")
    return result.stdout.strip()


@contextmanager
def isolate(
    mode: IsolationName, spec: ToolSpec, *, root: Path, count: int, run: str
) -> Iterator[Isolation]:
    """Prepare *count* working places for *spec*'s instances; clean up on the way out."""
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
        with _worktrees(spec, root=root, count=count, run=run) as isolation:
            yield isolation


@contextmanager
def _worktrees(spec: ToolSpec, *, root: Path, count: int, run: str) -> Iterator[Isolation]:
    if shutil.which("git") is None:
        raise InputError("--isolation worktree needs git, which was not found on PATH")
    top_result = _git("rev-parse", "--show-toplevel", cwd=root)
    if top_result.returncode != 0:
        raise InputError(f"--isolation worktree needs --cwd inside a git repository: {root}")
    top = Path(top_result.stdout.strip())
    if _git("rev-parse", "--verify", "-q", "HEAD", cwd=top).returncode != 0:
        raise InputError(f"--isolation worktree needs a commit to start from; {top} has none")
    head = _git_ok("rev-parse", "HEAD", cwd=top)
    subdir = root.resolve().relative_to(top.resolve())
    base = Path(tempfile.mkdtemp(prefix="aimcluster-worktrees-"))
    isolation = Isolation(attrs.evolve(spec, cwd=str(base / "instance-{instance}" / subdir)))
    if _git("status", "--porcelain", "--untracked-files=no", cwd=top).stdout.strip():
        isolation.notes.append(
            f"{top} has uncommitted changes; the worktrees start from HEAD {head[:12]} without them"
        )
    made: list[tuple[Path, str]] = []
    try:
        for index in range(count):
            path = base / f"instance-{index}"
            branch = f"aimcluster/{run}/instance-{index}"
            _git_ok("worktree", "add", "-q", "-b", branch, str(path), head, cwd=top)
            made.append((path, branch))
        yield isolation
    finally:
        for path, branch in made:
            isolation.notes.extend(_remove_worktree(top, path, branch, head))
        try:
            base.rmdir()
        except OSError:
            pass


def _remove_worktree(top: Path, path: Path, branch: str, head: str) -> list[str]:
    notes = []
    if _git("worktree", "remove", str(path), cwd=top).returncode != 0:
        notes.append(f"worktree {path} has uncommitted changes: kept (branch {branch})")
    tip = _git("rev-parse", "-q", "--verify", branch, cwd=top).stdout.strip()
    if tip == head:
        if not os.path.exists(path):
            _git("branch", "-q", "-D", branch, cwd=top)
    elif tip:
        count = _git("rev-list", "--count", f"{head}..{branch}", cwd=top).stdout.strip()
        notes.append(f"branch {branch} has {count} new commit(s)")
    return notes
