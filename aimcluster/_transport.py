"""Local tool processes, through pipes or a pseudo-terminal."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import struct
import subprocess
import sys
import termios
from typing import TYPE_CHECKING

import anyio
from anyio.abc import Process

from ._exceptions import ToolNotFoundError
from .abc import ProcessHandle, Transport

if TYPE_CHECKING:
    from ._spec import ToolSpec

__all__ = ["LocalTransport"]

_READ_SIZE = 65536

# Popen cannot make the pty the child's *controlling* terminal (that needs TIOCSCTTY after
# setsid), and anyio deliberately accepts no preexec_fn. This trampoline runs in the child after
# start_new_session's setsid(), claims the tty on fd 0, and execs the real tool in place, so the
# pid we hold is the tool's. -I -S keeps its start-up to a few milliseconds.
_CTTY_TRAMPOLINE = (
    "import fcntl,os,sys,termios;"
    "fcntl.ioctl(0,termios.TIOCSCTTY,0);"
    "os.execvp(sys.argv[1],sys.argv[1:])"
)
_PTY_ROWS, _PTY_COLS = 50, 250  # wide, so that tools do not wrap replies at 80 columns


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone (or the pid was reused by someone else's group)


def _kill_session(sid: int) -> None:
    """SIGKILL the process group *sid* and every other process in session *sid*.

    A shell with job control (bash in a pty) puts each background job in a process group of
    its own, out of reach of killpg; they all stay in the tool's session, though. Only a
    process that started a session of its own (setsid) escapes.
    """
    _signal_group(sid, signal.SIGKILL)
    if not sys.platform.startswith("linux"):
        return
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
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
        if int(fields[3]) == sid and int(fields[2]) != sid:
            try:
                os.kill(int(entry), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class _FdProcess(ProcessHandle):
    """A child whose standard streams are file descriptors of ours: pipes, or a pty's master.

    They are non-blocking and used with ``os.read``/``os.write``, waiting with
    ``anyio.wait_readable``/``wait_writable`` only when they are not ready. So a read or write
    that can go ahead costs one system call and no pass of the event loop (a stream wrapper
    takes a checkpoint on every call), on every backend.
    """

    __slots__ = ("_closed", "_errors", "_input", "_output", "_process")

    def __init__(
        self, process: Process, *, output: int, input: int | None, errors: int | None
    ) -> None:
        self._process = process
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


class LocalTransport(Transport):
    """Runs each tool instance as a child process of this Python process.

    Every child starts in a new session, so that stopping it signals its whole process group,
    grandchildren included.
    """

    def check(self, spec: ToolSpec) -> None:
        if shutil.which(spec.executable) is None:
            raise ToolNotFoundError(spec.name, spec.executable)

    async def spawn(self, spec: ToolSpec, *, instance: int) -> ProcessHandle:
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
        process = await _open_process(
            list(spec.argv),
            (child_input, child_output, child_errors),
            ours=ours,
            theirs=theirs,
            env=env,
            cwd=cwd,
        )
        return _FdProcess(process, output=output, input=input_fd, errors=errors)

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
        process = await _open_process(
            [sys.executable, "-I", "-S", "-c", _CTTY_TRAMPOLINE, *spec.argv],
            (slave, slave, slave),
            ours=[master],
            theirs=[slave],
            env=env,
            cwd=cwd,
        )
        return _FdProcess(process, output=master, input=master, errors=None)


async def _open_process(
    argv: list[str],
    stdio: tuple[int, int, int],
    *,
    ours: list[int],
    theirs: list[int],
    env: dict[str, str] | None,
    cwd: str | None,
) -> Process:
    """Start *argv* in a session of its own with *stdio* as its fds 0, 1 and 2.

    *ours* are the ends we keep: made non-blocking, and closed if the start fails. *theirs*
    are the child's ends, closed here either way: once it has its copies, ours would keep its
    output from ever ending.
    """
    try:
        for fd in ours:
            os.set_blocking(fd, False)
        return await anyio.open_process(
            argv,
            stdin=stdio[0],
            stdout=stdio[1],
            stderr=stdio[2],
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
