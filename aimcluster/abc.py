"""Interfaces a user may implement to host tool processes somewhere else.

The cluster never touches a subprocess directly: it asks a :class:`Transport` to spawn a
:class:`ProcessHandle` and then only sends bytes, receives bytes, waits for the exit and signals
the process group through it. The built-in :class:`aimcluster.LocalTransport` runs children on
this machine through pipes or a pseudo-terminal.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._base.spec import ToolSpec

__all__ = ["ProcessHandle", "Transport"]


class ProcessHandle(metaclass=ABCMeta):
    """One running tool process, however it is hosted."""

    @property
    @abstractmethod
    def pid(self) -> int | None:
        """The process id where it runs (``None`` if the host does not expose one)."""

    @property
    def node(self) -> str | None:
        """Where the process runs, for metrics and logs (``None``: this machine)."""
        return None

    @abstractmethod
    async def receive(self) -> bytes:
        """Return the next chunk of output (stdout, with stderr if merged).

        :raises anyio.EndOfStream: when the output is closed for good
        """

    async def receive_joined(self) -> bytes:
        """Return the next chunk of output, as :meth:`receive` does, but read a pass of the
        event loop after it turns readable, so that output following at once comes with it
        (a reply right behind the echo of its prompt, through a pty).

        The slot asks for this while at most one instance of the cluster is busy, where a
        second read and wake-up for the rest would cost more than the pass, and for
        :meth:`receive_into` (or :meth:`receive`, for a tool whose replies are timed), which
        may read as soon as the output is readable, otherwise. The default is
        :meth:`receive`.

        :raises anyio.EndOfStream: when the output ends
        """
        return await self.receive()

    async def receive_into(self, take: Callable[[bytes], bool]) -> None:
        """Give each chunk of output to *take* until it returns True.

        *take* deals with a chunk without waiting, and returns True when the task that called
        this must act on what it kept. A transport that reads in the event loop's callback may
        call *take* there, while the task sleeps: then a chunk that needs nothing of the task
        costs no wake-up. The slot asks for this while more than one instance of the cluster
        is busy (see :meth:`receive_joined`), unless the tool's replies are timed (a stall
        watchdog, a settle time). The default calls *take* on each :meth:`receive`, in the
        task.

        :raises anyio.EndOfStream: when the output ends
        """
        while not take(await self.receive()):
            pass

    async def receive_stderr(self) -> bytes:
        """Return the next chunk of the separate stderr stream, if there is one.

        :raises anyio.EndOfStream: when there is no (more) separate stderr
        """
        import anyio

        raise anyio.EndOfStream

    @abstractmethod
    async def send(self, data: bytes) -> None:
        """Write *data* to the tool's input.

        :raises anyio.BrokenResourceError: if the tool no longer reads its input
        """

    def try_send(self, data: bytes) -> int:
        """Write what can be written of *data* now, without waiting; return how many bytes
        that was (0: none, and the caller uses :meth:`send`; fewer than all: the caller sends
        the rest with :meth:`send`).

        The default writes nothing. A transport that can write without waiting (a pipe or a
        pty with room in it) lets a prompt go out from whichever task has it at hand.
        """
        return 0

    @abstractmethod
    async def wait(self) -> int:
        """Wait for the process to exit and return its exit code (negative: killed by signal)."""

    @abstractmethod
    def signal_group(self, signum: int) -> None:
        """Send *signum* to the tool's whole process group; do nothing if it is gone."""

    def kill_all(self) -> None:
        """SIGKILL everything the tool started: its process group, and more where the host
        can find it (the local transport sweeps the whole session)."""
        import signal

        self.signal_group(signal.SIGKILL)

    @abstractmethod
    async def aclose(self) -> None:
        """Release the handle's resources. Called after the process has exited."""


class Transport(metaclass=ABCMeta):
    """Starts tool processes. One transport serves every instance of a cluster."""

    @abstractmethod
    def check(self, spec: ToolSpec) -> None:
        """Fail fast, before anything starts, if *spec* cannot run here.

        :raises aimcluster.ToolNotFoundError: if the executable does not exist
        """

    @abstractmethod
    async def spawn(self, spec: ToolSpec, *, instance: int) -> ProcessHandle:
        """Start one process for slot *instance* in a new session (its own process group)."""
