"""Local tool processes, through pipes or a pseudo-terminal.

Containment (Linux): no process a tool starts outlives its cluster, however the cluster ends.

- The tool gets ``PR_SET_PDEATHSIG`` (SIGKILL), so that it dies with us even when we are
  SIGKILLed: set by util-linux ``setpriv`` where it can (about 1 ms), else by a small Python
  trampoline (about 12 ms), between fork and exec. The kernel keeps it across ``exec`` but
  clears it on the exec of a set-user-ID or set-group-ID program, and it covers that one
  process, not its children: those are for the two sweeps below. It fires when the *thread*
  that forked the child ends, not the process: so we fork in the event loop's thread, which
  outlives the cluster (trio's ``open_process`` forks in a cached worker thread that ends after
  10 s idle, and would take the tool with it).
- Every tool starts in a session of its own. Stopping it SIGKILLs the session: its process
  group, then every process of the session found in ``/proc``, again and again (bounded)
  until the session is empty: a process forking as a pass reads ``/proc`` is caught by the
  next one.
- A descendant that starts a session of its own (a daemon) escapes that sweep. Where cgroup v2
  is writable (as root, or in a delegated subtree), each tool therefore starts in a cgroup of
  its own, and stopping it writes ``cgroup.kill``: every process in it, however deep or
  detached, dies at once, and forks racing the kill fail. Where it is not, the session sweep is
  all there is, and a debug event says so. (A child subreaper, ``PR_SET_CHILD_SUBREAPER``,
  would also find daemons, but it is process-wide: orphans of every cluster, and of anything
  else the program runs, would come to us unlabelled, and as zombies that nobody reaps.)

What no code of ours can cover: when we are SIGKILLed, a tool's own descendants live on (only
the tool has PR_SET_PDEATHSIG); and a set-ID tool keeps running.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import itertools
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from typing import TYPE_CHECKING

import anyio
from anyio.abc import Process

from .._base.errors import ToolNotFoundError
from .._base.logs import library_logger
from ..abc import ProcessHandle, Transport

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._base.spec import ToolSpec

__all__ = ["LocalTransport"]

_READ_SIZE = 65536
_LINUX = sys.platform.startswith("linux")
# Silent unless the application configured logging (see _logging.py).
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
# Bounds on the session sweep: passes over /proc, and seconds the killed may take to exit while
# the event loop waits (SIGKILL takes microseconds; longer means a process stuck in the kernel,
# which forks nothing meanwhile). And on the wait for a cgroup to empty.
_SWEEP_PASSES = 64
_SWEEP_TIMEOUT = 0.1
_CGROUP_DRAIN_TIMEOUT = 2.0
_PTY_ROWS, _PTY_COLS = 50, 250  # wide, so that tools do not wrap replies at 80 columns


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone (or the pid was reused by someone else's group)


def _session_members(sid: int) -> list[int]:
    """The live (not zombie) processes of session *sid*."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    members = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                data = stat.read()
        except OSError:
            continue
        # Fields after "(comm)": state ppid pgrp session ...; comm may contain spaces.
        fields = data[data.rindex(b")") + 2 :].split(maxsplit=4)
        if int(fields[3]) == sid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry))
    return members


def _kill_session(sid: int) -> None:
    """SIGKILL the process group *sid* and every other process in session *sid*.

    A shell with job control (bash in a pty) puts each background job in a process group of
    its own, out of reach of killpg; they all stay in the tool's session, though. A process
    still forking while a pass reads /proc leaves children that pass did not see, and one
    SIGKILLed in the middle of a fork still completes it: so passes repeat, at once, until the
    session is empty. When a pass finds only processes it has killed already, it waits on their
    pidfds for them to exit (a killed process exits in microseconds; the wait is bounded) and
    looks again for what they forked meanwhile. Only a process that started a session of its
    own (setsid) escapes.
    """
    _signal_group(sid, signal.SIGKILL)
    if not _LINUX:
        return
    deadline = time.monotonic() + _SWEEP_TIMEOUT
    killed = _kill_until_none_new(functools.partial(_session_members, sid), wait_until=deadline)
    if killed is not None:
        _log.debug("session_sweep_bounded", sid=sid, killed=killed)


