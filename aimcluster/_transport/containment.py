"""Containment (Linux): no process a tool starts outlives its cluster, however the cluster ends.

- The tool gets ``PR_SET_PDEATHSIG`` (SIGKILL), so that it dies with us even when we are
  SIGKILLed: set by util-linux ``setpriv`` where it can (about 1 ms), else by a small Python
  trampoline (about 12 ms), between fork and exec. The kernel keeps it across ``exec`` but
  clears it on the exec of a set-user-ID or set-group-ID program, and it covers that one
  process, not its children: those are for the two sweeps below. It fires when the *thread*
  that forked the child ends, not the process: so we fork in the event loop's thread, which
  outlives the cluster (trio's ``open_process`` forks in a cached worker thread that ends after
  10 s idle, and would take the tool with it). That is set up as the tool starts: see
  :mod:`.spawn`.
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

This module owns the last two: signalling a tool's process group, the session sweep, and the
cgroup of each tool (its creation, ``cgroup.kill``, its removal, and the removal of the empty
cgroups a killed process of ours left behind).
"""

from __future__ import annotations

import functools
import itertools
import os
import select
import signal
import sys
import time
from typing import TYPE_CHECKING

import anyio

from .._base.logs import library_logger

if TYPE_CHECKING:
    from collections.abc import Callable

_LINUX = sys.platform.startswith("linux")
# Silent unless the application configured logging (see _base/logs.py).
_log = library_logger("aimcluster.transport")

# Bounds on the session sweep: passes over /proc, and seconds the killed may take to exit while
# the event loop waits (SIGKILL takes microseconds; longer means a process stuck in the kernel,
# which forks nothing meanwhile). And on the wait for a cgroup to empty.
_SWEEP_PASSES = 64
_SWEEP_TIMEOUT = 0.1
_CGROUP_DRAIN_TIMEOUT = 2.0


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
