"""No tool process outlives its cluster, however the cluster's parent ends.

Each test drives real processes: a stubborn tool (it ignores SIGTERM, SIGHUP, SIGINT and the end
of its input), a tool whose helper keeps forking ``sleep`` into new process groups, and a tool
that starts a daemon (``setsid`` and fork). The parent-death tests run the cluster in a separate
Python process, kill that process, and wait on pidfds for the tool to go.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import structlog.testing

from aimcluster import LocalTransport, ToolSpec, launch_cluster
from aimcluster._transport import spawn
from aimcluster._transport.containment import _Cgroup, _own_cgroup

from .conftest import alive, wait_gone

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="containment relies on Linux process control"
)

# Generous: a loaded 2-core machine may take a while to start Python twice.
_START_TIMEOUT = 30.0
_GONE_TIMEOUT = 10.0

_STUBBORN = """
import os, signal, sys, threading
for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    signal.signal(signum, signal.SIG_IGN)
with open(sys.argv[1], "w") as f:
    f.write(str(os.getpid()))
sys.stdout.write("ready> ")
sys.stdout.flush()
while True:
    try:
        line = sys.stdin.readline()
    except OSError:  # EIO: the pty was hung up
        line = ""
    if not line:
        threading.Event().wait()  # end of input: ignore it, and stay
    sys.stdout.write("ok\\nready> ")
    sys.stdout.flush()
"""

_PARENT = """
import os, sys
import anyio
from aimcluster import ToolSpec, launch_cluster

tool, pid_file, backend, streams, report = sys.argv[1:6]
if streams == "trampoline":  # as where setpriv is missing
    import aimcluster._transport.spawn
    aimcluster._transport.spawn._setpriv = lambda: None

async def main() -> None:
    spec = ToolSpec(
        name="stubborn",
        argv=[sys.executable, tool, pid_file],
        ready=r"ready> $",
        pty=streams == "pty",
    )
    async with launch_cluster(spec, 1, restart=False):
        os.write(int(report), b"up\\n")
        await anyio.sleep_forever()

anyio.run(main, backend=backend)
"""


# How the tool is started: through pipes, with setpriv setting PR_SET_PDEATHSIG where it can;
# through pipes with the Python trampoline (as where setpriv is missing); or in a pty.
STREAMS = ["pipes", "trampoline", "pty"]


@pytest.fixture(params=STREAMS)
def pty(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Whether the tool gets a pty; with "trampoline", pipes without setpriv."""
    if request.param == "trampoline":
        monkeypatch.setattr(spawn, "_setpriv", lambda: None)
    elif request.param == "pipes" and spawn._setpriv() is None:
        pytest.skip("no setpriv with --pdeathsig here: pipes use the trampoline")
    return request.param == "pty"  # type: ignore[no-any-return]


def _write(path: Path, source: str) -> str:
    path.write_text(textwrap.dedent(source))
    return str(path)


def _read_line(fd: int, timeout: float) -> str:
    """The first line from pipe *fd*, waiting at most *timeout* seconds for it."""
    ready, _, _ = select.select([fd], [], [], timeout)
    assert ready, f"no line within {timeout} s"
    return os.read(fd, 100).decode()


