"""Running git for ``--isolation worktree``, and the commit message that names a commit's item.

:class:`Git` runs one git command as an argv list (never a shell), away from the user's
environment variables, hooks, editor and pager; :class:`GitError` says which command failed
and how. The commit message format (:func:`commit_message`, :func:`item_of_message`) is what
finds an item's commit later: its trailer, not the journal, names the item.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio

from aimcluster import AimclusterError

__all__ = [
    "Git",
    "GitError",
    "commit_message",
    "item_of_message",
    "remove_worktree",
]

#: The trailer that names a commit's item, as a JSON string (one line, any name).
ITEM_TRAILER = "Aimcluster-Item"
#: How long one git command may take before the run gives up on it.
GIT_TIMEOUT = 120.0
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


async def remove_worktree(git: Git, top: Path, path: Path) -> None:
    """Remove the worktree at *path*, changes and all, and forget it."""
    if await anyio.Path(path).exists():
        await git.run("worktree", "remove", "--force", str(path), cwd=top, check=False)
        if await anyio.Path(path).exists():
            await anyio.to_thread.run_sync(
                functools.partial(shutil.rmtree, path, ignore_errors=True)
            )
    await git.run("worktree", "prune", cwd=top, check=False)
