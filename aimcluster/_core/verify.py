"""A job's verify command: run in the instance's working directory, the end of its output kept.

The scheduler runs it once every step of a job has its reply, while the job still holds its
instance; a command that exits non-zero, overruns the step timeout or cannot start fails the
job with a :class:`VerifyFailedError`.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess

import anyio
import attrs

from .._base.errors import VerifyFailedError

__all__ = ["MAX_VERIFY_OUTPUT", "VerifyResult", "run_verify", "verify_failure"]

#: The most output of a verify command that is kept (its end: where the verdict usually is).
MAX_VERIFY_OUTPUT = 16 * 1024
#: How long the end of a verify command's output is read for once it has exited.
_VERIFY_DRAIN = 0.5


@attrs.frozen(kw_only=True)
class VerifyResult:
    """What a job's verify command did."""

    #: The command line, as run (no shell).
    argv: tuple[str, ...]
    #: Its exit code (negative: killed by that signal); ``None`` if it did not run to its end.
    exit_code: int | None
    #: The end of its output, stdout and stderr together (at most ``MAX_VERIFY_OUTPUT``
    #: characters).
    output: str
    #: Seconds it took.
    elapsed: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def verify_failure(result: VerifyResult) -> VerifyFailedError:
    """The error that fails a job whose verify command did not succeed."""
    command = shlex.join(result.argv)
    if result.exit_code is None:
        # The last line is the runner's own note in brackets: why it did not run to its end.
        reason = result.output.rstrip().rpartition("\n")[2].strip("[]")
        message = f"the verify command {command!r}: {reason}"
    elif result.exit_code < 0:
        message = f"the verify command {command!r} was killed by signal {-result.exit_code}"
    else:
        message = f"the verify command {command!r} exited with code {result.exit_code}"
    return VerifyFailedError(
        message, argv=result.argv, exit_code=result.exit_code, output=result.output
    )


async def run_verify(argv: tuple[str, ...], cwd: str | None, timeout: float | None) -> VerifyResult:
    """Run *argv* in *cwd*, in a session of its own; keep the end of its output.

    Whatever it leaves behind (an ``sh -c '... &'``) is killed with its process group, and so
    is everything when the job is cancelled or the command overruns *timeout*.
    """
    begin = anyio.current_time()
    tail = bytearray()
    try:
        process = await anyio.open_process(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return VerifyResult(
            argv=argv,
            exit_code=None,
            output=f"[it could not be started: {exc.strerror or exc}]",
            elapsed=anyio.current_time() - begin,
        )
    stdout = process.stdout
    assert stdout is not None
    read_all = anyio.Event()

    async def read() -> None:
        async for chunk in stdout:
            tail.extend(chunk)
            del tail[: -4 * MAX_VERIFY_OUTPUT]
        read_all.set()

    code: int | None = None
    async with process, anyio.create_task_group() as reading:
        reading.start_soon(read)
        # The command is done when it exits, not when its output closes: a child it left
        # behind may hold that open for as long as it lives.
        try:
            with anyio.fail_after(timeout):
                code = await process.wait()
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        # What it wrote before it exited is still in the pipe. The kill closes the group's
        # hold on it; one that left the group (setsid) is not waited for.
        with anyio.move_on_after(_VERIFY_DRAIN):
            await read_all.wait()
        reading.cancel_scope.cancel()
    if code is None:
        tail += f"\n[it did not finish within {timeout:g} s]".encode()
    output = tail.decode("utf-8", errors="replace")[-MAX_VERIFY_OUTPUT:]
    return VerifyResult(
        argv=argv, exit_code=code, output=output, elapsed=anyio.current_time() - begin
    )
