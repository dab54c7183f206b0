"""The node side of the Ray transport: :class:`ToolHost`, the actor that owns one tool process
on the node Ray placed it on, and the values its calls return.

The driver (:mod:`aimcluster.ray`) talks to it in these calls only: ``start`` (the spec; a
:class:`_Started` or :class:`_StartFailed` back), ``serve`` (runs until the tool exited and
its output ended), ``read`` (a long poll on stream :data:`_STDOUT` or :data:`_STDERR` that
returns what is buffered, up to a size, as soon as there is any, ``b""`` at the end), ``send``,
``wait`` (an :class:`_Exited`), ``signal_group``, ``kill_all`` and ``close``. The tool runs
with the same code as :class:`~aimcluster.LocalTransport`, behind a trampoline that makes it
die with the actor.
"""

from __future__ import annotations

import copy
import errno
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import anyio
import attrs

# Imported only through aimcluster.ray, which says what to install when Ray is missing.
import ray

from .._base.errors import ToolNotFoundError
from .local import LocalTransport

if TYPE_CHECKING:
    from .._base.spec import ToolSpec
    from ..abc import ProcessHandle

__all__ = ["ToolHost"]

# The streams a read call names.
_STDOUT: Final = 0
_STDERR: Final = 1
# How long, on the node, a SIGKILLed session may take to be reaped.
_REAP_TIMEOUT: Final = 2.0

# Started between the actor and the tool: the tool gets SIGKILL when its parent (the actor's
# worker process) dies, however it dies. (Strictly, when the thread that forked it ends: the
# actor's event loop thread, which lives as long as the actor.) PR_SET_PDEATHSIG survives exec,
# so the pid stays the tool's. argv[1] is the actor's pid: if it is already gone, the signal
# would never come.
_DIE_WITH_HOST = (
    "import ctypes,os,sys;"
    "ctypes.CDLL(None).prctl(1,9);"  # PR_SET_PDEATHSIG, SIGKILL
    "os.getppid()==int(sys.argv[1]) or os._exit(1);"
    "os.execvp(sys.argv[2],sys.argv[2:])"
)


class _Output:
    """One output stream of the hosted tool, buffered on its node between two reads."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self._closed = False
        self._changed = anyio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def fill(self, receive: Callable[[], Awaitable[bytes]]) -> None:
        """Move output from the tool into the buffer until the stream ends."""
        try:
            while True:
                while len(self._buffer) >= self._limit and not self._closed:
                    await self._changed.wait()  # the driver has not read: let the pipe fill
                try:
                    data = await receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return
                self._buffer += data
                self._notify()
        finally:
            self.close()

    def close(self) -> None:
        self._closed = True
        self._notify()

    async def take(self, max_bytes: int) -> bytes:
        """Everything buffered, up to *max_bytes*, as soon as there is any; b"" at the end."""
        while not self._buffer and not self._closed:
            await self._changed.wait()
        data = bytes(self._buffer[:max_bytes])
        del self._buffer[:max_bytes]
        self._notify()
        return data


@attrs.frozen
class _Started:
    pid: int
    node_id: str
    node_ip: str


@attrs.frozen
class _StartFailed:
    errno: int
    message: str


@attrs.frozen
class _Exited:
    code: int
    #: False if the node's raylet was gone by then: Ray's worker shutdown kills the tool, and the
    #: actor may still report the exit before it dies itself, with no Ray error to show for it.
    node_alive: bool


class ToolHost:
    """The Ray actor that owns one tool process on its node (one actor per instance).

    All methods are coroutines: Ray runs them concurrently on the actor's event loop, so a
    pending ``read`` does not hold up ``send`` or ``signal_group``.
    """

    def __init__(self) -> None:
        self._handle: ProcessHandle | None = None
        self._outputs: list[_Output] = []
        self._exit_code: int | None = None
        self._exited: anyio.Event | None = None
        self._send_lock: anyio.Lock | None = None
        # A Ray worker is a child of its node's raylet: a new parent means the node is gone.
        self._raylet = os.getppid()

    async def start(self, spec: ToolSpec, instance: int, read_size: int) -> _Started | _StartFailed:
        local = LocalTransport()
        try:
            local.check(spec)
        except ToolNotFoundError:
            return _StartFailed(errno.ENOENT, f"{spec.executable!r} is not on PATH")
        if sys.platform.startswith("linux"):
            trampoline = (sys.executable, "-I", "-S", "-c", _DIE_WITH_HOST, str(os.getpid()))
            # Not attrs.evolve: its validation would reject a one-shot process's spec, whose
            # {prompt} is already filled in (ToolSpec.for_prompt does the same).
            spec = copy.copy(spec)
            object.__setattr__(spec, "argv", (*trampoline, *spec.argv))
        self._exited = anyio.Event()
        self._send_lock = anyio.Lock()
        try:
            self._handle = await local.spawn(spec, instance=instance)
        except OSError as exc:
            return _StartFailed(exc.errno or errno.EIO, str(exc))
        self._outputs = [_Output(read_size)]
        if not spec.merge_stderr and not spec.pty:
            self._outputs.append(_Output(read_size))
        context = ray.get_runtime_context()
        return _Started(self._handle.pid or 0, context.get_node_id(), _node_ip())

    async def serve(self) -> None:
        """Pump the tool's output into the buffers and record its exit; ends when both did."""
        handle = self._handle
        assert handle is not None
        assert self._exited is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._outputs[_STDOUT].fill, handle.receive)
            if len(self._outputs) > _STDERR:
                tg.start_soon(self._outputs[_STDERR].fill, handle.receive_stderr)
            self._exit_code = await handle.wait()
            self._exited.set()

    async def read(self, stream: int, max_bytes: int) -> bytes:
        if stream >= len(self._outputs):
            return b""
        return await self._outputs[stream].take(max_bytes)

    async def send(self, data: bytes) -> bool:
        assert self._send_lock is not None
        async with self._send_lock:  # calls may run concurrently: keep prompts whole and in order
            if self._handle is None:  # closed
                return False
            try:
                await self._handle.send(data)
            except anyio.BrokenResourceError:
                return False
        return True

    async def wait(self) -> _Exited:
        assert self._exited is not None
        await self._exited.wait()
        assert self._exit_code is not None
        return _Exited(self._exit_code, node_alive=os.getppid() == self._raylet)

    async def signal_group(self, signum: int) -> None:
        if self._handle is not None:
            self._handle.signal_group(signum)

    async def kill_all(self) -> None:
        if self._handle is not None:
            self._handle.kill_all()

    async def close(self) -> None:
        """SIGKILL the tool's whole session and reap it: the last call before ``ray.kill``."""
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.kill_all()
            with anyio.move_on_after(_REAP_TIMEOUT):
                await handle.wait()
            await handle.aclose()
        for output in self._outputs:
            output.close()


def _node_ip() -> str:
    get_node_ip_address: Callable[[], str] = ray.util.get_node_ip_address
    return get_node_ip_address()