def _kill_until_none_new(
    members: Callable[[], list[int]], *, wait_until: float | None
) -> int | None:
    """SIGKILL every pid *members* lists that this call has not killed yet, pass after pass.

    It is done (None) when a pass finds nobody left, or finds only pids it has killed already
    and *wait_until* is None. With a deadline, such a pass instead waits on their pidfds (until
    *wait_until*) for them to exit and looks again for what they forked meanwhile. When the
    passes or the wait run out, it returns how many pids it killed.
    """
    killed: set[int] = set()
    for _ in range(_SWEEP_PASSES):
        current = members()
        new = [pid for pid in current if pid not in killed]
        if not new:
            if not current or wait_until is None:
                return None
            if not _wait_exited_until(current, wait_until):
                break
            continue
        for pid in new:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        killed.update(new)
    return len(killed)


def _wait_exited_until(pids: list[int], deadline: float) -> bool:
    """Block until every one of *pids* has exited (True) or until *deadline* (False)."""
    poller = select.poll()
    fds = []
    try:
        for pid in pids:
            try:
                fds.append(os.pidfd_open(pid))
            except OSError:
                continue  # gone already
            poller.register(fds[-1], select.POLLIN)
        pending = len(fds)
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for fd, _ in poller.poll(remaining * 1000):
                poller.unregister(fd)
                pending -= 1
        return True
    finally:
        for fd in fds:
            os.close(fd)


class _Cgroup:
    """A cgroup v2 of one tool's own, under ours: ``cgroup.kill`` ends all it holds."""

    __slots__ = ("path",)

    _parent: str | None = None  # where ours is; "" once we know there is none we may use
    _names = itertools.count()

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def create(cls) -> _Cgroup | None:
        """A new, empty cgroup, or None where cgroup v2 is missing or not ours to write."""
        if cls._parent is None:
            cls._parent = _own_cgroup() or ""
            if cls._parent:
                _remove_stale_cgroups(cls._parent)
        if not cls._parent:
            return None
        path = os.path.join(cls._parent, f"aimcluster-{os.getpid()}-{next(cls._names)}")
        try:
            os.mkdir(path)
        except OSError as exc:
            _log.debug("cgroup_unavailable", path=path, error=str(exc))
            cls._parent = ""
            return None
        return cls(path)

    @property
    def procs(self) -> str:
        return os.path.join(self.path, "cgroup.procs")

    def adopt(self, pid: int) -> None:
        try:
            with open(self.procs, "w") as procs:
                procs.write(str(pid))
        except OSError as exc:  # it is contained by its session only
            _log.debug("cgroup_not_joined", path=self.path, pid=pid, error=str(exc))

    def members(self) -> list[int]:
        try:
            with open(self.procs) as procs:
                return [int(line) for line in procs]
        except OSError:
            return []

    def kill(self) -> None:
        try:
            with open(os.path.join(self.path, "cgroup.kill"), "w") as kill:
                kill.write("1")
            return
        except OSError:
            pass  # before Linux 5.14: no cgroup.kill; kill its members until none is new
        _kill_until_none_new(self.members, wait_until=None)

    async def remove(self) -> None:
        """Kill what is left in it, wait (bounded) until that has exited, and remove it."""
        with anyio.move_on_after(_CGROUP_DRAIN_TIMEOUT, shield=True):
            while members := self.members():
                self.kill()
                for pid in members:
                    await _wait_exited(pid)
        try:
            os.rmdir(self.path)
        except OSError as exc:
            _log.debug("cgroup_not_removed", path=self.path, error=str(exc))


def _own_cgroup() -> str | None:
    """The directory of this process's cgroup v2, if there is one we may create cgroups in."""
    if not _LINUX:
        return None
    try:
        with open("/proc/self/cgroup") as lines:
            own = next((line[3:].strip() for line in lines if line.startswith("0::")), None)
        with open("/proc/self/mountinfo") as lines:
            # "id parent major:minor root mountpoint options... - fstype source options"
            mounts = [line.split() for line in lines if " - cgroup2 " in line]
    except OSError:
        own, mounts = None, []
    if own is None or not mounts:
        _log.debug("cgroup_unavailable", error="no cgroup v2 hierarchy")
        return None
    root, mountpoint = mounts[0][3], mounts[0][4]
    if root != "/" and (own == root or own.startswith(root + "/")):
        own = own[len(root) :]  # the mount shows a subtree of the hierarchy (a container)
    path = os.path.join(mountpoint, own.lstrip("/"))
    if not os.access(path, os.W_OK):
        _log.debug("cgroup_unavailable", path=path, error="not writable")
        return None
    return path


