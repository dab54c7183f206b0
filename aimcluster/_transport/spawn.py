"""Starting a tool's process: in a session of its own and, on Linux, contained from birth.

Owns what happens between fork and exec (see :mod:`.containment` for why): ``setpriv`` or the
Python trampoline that sets ``PR_SET_PDEATHSIG``, the move into the tool's cgroup before it can
fork, ``TIOCSCTTY`` for a pty, and the fork itself, in the event loop's thread, of a child that
is then waited for on a pidfd. Where pidfds are missing, anyio's ``open_process`` starts it.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

import anyio
from anyio.abc import Process

from .._base.logs import library_logger
from .containment import _CGROUP_DRAIN_TIMEOUT, _LINUX, _Cgroup

# Silent unless the application configured logging (see _base/logs.py).
_log = library_logger("aimcluster.transport")

# What the child does between fork and exec that Popen cannot do for it (and anyio accepts no
# preexec_fn, which would also cost a full fork() of this process and be unsafe with threads):
# it runs after start_new_session's setsid() and execs the real tool in place, so that the pid
# we hold is the tool's. argv[1:4]: our pid if it is to die with us (empty: no), the
# cgroup.procs file to move itself into before the tool can fork (empty: none), and "1" to
# claim the pty on fd 0 as its controlling terminal (TIOCSCTTY: Popen cannot). If we died
# before its prctl, the signal would never come: it checks that we are still its parent.
# -I -S keeps its start-up to about 10 ms (measured here: 8 ms, 12 ms with ctypes).
_TRAMPOLINE = (
    "import os,sys\n"
    "parent,cgroup,ctty=sys.argv[1:4]\n"
    "if parent:\n"
    " import ctypes\n"
    " ctypes.CDLL(None).prctl(1,9)\n"  # PR_SET_PDEATHSIG, SIGKILL
    " if os.getppid()!=int(parent):os._exit(1)\n"
    "if cgroup:\n"
    " try:\n"
    "  with open(cgroup,'w') as f:f.write('0')\n"
    " except OSError:pass\n"  # then it is contained by its session only
    "if ctty:\n"
    " import fcntl,termios\n"
    " fcntl.ioctl(0,termios.TIOCSCTTY,0)\n"
    "os.execvp(sys.argv[4],sys.argv[4:])"
)


class _Child:
    """A child that Popen forked in the event loop's thread, waited for on a pidfd.

    The thread matters: PR_SET_PDEATHSIG fires when the thread that forked the child ends.
    """

    __slots__ = ("_pidfd", "_popen", "_waiter")

    def __init__(self, popen: subprocess.Popen[bytes], pidfd: int) -> None:
        self._popen = popen
        self._pidfd = pidfd
        self._waiter: anyio.Event | None = None

    @property
    def pid(self) -> int:
        return self._popen.pid

    async def wait(self) -> int:
        # poll() reaps it and keeps the exit code where Popen's __del__ looks for it.
        while (code := self._popen.poll()) is None:
            if self._waiter is not None:
                # Only one task may wait on an fd: the others wait for that one.
                await self._waiter.wait()
                continue
            self._waiter = waiter = anyio.Event()
            try:
                await anyio.wait_readable(self._pidfd)
            finally:
                self._waiter = None
                waiter.set()
        return code

    async def aclose(self) -> None:
        try:
            await self.wait()
        except BaseException:
            self._popen.kill()
            with anyio.move_on_after(_CGROUP_DRAIN_TIMEOUT, shield=True):
                await self.wait()
            raise
        finally:
            if self._pidfd >= 0:
                anyio.notify_closing(self._pidfd)
                os.close(self._pidfd)
                self._pidfd = -1


async def _open_process(
    argv: list[str],
    stdio: tuple[int, int, int],
    *,
    ours: list[int],
    theirs: list[int],
    env: dict[str, str] | None,
    cwd: str | None,
    ctty: bool,
    cgroup: bool,
) -> tuple[Process | _Child, _Cgroup | None]:
    """Start *argv* in a session of its own with *stdio* as its fds 0, 1 and 2; on Linux,
    contained (see :mod:`.containment`), and in a new cgroup if *cgroup* and we may.

    *ours* are the ends we keep: made non-blocking, and closed if the start fails. *theirs*
    are the child's ends, closed here either way: once it has its copies, ours would keep its
    output from ever ending. *ctty*: make fd 0, a pty, the child's controlling terminal.
    """
    try:
        for fd in ours:
            os.set_blocking(fd, False)
        if _pidfds():
            return _fork_contained(argv, stdio, env=env, cwd=cwd, ctty=ctty, cgroup=cgroup)
        if ctty:
            argv = [sys.executable, "-I", "-S", "-c", _TRAMPOLINE, "", "", "1", *argv]
        process = await anyio.open_process(
            argv,
            stdin=stdio[0],
            stdout=stdio[1],
            stderr=stdio[2],
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        return process, None
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)


def _fork_contained(
    argv: list[str],
    stdio: tuple[int, int, int],
    *,
    env: dict[str, str] | None,
    cwd: str | None,
    ctty: bool,
    cgroup: bool,
) -> tuple[_Child, _Cgroup | None]:
    # Popen right here, in the event loop's thread (see _Child). It blocks the loop for as long
    # as a vfork and an exec take, as asyncio's own subprocess start does.
    group = _Cgroup.create() if cgroup else None
    setpriv = None if ctty else _setpriv()
    if setpriv is not None:
        # About 1 ms where the Python trampoline costs 12 (100 tools: launch 0.55 s -> 1.1 s).
        # It cannot join the cgroup or check that we are alive, so we move it in ourselves, just
        # after its exec (before the tool has started, let alone forked), and a parent that
        # dies in the millisecond before its prctl leaves that tool running.
        wrapper = [setpriv, "--pdeathsig", "KILL", "--"]
    else:
        wrapper = [sys.executable, "-I", "-S", "-c", _TRAMPOLINE, str(os.getpid())]
        wrapper += [group.procs if group else "", "1" if ctty else ""]
    try:
        popen = subprocess.Popen(
            wrapper + argv,
            stdin=stdio[0],
            stdout=stdio[1],
            stderr=stdio[2],
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    except BaseException:
        if group is not None:
            os.rmdir(group.path)
        raise
    try:
        pidfd = os.pidfd_open(popen.pid)
    except BaseException:
        popen.kill()
        popen.wait()
        if group is not None:
            os.rmdir(group.path)
        raise
    if setpriv is not None and group is not None:
        group.adopt(popen.pid)
    return _Child(popen, pidfd), group


@functools.cache
def _setpriv() -> str | None:
    """util-linux's setpriv, if it is here and can set PR_SET_PDEATHSIG (2.33 and later)."""
    path = shutil.which("setpriv")
    if path is None:
        return None
    try:
        usage = subprocess.run([path, "--help"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return path if b"--pdeathsig" in usage.stdout else None


@functools.cache
def _pidfds() -> bool:
    """Whether we can wait for a child on a pidfd (Linux 5.3), and so fork it ourselves."""
    if not _LINUX:
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError) as exc:
        _log.debug("pidfd_unavailable", error=str(exc))
        return False
    return True
