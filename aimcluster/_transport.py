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
from anyio.abc import ByteReceiveStream, ByteSendStream, Process

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


class _PipeProcess(ProcessHandle):
    __slots__ = ("_process", "_stderr", "_stdin", "_stdout")

    def __init__(self, process: Process) -> None:
        self._process = process
        assert process.stdout is not None
        # None for a one-shot tool, whose stdin is /dev/null.
        self._stdin: ByteSendStream | None = process.stdin
        self._stdout: ByteReceiveStream = process.stdout
        self._stderr: ByteReceiveStream | None = process.stderr

    @property
    def pid(self) -> int:
        return self._process.pid

    async def receive(self) -> bytes:
        return await self._stdout.receive(_READ_SIZE)

    async def receive_stderr(self) -> bytes:
        if self._stderr is None:
            raise anyio.EndOfStream
        return await self._stderr.receive(_READ_SIZE)

    async def send(self, data: bytes) -> None:
        if self._stdin is None:
            raise anyio.BrokenResourceError
        try:
            await self._stdin.send(data)
        except (BrokenPipeError, ConnectionResetError, anyio.ClosedResourceError) as exc:
            raise anyio.BrokenResourceError from exc

    async def wait(self) -> int:
        return await self._process.wait()

    def signal_group(self, signum: int) -> None:
        _signal_group(self._process.pid, signum)

    def kill_all(self) -> None:
        _kill_session(self._process.pid)

    async def aclose(self) -> None:
        await self._process.aclose()


class _PtyProcess(ProcessHandle):
    __slots__ = ("_closed", "_master", "_process")

    def __init__(self, process: Process, master: int) -> None:
        self._process = process
        self._master = master
        self._closed = False

    @property
    def pid(self) -> int:
        return self._process.pid

    async def receive(self) -> bytes:
        while True:
            if self._closed:
                raise anyio.EndOfStream
            try:
                data = os.read(self._master, _READ_SIZE)
            except BlockingIOError:
                try:
                    await anyio.wait_readable(self._master)
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
        view = memoryview(data)
        while view:
            if self._closed:
                raise anyio.BrokenResourceError
            try:
                written = os.write(self._master, view)
            except BlockingIOError:
                await anyio.wait_writable(self._master)
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            view = view[written:]

    async def wait(self) -> int:
        return await self._process.wait()

    def signal_group(self, signum: int) -> None:
        _signal_group(self._process.pid, signum)

    def kill_all(self) -> None:
        _kill_session(self._process.pid)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            anyio.notify_closing(self._master)
            os.close(self._master)
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
        process = await anyio.open_process(
            list(spec.argv),
            # A one-shot tool gets an empty, closed stdin: some (codex exec) read an open one
            # to EOF before they start, others (claude -p) wait seconds for data on it.
            stdin=subprocess.DEVNULL if spec.oneshot else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if spec.merge_stderr else subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        return _PipeProcess(process)

    async def _spawn_pty(
        self, spec: ToolSpec, env: dict[str, str] | None, cwd: str | None
    ) -> ProcessHandle:
        master, slave = os.openpty()
        try:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", _PTY_ROWS, _PTY_COLS, 0, 0))
            os.set_blocking(master, False)
            process = await anyio.open_process(
                [sys.executable, "-I", "-S", "-c", _CTTY_TRAMPOLINE, *spec.argv],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            # The child holds its own copy; ours would keep the pty from ever reporting EOF.
            os.close(slave)
        return _PtyProcess(process, master)