@pytest.mark.parametrize("streams", STREAMS)
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP])
def test_tool_dies_with_its_parent(
    tmp_path: Path, signum: signal.Signals, backend: str, streams: str
) -> None:
    if streams == "pipes" and spawn._setpriv() is None:
        pytest.skip("no setpriv with --pdeathsig here: pipes use the trampoline")
    tool = _write(tmp_path / "stubborn.py", _STUBBORN)
    parent_script = _write(tmp_path / "parent.py", _PARENT)
    pid_file = tmp_path / "tool.pid"
    report, child_report = os.pipe()
    parent = subprocess.Popen(
        [sys.executable, parent_script, tool, str(pid_file), backend, streams, str(child_report)],
        pass_fds=[child_report],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(child_report)
    tool_pid = None
    try:
        assert _read_line(report, _START_TIMEOUT) == "up\n"
        tool_pid = int(pid_file.read_text())
        assert alive([tool_pid]) == [tool_pid]
        parent.send_signal(signum)
        assert parent.wait(timeout=_START_TIMEOUT) == -signum
        assert wait_gone([tool_pid], timeout=_GONE_TIMEOUT) == []
    finally:
        parent.kill()
        parent.wait()
        os.close(report)
        if tool_pid is not None and alive([tool_pid]):
            os.kill(tool_pid, signal.SIGKILL)


# The tool starts a helper in a process group of its own, in the tool's session, that keeps
# forking `sleep` into new process groups and killing the oldest: a sweep that reads the session
# once always misses the ones forked while it runs.
_FORKER = """
import collections, os, sys
kids = collections.deque()
os.write(int(sys.argv[1]), b"x")
os.close(int(sys.argv[1]))
while True:
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        os.execvp("sleep", ["sleep", "1000"])
    kids.append(pid)
    if len(kids) > 20:
        old = kids.popleft()
        os.kill(old, 9)
        os.waitpid(old, 0)
"""

_FORKING_TOOL = """
import os, subprocess, sys
forker = sys.argv[1]
sys.stdout.write("ready> ")
sys.stdout.flush()
for line in sys.stdin:
    r, w = os.pipe()
    subprocess.Popen([sys.executable, forker, str(w)], pass_fds=[w], process_group=0)
    os.close(w)
    os.read(r, 1)  # the helper runs
    sys.stdout.write(f"{os.getsid(0)}\\nready> ")
    sys.stdout.flush()
"""


def _session_members(sid: int) -> list[int]:
    """Live (not zombie) processes in session *sid*."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            data = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry))
    return members


@pytest.mark.anyio
@pytest.mark.parametrize("cgroups", [False, True], ids=["session", "cgroup"])
async def test_every_process_of_the_session_dies_with_the_tool(
    tmp_path: Path, pty: bool, cgroups: bool
) -> None:
    # With cgroups=False the session sweep alone must do it: it repeats until it finds no
    # process it has not killed. (Where cgroup v2 is not writable, both runs test the sweep.)
    forker = _write(tmp_path / "forker.py", _FORKER)
    tool = _write(tmp_path / "forking_tool.py", _FORKING_TOOL)
    spec = ToolSpec(
        name="forking",
        argv=[sys.executable, tool, forker],
        ready=r"ready> $",
        pty=pty,
        shutdown_grace=0.5,
    )
    for _ in range(3):
        transport = LocalTransport(cgroups=cgroups)
        async with launch_cluster(spec, 1, restart=False, transport=transport) as cluster:
            sid = int((await cluster.send("go", timeout=_START_TIMEOUT)).text.strip())
        assert _session_members(sid) == []


_DAEMONIZING_TOOL = """
import os, signal, sys
pid_file = sys.argv[1]
sys.stdout.write("ready> ")
sys.stdout.flush()
for line in sys.stdin:
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                signal.signal(signum, signal.SIG_IGN)
            with open(pid_file, "w") as f:
                f.write(str(os.getpid()))
            os.write(w, b"x")
            while True:
                signal.pause()
        os._exit(0)
    os.close(w)
    os.read(r, 1)  # the daemon has written its pid
    sys.stdout.write(f"started {os.getsid(0)}\\nready> ")
    sys.stdout.flush()
"""


@pytest.mark.anyio
@pytest.mark.skipif(_own_cgroup() is None, reason="needs a writable cgroup v2 hierarchy")
async def test_a_daemon_started_by_the_tool_dies_with_the_cluster(
    tmp_path: Path, pty: bool
) -> None:
    tool = _write(tmp_path / "daemonizing_tool.py", _DAEMONIZING_TOOL)
    pid_file = tmp_path / "daemon.pid"
    spec = ToolSpec(
        name="daemonizing",
        argv=[sys.executable, tool, str(pid_file)],
        ready=r"ready> $",
        pty=pty,
        shutdown_grace=0.5,
    )
    async with launch_cluster(spec, 1, restart=False) as cluster:
        reply = (await cluster.send("go", timeout=_START_TIMEOUT)).text
        assert reply.startswith("started ")
        daemon = int(pid_file.read_text())
        # In a session of its own: out of reach of the tool's session sweep.
        assert os.getsid(daemon) != int(reply.split()[1])
    try:
        assert wait_gone([daemon], timeout=_GONE_TIMEOUT) == []
    finally:
        if alive([daemon]):
            os.kill(daemon, signal.SIGKILL)


def _worker_threads() -> list[threading.Thread]:
    return [
        thread
        for thread in threading.enumerate()
        if thread.name.startswith(("Trio thread", "AnyIO worker thread"))
    ]


@pytest.mark.anyio
async def test_a_tool_outlives_the_worker_threads_of_the_event_loop(
    tmp_path: Path, pty: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PR_SET_PDEATHSIG fires when the *thread* that forked the child ends. Trio forks in a
    # cached worker thread that ends after a while idle: the tool must not go with it.
    import trio._core._thread_cache as thread_cache

    monkeypatch.setattr(thread_cache, "IDLE_TIMEOUT", 0.05)
    tool = _write(tmp_path / "stubborn.py", _STUBBORN)
    pid_file = tmp_path / "tool.pid"
    spec = ToolSpec(
        name="stubborn",
        argv=[sys.executable, tool, str(pid_file)],
        ready=r"ready> $",
        pty=pty,
        shutdown_grace=0.5,
    )
    async with launch_cluster(spec, 1, restart=False) as cluster:
        pid = int(pid_file.read_text())
        for thread in _worker_threads():
            thread.join(_START_TIMEOUT)  # blocks the loop, on purpose: nothing else runs
        assert alive([pid]) == [pid]
        assert (await cluster.send("hello", timeout=_START_TIMEOUT)).text == "ok"
        assert alive([pid]) == [pid]


@pytest.mark.anyio
async def test_without_a_writable_cgroup_the_session_sweep_contains_the_tool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As where cgroup v2 is missing or read-only: no crash, a debug event, the sweep alone.
    monkeypatch.setattr(_Cgroup, "_parent", str(tmp_path / "no-cgroup-here"))
    forker = _write(tmp_path / "forker.py", _FORKER)
    tool = _write(tmp_path / "forking_tool.py", _FORKING_TOOL)
    spec = ToolSpec(
        name="forking", argv=[sys.executable, tool, forker], ready=r"ready> $", shutdown_grace=0.5
    )
    with structlog.testing.capture_logs() as logs:
        async with launch_cluster(spec, 1, restart=False) as cluster:
            sid = int((await cluster.send("go", timeout=_START_TIMEOUT)).text.strip())
    assert _session_members(sid) == []
    assert [log["event"] for log in logs if log["event"].startswith("cgroup_")] == [
        "cgroup_unavailable"
    ]


@pytest.mark.skipif(_own_cgroup() is None, reason="needs a writable cgroup v2 hierarchy")
def test_the_empty_cgroup_of_a_killed_owner_is_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    # A process of ours that was SIGKILLed could not remove its cgroups: the next one does.
    parent = _own_cgroup()
    assert parent is not None
    owner = subprocess.Popen([sys.executable, "-c", ""])
    owner.wait()
    stale = os.path.join(parent, f"aimcluster-{owner.pid}-0")
    os.mkdir(stale)
    monkeypatch.setattr(_Cgroup, "_parent", None)  # as in a new process
    group = _Cgroup.create()
    assert group is not None
    os.rmdir(group.path)
    assert not os.path.exists(stale)
