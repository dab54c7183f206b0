from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> bool:
    """Make orphaned descendants reparent to this process instead of init, so that a leaked
    grandchild is still ours to find."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


_SUBREAPER = _become_subreaper()


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of *pid*, or None if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def descendants(root: int | None = None) -> dict[int, str]:
    """Every live process below *root* (default: this one), mapped to its state letter."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    states: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _stat(int(entry))
            if info is not None:
                states[int(entry)] = info[0]
                children.setdefault(info[1], []).append(int(entry))
    found: dict[int, str] = {}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found[child] = states[child]
            stack.append(child)
    return found


def alive(pids: object) -> list[int]:
    """Those of *pids* that still exist and are not zombies."""
    result = []
    for pid in pids:  # type: ignore[attr-defined]
        if pid is None:
            continue
        info = _stat(pid)
        if info is not None and info[0] != "Z":
            result.append(pid)
    return result


def wait_gone(pids: object, timeout: float = 5.0) -> list[int]:
    """Wait (on pidfds, not by polling) until *pids* have exited; return those still alive.

    A process SIGKILLed a moment ago may still be in the process table: kill() does not wait.
    """
    fds = {}
    for pid in alive(pids):
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            continue
    try:
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        pending = set(fds)
        while pending and (remaining := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(remaining * 1000):
                pending.discard(fd)
                poller.unregister(fd)
        return alive(fds[fd] for fd in pending)
    finally:
        for fd in fds:
            os.close(fd)


def _reap_zombies() -> None:
    # Orphans reparented to us (the subreaper) are not anyio's children: reap them here, when no
    # event loop is running, so they do not pile up as zombies.
    for pid, state in descendants().items():
        if state == "Z":
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Fail any test that leaves a child or grandchild process running."""
    before = set(descendants())
    yield
    _reap_zombies()
    leaked = wait_gone(pid for pid in descendants() if pid not in before)
    for pid in leaked:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _reap_zombies()
    assert not leaked, f"processes outlived the test: {leaked}"


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    return request.param  # type: ignore[no-any-return]
