"""Local tool processes, through pipes or a pseudo-terminal: the transport's public face.

:class:`LocalTransport` prepares what a tool starts with (its files, environment, working
directory, and its pipes or pty) and hands the start to :mod:`.spawn`; the handle it returns is
:mod:`.handle`'s, and how nothing the tool starts outlives the cluster is :mod:`.containment`'s.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
import termios
from typing import TYPE_CHECKING

from .._base.errors import ToolNotFoundError
from ..abc import ProcessHandle, Transport
from .handle import _FdProcess
from .spawn import _open_process

if TYPE_CHECKING:
    from .._base.spec import ToolSpec

__all__ = ["LocalTransport"]

_PTY_ROWS, _PTY_COLS = 50, 250  # wide, so that tools do not wrap replies at 80 columns


def _child_env(spec: ToolSpec, instance: int) -> dict[str, str] | None:
    if not spec.env:
        return None
    env = dict(os.environ)
    env.update(
        {name: value.replace("{instance}", str(instance)) for name, value in spec.env.items()}
    )
    return env


def _child_cwd(spec: ToolSpec, instance: int) -> str | None:
    if spec.cwd is None:
        return None
    return os.fspath(spec.cwd).replace("{instance}", str(instance))


def write_files(spec: ToolSpec, instance: int) -> None:
    """Write *spec*'s ``files`` for slot *instance*, ``{instance}`` replaced in paths and
    contents (``{state}`` the cluster has replaced already). Mode 0600 and directories 0700:
    a tool's configuration may hold credentials. A relative path is taken from the tool's
    working directory. Rewritten at each start, so that a restarted
    process finds them as configured whatever the last one did to them."""
    if not spec.files:
        return
    number = str(instance)
    cwd = _child_cwd(spec, instance) or os.getcwd()
    for path, content in spec.files.items():
        target = os.path.join(cwd, path.replace("{instance}", number))  # relative: from cwd
        os.makedirs(os.path.dirname(target) or ".", mode=0o700, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "w", encoding="utf-8") as file:
            file.write(content.replace("{instance}", number))


class LocalTransport(Transport):
    """Runs each tool instance as a child process of this Python process.

    Every child starts in a new session, so that stopping it signals its whole process group,
    grandchildren included. On Linux, a child dies with this process however it ends
    (``PR_SET_PDEATHSIG``), and, where cgroup v2 is writable here, runs in a cgroup of its
    own, so that stopping it also kills the daemons it started.

    :param cgroups: put each child in a cgroup of its own where cgroup v2 is writable
        (``False``: contain it by its session only)
    """

    def __init__(self, *, cgroups: bool = True) -> None:
        self.cgroups = cgroups

    def check(self, spec: ToolSpec) -> None:
        if shutil.which(spec.executable) is None:
            raise ToolNotFoundError(spec.name, spec.executable)

    async def spawn(self, spec: ToolSpec, *, instance: int) -> ProcessHandle:
        write_files(spec, instance)
        env = _child_env(spec, instance)
        cwd = _child_cwd(spec, instance)
        if spec.pty:
            return await self._spawn_pty(spec, env, cwd)
        return await self._spawn_pipes(spec, env, cwd)

    async def _spawn_pipes(
        self, spec: ToolSpec, env: dict[str, str] | None, cwd: str | None
    ) -> ProcessHandle:
        # A one-shot tool gets an empty, closed stdin: some (codex exec) read an open one to
        # EOF before they start, others (claude -p) wait seconds for data on it.
        input_fd = errors = None
        child_input: int = subprocess.DEVNULL
        child_errors: int = subprocess.STDOUT
        ours: list[int] = []
        theirs: list[int] = []
        try:
            # Neither end is inherited (PEP 446) until Popen puts the child's on 0, 1 and 2.
            output, child_output = os.pipe()
            ours.append(output)
            theirs.append(child_output)
            if not spec.merge_stderr:
                errors, child_errors = os.pipe()
                ours.append(errors)
                theirs.append(child_errors)
            if not spec.oneshot:
                child_input, input_fd = os.pipe()
                ours.append(input_fd)
                theirs.append(child_input)
        except BaseException:
            for fd in ours + theirs:
                os.close(fd)
            raise
        started = await _open_process(
            list(spec.argv),
            (child_input, child_output, child_errors),
            ours=ours,
            theirs=theirs,
            env=env,
            cwd=cwd,
            ctty=False,
            cgroup=self.cgroups,
        )
        return _FdProcess(started, output=output, input=input_fd, errors=errors)

    async def _spawn_pty(
        self, spec: ToolSpec, env: dict[str, str] | None, cwd: str | None
    ) -> ProcessHandle:
        master, slave = os.openpty()
        try:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", _PTY_ROWS, _PTY_COLS, 0, 0))
            if not spec.echo:
                mode = termios.tcgetattr(slave)
                mode[3] &= ~termios.ECHO  # lflag
                termios.tcsetattr(slave, termios.TCSANOW, mode)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        started = await _open_process(
            list(spec.argv),
            (slave, slave, slave),
            ours=[master],
            theirs=[slave],
            env=env,
            cwd=cwd,
            ctty=True,
            cgroup=self.cgroups,
        )
        return _FdProcess(started, output=master, input=master, errors=None)