def _remove_stale_cgroups(parent: str) -> None:
    """Remove the empty cgroups left by processes of ours that ended without removing them
    (killed: nothing of ours ran). A populated one is left alone, and said so."""
    try:
        names = [name for name in os.listdir(parent) if name.startswith("aimcluster-")]
    except OSError:
        return
    for name in names:
        try:
            owner = int(name.split("-")[1])
            os.kill(owner, 0)
            continue  # its owner is alive
        except (ValueError, IndexError, PermissionError):
            continue  # not named by us, or alive under another user
        except ProcessLookupError:
            pass
        try:
            os.rmdir(os.path.join(parent, name))
        except OSError as exc:
            _log.debug("cgroup_not_removed", path=os.path.join(parent, name), error=str(exc))


async def _wait_exited(pid: int) -> None:
    """Wait until *pid* (not necessarily our child) has exited, on a pidfd."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return  # gone already
    try:
        await anyio.wait_readable(pidfd)
    finally:
        os.close(pidfd)


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


class _FdProcess(ProcessHandle):
    """A child whose standard streams are file descriptors of ours: pipes, or a pty's master.

    They are non-blocking and used with ``os.read``/``os.write``, waiting with
    ``anyio.wait_readable``/``wait_writable`` only when they are not ready. So a read or write
    that can go ahead costs one system call and no pass of the event loop (a stream wrapper
    takes a checkpoint on every call), on every backend.
    """

    __slots__ = ("_cgroup", "_closed", "_errors", "_input", "_output", "_process")

    def __init__(
        self,
        started: tuple[Process | _Child, _Cgroup | None],
        *,
        output: int,
        input: int | None,
        errors: int | None,
    ) -> None:
        self._process, self._cgroup = started
        self._output = output
        # None for a one-shot tool, whose stdin is /dev/null; a pty's is its output's fd.
        self._input = input
        # None when stderr is merged into the output (at the OS level, in order).
        self._errors = errors
        self._closed = False

    @property
    def pid(self) -> int:
        return self._process.pid

    async def receive(self) -> bytes:
        return await self._read(self._output)

    async def receive_stderr(self) -> bytes:
        if self._errors is None:
            raise anyio.EndOfStream
        return await self._read(self._errors)

    async def _read(self, fd: int) -> bytes:
        while True:
            if self._closed:
                raise anyio.EndOfStream
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                try:
                    await anyio.wait_readable(fd)
                except anyio.ClosedResourceError:
                    raise anyio.EndOfStream from None
                continue
            except OSError as exc:
                # Linux reports a hung-up pty (every slave fd closed) as EIO, BSD as b"".
                if exc.errno == errno.EIO:
                    raise anyio.EndOfStream from None
                raise
            if not data:
                raise anyio.EndOfStream
            return data

    async def send(self, data: bytes) -> None:
        fd = self._input
        if fd is None:
            raise anyio.BrokenResourceError
        view = memoryview(data)
        while view:
            if self._closed:
                raise anyio.BrokenResourceError
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                try:
                    await anyio.wait_writable(fd)
                except anyio.ClosedResourceError:
                    raise anyio.BrokenResourceError from None
                continue
            except OSError as exc:  # EPIPE: it closed its input or exited
                raise anyio.BrokenResourceError from exc
            view = view[written:]

    def try_send(self, data: bytes) -> int:
        fd = self._input
        if fd is None or self._closed:
            return 0
        try:
            return os.write(fd, data)
        except OSError:
            return 0  # full, or broken (then send() reports it)

    async def wait(self) -> int:
        return await self._process.wait()

    def signal_group(self, signum: int) -> None:
        _signal_group(self._process.pid, signum)

    def kill_all(self) -> None:
        if self._cgroup is not None:
            self._cgroup.kill()
        # Also where the cgroup took them all: the tool may have failed to join it.
        _kill_session(self._process.pid)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            for fd in {self._output, self._input, self._errors} - {None}:
                assert fd is not None
                # Wakes a task waiting on it (with ClosedResourceError) before it is reused.
                anyio.notify_closing(fd)
                os.close(fd)
        await self._process.aclose()
        if self._cgroup is not None:
            cgroup, self._cgroup = self._cgroup, None
            await cgroup.remove()


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
    contained (see the module's docstring), and in a new cgroup if *cgroup* and we may.

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
