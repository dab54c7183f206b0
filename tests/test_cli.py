"""The ``aimcluster`` command line, driven in-process (CliRunner) and as a real subprocess."""

from __future__ import annotations

import io
import itertools
import json
import os
import queue
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from click.testing import CliRunner, Result
from rich.console import Console

import aimcluster
from aimcluster import ToolSpec, tools
from aimcluster._cli.batch import Batch, BatchOutcome, run_batch
from aimcluster._cli.common import _logger
from aimcluster._cli.demo import DEMO_STEPS, expected_content, make_project, verify_project
from aimcluster._cli.items import InputError, build_jobs, items_from_paths
from aimcluster._cli.journal import Journal, read_journal
from aimcluster._cli.main import cli
from aimcluster._cli.progress import LiveDisplay, PlainDisplay, Tracker, format_eta
from aimcluster._cli.report import FailureSummary, InstanceSummary, RunSummary
from aimcluster._cli.summary_render import render_summary
from aimcluster._cli.terminal import shown
from aimcluster._cli.toolref import resolve_tool
from aimcluster._core.jobs import Job, JobResult

SNAPSHOTS = Path(__file__).parent / "snapshots"
STEP_ARGS = [arg for step in DEMO_STEPS for arg in ("--step", step)]
# Bounds for waiting on a subprocess; never a guess of how long something takes.
TIMEOUT = 60.0
PROGRESS_LINE = re.compile(
    r"^\[progress\] (\d+)/(\d+) done, (\d+) failed, \d+\.\d items/s, eta (\d+s|\d+m\d\ds|\?)$"
)

backends = pytest.mark.parametrize("backend", ["asyncio", "trio"])


# -- helpers ----------------------------------------------------------------------------------


def invoke(*args: str, backend: str = "asyncio") -> Result:
    return CliRunner().invoke(cli, ["--backend", backend, *args], catch_exceptions=False)


def records(journal: Path) -> list[dict[str, Any]]:
    return list(read_journal(journal).records)


def project(tmp_path: Path, files: int) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "project"
    return root, make_project(root, files)


def run_args(root: Path, journal: Path, *extra: str, tool: str = "mock") -> list[str]:
    return [
        "run",
        "--tool",
        tool,
        "--cwd",
        str(root),
        "--journal",
        str(journal),
        "pkg/*.py",
        *STEP_ARGS,
        *extra,
    ]


def descendants(pid: int) -> list[int]:
    """Every live process below *pid*, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Wait on pidfds (no polling) until *pids* exit; return those still running."""
    fds = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            continue
    try:
        deadline = time.monotonic() + timeout
        for fd in fds:
            # A pidfd becomes readable when its process exits.
            select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    finally:
        for fd in fds:
            os.close(fd)
    return [pid for pid in pids if running(pid)]


class CliProcess:
    """``python -m aimcluster ...`` as a child whose output lines can be awaited."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aimcluster", *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._threads = [
            threading.Thread(target=self._pump, args=(self.process.stdout, True), daemon=True),
            threading.Thread(target=self._pump, args=(self.process.stderr, False), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self, stream: io.TextIOBase, is_stdout: bool) -> None:
        for line in stream:
            if is_stdout:
                self.stdout.append(line)
                self.lines.put(line.rstrip("\n"))
            else:
                self.stderr.append(line)
        if is_stdout:
            self.lines.put(None)

    def wait_for_line(self, predicate: Callable[[str], bool]) -> str:
        deadline = time.monotonic() + TIMEOUT
        while True:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"exited before the line: {''.join(self.stdout)}")
            if predicate(line):
                return line

    def finish(self) -> int:
        code = self.process.wait(timeout=TIMEOUT)
        for thread in self._threads:
            thread.join(timeout=TIMEOUT)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return code

    @property
    def output(self) -> str:
        return "".join(self.stdout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.finish()


@pytest.fixture
def cli_process() -> Iterator[Callable[..., CliProcess]]:
    started: list[CliProcess] = []

    def start(*args: str, cwd: Path) -> CliProcess:
        started.append(CliProcess(*args, cwd=cwd))
        return started[-1]

    yield start
    for process in started:
        process.kill()


def first_progress(line: str) -> bool:
    return PROGRESS_LINE.match(line) is not None


# -- demo -------------------------------------------------------------------------------------


def test_demo_verifies_every_file_and_prints_what_changed(
    tmp_path: Path, cli_process: Callable[..., CliProcess]
) -> None:
    demo = cli_process("demo", "--files", "40", "--count", "4", cwd=tmp_path)
    code = demo.finish()

    out = demo.output
    assert code == 0, out + "".join(demo.stderr)
    assert "Verified 40/40 files: each has exactly its expected DOC_ID header" in out
    assert "40 files changed, 40 insertions(+), 0 deletions(-)" in out
    assert "+# DOC_ID: 8a528dfa2190" in out  # sha256("pkg/module_001.py")[:12]
    assert "items      40 total: 40 ok, 0 failed" in out
    assert "Traceback" not in "".join(demo.stderr)
    # The temporary project is gone (no --keep).
    folder = re.search(r"files in (\S+)/pkg", out)
    assert folder is not None
    assert not Path(folder.group(1)).exists()


def test_demo_keep_leaves_the_verified_project(tmp_path: Path) -> None:
    result = invoke("demo", "--files", "12", "--count", "2", "--delay", "0", "--keep")

    assert result.exit_code == 0, result.output
    kept = re.search(r"Kept the project \(and its journal\) in (\S+)", result.stdout)
    assert kept is not None
    root = Path(kept.group(1))
    try:
        assert len(list((root / "pkg").glob("*.py"))) == 12
        assert len(records(root / "aimcluster-journal.jsonl")) == 12
    finally:
        shutil.rmtree(root)


# -- run --------------------------------------------------------------------------------------


@backends
def test_run_edits_every_file_and_journals_each_job(tmp_path: Path, backend: str) -> None:
    root, originals = project(tmp_path, 30)
    journal = tmp_path / "journal.jsonl"
    report = tmp_path / "report.json"

    result = invoke(*run_args(root, journal, "-n", "3", "--report", str(report)), backend=backend)

    assert result.exit_code == 0, result.output
    assert verify_project(root, originals).ok
    lines = records(journal)
    assert sorted(record["item"] for record in lines) == sorted(originals)
    for record in lines:
        item = record["item"]
        assert record["status"] == "ok"
        assert record["error"] is None
        assert record["attempts"] == 1
        assert record["instance"] in (0, 1, 2)
        assert record["steps"] == [step.replace("{item}", item) for step in DEMO_STEPS]
        assert record["replies"] == [
            f"Added {item} to the chat",
            f"Added DOC_ID header to {item}",
            f"Removed {item} from the chat",
        ]
    data = json.loads(report.read_text())
    assert data["exit_code"] == 0
    assert data["summary"]["ok"] == 30
    assert data["summary"]["failed"] == 0
    assert data["summary"]["succeeded"] is True
    assert [m["index"] for m in data["summary"]["instances"]] == [0, 1, 2]
    assert sum(m["jobs_ok"] for m in data["summary"]["instances"]) == 30
    assert "All items done." in result.stdout

    again = invoke(*run_args(root, journal), backend=backend)

    assert again.exit_code == 0
    assert "Nothing to do: all 30 items are already done" in again.stdout
    assert len(records(journal)) == 30


def test_run_prints_plain_progress_lines_when_stdout_is_not_a_terminal(tmp_path: Path) -> None:
    root, _ = project(tmp_path, 20)

    result = invoke(*run_args(root, tmp_path / "j.jsonl", "-n", "2"))

    assert result.exit_code == 0, result.output
    assert "\x1b[" not in result.stdout
    progress = [line for line in result.stdout.splitlines() if line.startswith("[progress]")]
    assert progress, result.stdout
    for line in progress:
        assert PROGRESS_LINE.match(line), line
    assert progress[-1].startswith("[progress] 20/20 done, 0 failed, ")
    assert progress[-1].endswith("eta 0s")


def test_run_reports_failures_exits_1_and_retries_them_on_the_next_run(tmp_path: Path) -> None:
    items = tmp_path / "items.txt"
    items.write_text("good\n# a comment\n\nbad\n")
    journal = tmp_path / "j.jsonl"
    base = ["run", "-t", "mock", "-n", "1", "--items-file", str(items), "--journal", str(journal)]

    result = invoke(*base, "--step", "/echo {item}", "--step", "/crash 5")

    assert result.exit_code == 1
    lines = records(journal)
    assert [(r["item"], r["status"]) for r in lines] == [("good", "failed"), ("bad", "failed")]
    assert lines[0]["replies"] == ["good"]
    assert lines[0]["error"]["type"] == "InstanceCrashedError"
    assert "code 5" in lines[0]["error"]["message"]
    assert "Failures (2)" in result.stdout
    assert "Some items failed." in result.stdout
    assert "Run the same command again to resume" in result.stdout

    retried = invoke(*base, "--step", "/echo {item} again")

    assert retried.exit_code == 0, retried.output
    assert [(r["item"], r["status"], r["replies"]) for r in records(journal)[2:]] == [
        ("good", "ok", ["good again"]),
        ("bad", "ok", ["bad again"]),
    ]

    fresh = invoke(*base, "--step", "/echo {item} fresh", "--fresh")

    assert fresh.exit_code == 0
    assert [r["replies"] for r in records(journal)[4:]] == [["good fresh"], ["bad fresh"]]


def test_run_reports_a_tool_that_does_not_start(tmp_path: Path) -> None:
    spec = tmp_path / "broken.toml"
    spec.write_text(f'argv = ["{sys.executable}", "-c", "print(\'boom\')"]\nready = "> "\n')
    (tmp_path / "a.txt").write_text("a")

    result = invoke(
        "run",
        "-t",
        str(spec),
        "-s",
        "x",
        "--cwd",
        str(tmp_path),
        "a.txt",
        "-n",
        "1",
        "--journal",
        str(tmp_path / "j.jsonl"),
    )

    assert result.exit_code == 3
    assert result.stderr.startswith(
        "aimcluster: error: instance 0: 'broken' exited with code 0 before showing a ready prompt"
    )
    assert "boom" in result.stderr


def test_sticky_by_keeps_a_group_on_one_instance_in_order(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(f'{{"item": "t{n}", "group": "g{n % 3}"}}\n' for n in range(12)))

    result = invoke(
        "run",
        "-t",
        "mock",
        "-n",
        "3",
        "--jsonl",
        str(tasks),
        "--sticky-by",
        "group",
        "-s",
        "/echo {group}",
        "--journal",
        str(tmp_path / "j.jsonl"),
    )

    assert result.exit_code == 0, result.output
    by_group: dict[str, list[dict[str, Any]]] = {}
    for record in records(tmp_path / "j.jsonl"):
        by_group.setdefault(record["replies"][0], []).append(record)
    assert sorted(by_group) == ["g0", "g1", "g2"]
    for group, members in by_group.items():
        assert len({r["instance"] for r in members}) == 1, group
        assert [r["item"] for r in members] == [f"t{n}" for n in range(12) if f"g{n % 3}" == group]
        for earlier, later in itertools.pairwise(members):
            assert earlier["ended_at"] <= later["started_at"]


def test_jsonl_items_fill_placeholders_and_share_a_file_in_order(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        '{"path": "a.py", "task": "first", "n": 1}\n'
        "\n"
        '{"path": "a.py", "task": "second", "n": 2}\n'
        '{"path": "b.py", "task": "other", "n": [3]}\n'
    )

    result = invoke(
        "run",
        "--tool",
        "mock",
        "--jsonl",
        str(tasks),
        "--item-field",
        "path",
        "--step",
        '/echo {task} {path} {n} {{literal}} {"json": 1}',
        "--journal",
        str(tmp_path / "j.jsonl"),
        "-n",
        "3",
        "--cwd",
        str(tmp_path),
    )

    assert result.exit_code == 0, result.output
    by_item = {r["item"]: r for r in records(tmp_path / "j.jsonl")}
    assert by_item["a.py"]["replies"] == ['first a.py 1 {literal} {"json": 1}']
    assert by_item["a.py#2"]["replies"] == ['second a.py 2 {literal} {"json": 1}']
    assert by_item["b.py"]["replies"] == ['other b.py [3] {literal} {"json": 1}']
    # The two tasks on a.py ran one after the other, in file order.
    assert by_item["a.py"]["ended_at"] <= by_item["a.py#2"]["started_at"]


def test_resume_after_sigkill_runs_each_item_exactly_once(
    tmp_path: Path, cli_process: Callable[..., CliProcess]
) -> None:
    root, originals = project(tmp_path, 60)
    journal = tmp_path / "journal.jsonl"
    args = run_args(root, journal, "-n", "2", "--progress", "plain", tool="mock --delay 0.05")
    first = cli_process(*args, cwd=tmp_path)
    # A progress line is printed only after the results it counts are in the journal.
    line = first.wait_for_line(first_progress)
    match = PROGRESS_LINE.match(line)
    assert match is not None
    agents = descendants(first.process.pid)
    assert len(agents) == 2

    first.process.send_signal(signal.SIGKILL)
    assert first.finish() == -signal.SIGKILL

    # The orphaned agents see EOF on stdin and leave.
    assert wait_gone(agents) == []
    done_before = [r["item"] for r in records(journal) if r["status"] == "ok"]
    assert int(match.group(1)) <= len(done_before) < 60

    second = invoke(*args)

    assert second.exit_code == 0, second.output
    assert f"({len(done_before)} already done)" in second.stdout
    ok = Counter(r["item"] for r in records(journal) if r["status"] == "ok")
    assert ok == Counter(dict.fromkeys(originals, 1))
    # Each file has exactly one header, with exactly the expected id, and nothing else changed.
    verification = verify_project(root, originals)
    assert verification.wrong == ()
    assert verification.ok


@pytest.mark.parametrize(
    ("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_a_signal_stops_gracefully_with_a_summary_and_exit_code_128_plus_n(
    tmp_path: Path, cli_process: Callable[..., CliProcess], signum: signal.Signals, exit_code: int
) -> None:
    root, originals = project(tmp_path, 20)
    journal = tmp_path / "journal.jsonl"
    args = run_args(
        root, journal, "-n", "2", "--progress", "plain", "--grace", "30", tool="mock --delay 0.3"
    )
    cli_run = cli_process(*args, cwd=tmp_path)
    cli_run.wait_for_line(first_progress)
    agents = descendants(cli_run.process.pid)

    cli_run.process.send_signal(signum)
    code = cli_run.finish()

    out = cli_run.output
    assert code == exit_code, out + "".join(cli_run.stderr)
    assert f"[stop] {signum.name}: starting no new jobs; waiting up to 30 s" in out
    assert "Summary" in out
    assert f"stopped    by {signum.name}" in out
    assert "Stopped before every item was done." in out
    assert "Traceback" not in "".join(cli_run.stderr)
    assert wait_gone(agents) == []
    # The journal is intact: every line whole, and the jobs in flight finished in the grace.
    assert journal.read_bytes().endswith(b"\n")
    contents = read_journal(journal)
    assert contents.torn_bytes == 0
    assert contents.bad_lines == ()
    done = [r["item"] for r in contents.records]
    assert all(r["status"] == "ok" for r in contents.records)
    assert 2 <= len(done) < 20
    not_started = re.search(r"(\d+) not started", out)
    assert not_started is not None
    assert len(done) + int(not_started.group(1)) == 20
    for relative, original in originals.items():
        content = (root / relative).read_bytes()
        want = expected_content(relative, original) if relative in done else original
        assert content == want, relative


def test_sighup_cancels_what_overruns_the_grace_and_leaves_no_tool_running(
    tmp_path: Path, cli_process: Callable[..., CliProcess]
) -> None:
    # A closed terminal sends SIGHUP: the run stops as it does on SIGTERM.
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        '{"item": "quick", "s": 0}\n'
        + "".join(f'{{"item": "slow{n}", "s": 60}}\n' for n in range(3))
    )
    journal = tmp_path / "journal.jsonl"
    cli_run = cli_process(
        *("run", "-t", "mock", "-n", "2", "--jsonl", str(tasks), "-s", "/sleep {s}"),
        *("--journal", str(journal), "--progress", "plain", "--grace", "0.5"),
        cwd=tmp_path,
    )
    # 'quick' is journaled; 'slow0' has held the other instance since the start.
    cli_run.wait_for_line(first_progress)
    agents = descendants(cli_run.process.pid)
    assert len(agents) == 2

    cli_run.process.send_signal(signal.SIGHUP)
    code = cli_run.finish()

    out = cli_run.output
    assert code == 129, out + "".join(cli_run.stderr)
    assert "[stop] SIGHUP: starting no new jobs; waiting up to 0.5 s" in out
    assert "stopped    by SIGHUP" in out
    assert "Traceback" not in "".join(cli_run.stderr)
    assert wait_gone(agents) == []
    statuses = {r["item"]: r["status"] for r in records(journal)}
    assert statuses["quick"] == "ok"
    assert statuses["slow0"] == "cancelled"
    assert "slow2" not in statuses


def test_a_run_whose_terminal_is_gone_still_stops_cleanly_on_sighup(tmp_path: Path) -> None:
    # A closed terminal: the reader of the output is gone, then SIGHUP comes. rich used to
    # raise SystemExit from inside the event loop, which hung the process at exit.
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"item": "quick", "s": 0}\n{"item": "slow", "s": 60}\n')
    journal = tmp_path / "journal.jsonl"
    args = ["run", "-t", "mock", "-n", "2", "--jsonl", str(tasks), "-s", "/sleep {s}"]
    args += ["--journal", str(journal), "--progress", "plain", "--grace", "0.5"]
    with (tmp_path / "stderr.txt").open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "aimcluster", *args],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(b"[progress]"):
                break
        agents = descendants(process.pid)
        process.stdout.close()

        process.send_signal(signal.SIGHUP)
        code = process.wait(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert code == 129, (tmp_path / "stderr.txt").read_text()
    assert wait_gone(agents) == []
    statuses = {r["item"]: r["status"] for r in records(journal)}
    assert statuses == {"quick": "ok", "slow": "cancelled"}


# Makes the pty on stdin the child's controlling terminal (it leads a new session): closing the
# master then hangs the terminal up as closing a terminal window does, SIGHUP and all.
_ON_A_TERMINAL = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, '-m', 'aimcluster', *sys.argv[1:]])"
)


@backends
def test_closing_the_terminal_exits_129_without_a_traceback(tmp_path: Path, backend: str) -> None:
    # The terminal window is closed: SIGHUP comes, and every write to the terminal fails with
    # EIO from then on. The summary printed after the run used to raise it: exit 1, traceback.
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"item": "quick", "s": 0}\n{"item": "slow", "s": 60}\n')
    journal = tmp_path / "journal.jsonl"
    report = tmp_path / "report.json"
    args = ["--backend", backend, "run", "-t", "mock", "-n", "2", "--jsonl", str(tasks)]
    args += ["-s", "/sleep {s}", "--journal", str(journal), "--report", str(report)]
    args += ["--progress", "plain", "--grace", "0.5"]
    master, slave = os.openpty()
    try:
        with (tmp_path / "stderr.txt").open("w") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-c", _ON_A_TERMINAL, *args],
                cwd=tmp_path,
                stdin=slave,
                stdout=slave,
                stderr=stderr,
                start_new_session=True,
            )
        os.close(slave)
        seen = b""
        deadline = time.monotonic() + TIMEOUT
        while b"[progress]" not in seen:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, seen
            seen += os.read(master, 4096)
        agents = descendants(process.pid)
    finally:
        os.close(master)
    try:
        code = process.wait(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    errors = (tmp_path / "stderr.txt").read_text()
    assert code == 129, errors
    assert "Traceback" not in errors
    assert wait_gone(agents) == []
    assert json.loads(report.read_text())["exit_code"] == 129
    statuses = {r["item"]: r["status"] for r in records(journal)}
    assert statuses == {"quick": "ok", "slow": "cancelled"}


@backends
def test_verbose_logging_to_a_gone_stderr_does_not_stop_the_run(
    tmp_path: Path, backend: str
) -> None:
    # -v logs each instance event to stderr; a reader of stderr that went away (EPIPE) used
    # to abort the run from inside the event loop, with exit code 1.
    root, originals = project(tmp_path, 4)
    journal = tmp_path / "journal.jsonl"
    report = tmp_path / "report.json"
    args = ["--backend", backend, "-vv", *run_args(root, journal, "-n", "2")]
    args += ["--report", str(report), "--progress", "none"]
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        process = subprocess.run(
            [sys.executable, "-m", "aimcluster", *args],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=write_end,
            timeout=TIMEOUT,
            check=False,
        )
    finally:
        os.close(write_end)

    assert process.returncode == 0, process.stdout
    assert json.loads(report.read_text())["exit_code"] == 0
    assert sorted(r["item"] for r in records(journal)) == sorted(originals)
    assert verify_project(root, originals).ok


# -- bad input --------------------------------------------------------------------------------


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


BAD_INPUTS: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "no items matched": (
        lambda d: ["run", "-t", "mock", "-s", "x", "--cwd", str(d), "nothing/*.py"],
        "no items matched 'nothing/*.py' (relative to {d})",
    ),
    "missing file": (
        lambda d: ["run", "-t", "mock", "-s", "x", "--cwd", str(d), "missing.py"],
        "no such file: 'missing.py' (relative to {d})",
    ),
    "unknown tool": (
        lambda d: ["run", "-t", "nosuch", "-s", "x", "--cwd", str(d), "*.py"],
        f"unknown tool 'nosuch'; known tools are: {', '.join(tools.names())} "
        "(or a path to a .toml/.json tool spec)",
    ),
    "bad jsonl line": (
        lambda d: [
            "run",
            "-t",
            "mock",
            "-s",
            "x",
            "--jsonl",
            write(d / "in.jsonl", '{"item": "a"}\n\n{"item": b}\n'),
        ],
        "{d}/in.jsonl:3: not valid JSON (Expecting value)",
    ),
    "jsonl line not an object": (
        lambda d: ["run", "-t", "mock", "-s", "x", "--jsonl", write(d / "in.jsonl", "[1]\n")],
        "{d}/in.jsonl:1: expected a JSON object, got list",
    ),
    "missing placeholder field": (
        lambda d: [
            "run",
            "-t",
            "mock",
            "-s",
            "/add {item}",
            "-s",
            "do {task}",
            "--jsonl",
            write(d / "in.jsonl", '{"item": "a.py", "size": 3}\n'),
        ],
        "step 2 uses {{task}}, but item 'a.py' ({d}/in.jsonl:1) has no field 'task'; "
        "it has: item, size",
    ),
    "executable not found": (
        lambda d: [
            "run",
            "-t",
            write(d / "ghost.toml", 'argv = ["/nonexistent/agent"]\nready = "> "\n'),
            "-s",
            "x",
            "--items-file",
            write(d / "i.txt", "a\n"),
        ],
        "tool 'ghost': executable '/nonexistent/agent' was not found on PATH or is not an "
        "executable file",
    ),
    "unknown spec field": (
        lambda d: [
            "run",
            "-t",
            write(d / "t.json", '{"argv": ["x"], "ready": ">", "colour": 1}'),
            "-s",
            "x",
            "--items-file",
            write(d / "i.txt", "a\n"),
        ],
        "tool spec file '{d}/t.json': unknown field(s) 'colour'; valid fields are: "
        + ", ".join(field.name for field in attrs.fields(ToolSpec)),
    ),
    "no steps": (
        lambda d: ["run", "-t", "mock", "--items-file", write(d / "i.txt", "a\n")],
        "no steps given: pass at least one --step, e.g. --step '/add {{item}}'",
    ),
    "no items given": (
        lambda d: ["run", "-t", "mock", "-s", "x"],
        "no items given: name files or globs, or pass --items-file or --jsonl",
    ),
    "directory": (
        lambda d: ["run", "-t", "mock", "-s", "x", "--cwd", str(d), "."],
        "'.' is a directory; name files, or a glob such as './**/*.py'",
    ),
    "bad option value": (
        lambda d: ["run", "-t", "mock", "-s", "x", "--count", "0", "a.py"],
        "Invalid value for '-n' / '--count': 0 is not in the range x>=1. "
        "(see 'aimcluster run --help')",
    ),
    "worktree outside git": (
        lambda d: [
            "run",
            "-t",
            "mock",
            "-s",
            "x",
            "--cwd",
            str(d),
            "--isolation",
            "worktree",
            "--journal",
            str(d / "j.jsonl"),
            write(d / "a.py", ""),
        ],
        "--isolation worktree needs --cwd inside a git repository: {d}",
    ),
    "unknown tool for check": (
        lambda d: ["check", "nosuch"],
        f"unknown tool 'nosuch'; known tools are: {', '.join(tools.names())} "
        "(or a path to a .toml/.json tool spec)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_on_stderr_and_exit_code_2(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    make_args, message = BAD_INPUTS[case]

    result = invoke(*make_args(tmp_path))

    assert result.exit_code == 2
    assert result.stderr == f"aimcluster: error: {message.format(d=tmp_path)}\n"
    assert result.stdout == ""


def test_bad_input_from_the_console_script_has_no_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aimcluster", "run", "-t", "mock", "-s", "x", "nope/*.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )

    assert result.returncode == 2
    assert result.stderr == (
        f"aimcluster: error: no items matched 'nope/*.py' (relative to {tmp_path})\n"
    )


# -- isolation --------------------------------------------------------------------------------


def test_dir_isolation_gives_each_instance_its_own_directory(tmp_path: Path) -> None:
    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / name).write_text(name)

    result = invoke(
        "run",
        "-t",
        "python",
        "--cwd",
        str(tmp_path),
        "--isolation",
        "dir",
        "-n",
        "2",
        "--journal",
        str(tmp_path / "j.jsonl"),
        "*.txt",
        "-s",
        "__import__('os').getcwd()",
        "-s",
        "open(r'{item}').read()",
    )

    assert result.exit_code == 0, result.output
    for record in records(tmp_path / "j.jsonl"):
        cwd, content = record["replies"]
        assert cwd == repr(str(tmp_path / ".aimcluster" / f"instance-{record['instance']}"))
        # Path items are absolute, since the tool does not run in --cwd.
        assert record["item"] == str(tmp_path / Path(record["item"]).name)
        assert content == repr(Path(record["item"]).name)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_worktree_isolation_lands_the_tools_own_commits_one_per_item(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        (repo / name).write_text(f"{name}\n")
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "start"], cwd=repo, check=True)

    result = invoke(
        "run",
        "-t",
        "bash",
        "--cwd",
        str(repo),
        "--isolation",
        "worktree",
        "-n",
        "2",
        "--journal",
        str(tmp_path / "j.jsonl"),
        "*.txt",
        "-s",
        "echo edited >> {item} && " + " ".join(git) + " commit -qam 'edit {item}' && pwd",
    )

    assert result.exit_code == 0, result.output
    # The main checkout is untouched; the tool's commits land, one per item, on one branch.
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        assert (repo / name).read_text() == f"{name}\n"
    branches = subprocess.run(
        ["git", "branch", "--format=%(refname:short)"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    [ours] = [b for b in branches if b.startswith("aimcluster/")]
    assert ours.startswith("aimcluster/run-")
    log = subprocess.run(
        ["git", "log", "--reverse", "--format=%s", f"HEAD..{ours}"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert log == [f"aimcluster: {name}" for name in ("a.txt", "b.txt", "c.txt", "d.txt")]
    # The worktrees (in the repository's git directory) are gone; only the main one is left.
    worktrees = subprocess.run(
        ["git", "worktree", "list"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert len(worktrees) == 1
    for record in records(tmp_path / "j.jsonl"):
        assert record["replies"][0].startswith(str(repo / ".git" / "aimcluster"))
        assert record["changed"] is True


# -- tools and check --------------------------------------------------------------------------


def test_tools_lists_each_profile_with_its_exact_command_line() -> None:
    result = invoke("tools")

    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["tool", "io", "ready", "prompt", "command", "line"]
    assert len(lines) == 1 + len(tools.names())
    for name, line in zip(tools.names(), lines[1:], strict=True):
        assert line.startswith(name + " ")
        # One line per tool: a newline in an argument (python's boot script) is shown as \n.
        assert line.endswith("  " + shown(shlex.join(tools.get(name).argv)))
    assert "pty" in next(line for line in result.stdout.splitlines() if line.startswith("bash"))


@pytest.mark.parametrize(
    ("tool", "reply"),
    [
        ("mock", "'aimcluster-check'"),
        ("python", "'aimcluster-check'"),
        ("bash", "'aimcluster-check'"),
    ],
)
def test_check_starts_the_tool_and_shows_the_probe_reply(
    tool: str, reply: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Narrower than the command line: it must still come out on one line, copyable.
    monkeypatch.setenv("COLUMNS", "30")
    result = invoke("check", tool)

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"tool     {tool}"
    assert lines[1] == f"command  {shown(shlex.join(tools.get(tool).argv))}"
    assert re.fullmatch(r"started  ready in \d+(\.\d+)? (µs|ms|s) \(pid \d+\)", lines[2])
    assert lines[3].startswith("probe    ")
    assert f"-> {reply} in " in lines[3]
    assert lines[4].startswith("stopped  in ")
    assert lines[5] == "OK"


def test_check_with_a_custom_probe_and_a_failing_start(tmp_path: Path) -> None:
    probed = invoke("check", "mock", "--probe", "/echo custom")
    assert probed.exit_code == 0
    assert "probe    '/echo custom' -> 'custom' in " in probed.stdout

    # A spec's own probe is used, and its reply must match the probe's expect.
    mock = tmp_path / "mock.json"
    mock.write_text(
        json.dumps(
            {
                "argv": list(tools.mock().argv),
                "ready": "> ",
                "probe": {"command": "/echo hello", "expect": "^bye$"},
            }
        )
    )
    mismatch = invoke("check", str(mock))
    assert mismatch.exit_code == 1
    assert "probe    '/echo hello' -> 'hello' in " in mismatch.stdout
    assert "probe    FAILED: the reply does not match the spec's expect '^bye$'" in mismatch.stdout

    spec = tmp_path / "broken.toml"
    spec.write_text(f'argv = ["{sys.executable}", "-c", "print(\'boom\')"]\nready = "> "\n')
    failed = invoke("check", str(spec))
    assert failed.exit_code == 1
    assert failed.stderr.startswith(
        "aimcluster: error: instance 0: 'broken' exited with code 0 before showing a ready prompt"
    )
    assert "boom" in failed.stderr


# -- journal ----------------------------------------------------------------------------------


def result_for(item: str, status: str = "ok") -> JobResult:
    return JobResult(
        job=Job(item=item, steps=["/add x"]),
        status=status,  # type: ignore[arg-type]
        instance=0,
        replies=("Added x to the chat",),
        attempts=1,
        started_at=1_700_000_000.0,
        ended_at=1_700_000_001.5,
        elapsed=1.5,
        error_type=None if status == "ok" else "InstanceCrashedError",
        error=None if status == "ok" else "boom",
        timings=(0.25,),
        cwd="/work/x",
        output=None if status == "ok" else "half a line",
    )


@pytest.mark.anyio
async def test_journal_ignores_a_torn_last_line_and_cuts_it_off_before_appending(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal(path, run="r1") as journal:
        await journal.append(result_for("a"))
        await journal.append(result_for("b", "failed"))
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"v": 1, "run": "r1", "item": "c", "sta')

    torn = read_journal(path)
    assert [r["item"] for r in torn.records] == ["a", "b"]
    assert torn.torn_bytes == len(b'{"v": 1, "run": "r1", "item": "c", "sta')
    assert torn.done == frozenset({"a"})

    with Journal(path, run="r2") as journal:
        await journal.append(result_for("c"))
    healed = read_journal(path)
    assert healed.torn_bytes == 0
    assert healed.bad_lines == ()
    assert [(r["item"], r["run"]) for r in healed.records] == [
        ("a", "r1"),
        ("b", "r1"),
        ("c", "r2"),
    ]
    assert healed.done == frozenset({"a", "c"})
    assert healed.records[0] == {
        "v": 2,
        "run": "r1",
        "item": "a",
        "job": None,
        "status": "ok",
        "instance": 0,
        "tool": None,
        "failovers": [],
        "cwd": "/work/x",
        "attempts": 1,
        "started_at": "2023-11-14T22:13:20.000Z",
        "ended_at": "2023-11-14T22:13:21.500Z",
        "elapsed": 1.5,
        "steps": ["/add x"],
        "replies": ["Added x to the chat"],
        "timings": [0.25],
        "error": None,
        "output": None,
        "verify": None,
        "usage": None,
    }
    assert healed.records[1]["error"] == {"type": "InstanceCrashedError", "message": "boom"}
    assert healed.records[1]["output"] == "half a line"


def test_two_runs_cannot_share_a_journal(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    path = tmp_path / "journal.jsonl"

    with Journal(path, run="other"):
        result = invoke(
            "run", "-t", "mock", "-s", "x", "--cwd", str(tmp_path), "a.txt", "--journal", str(path)
        )

    assert result.exit_code == 2
    assert result.stderr == (
        f"aimcluster: error: the journal {path} is in use by another aimcluster run\n"
    )


def test_a_missing_journal_is_empty(tmp_path: Path) -> None:
    contents = read_journal(tmp_path / "none.jsonl")
    assert contents.records == ()
    assert contents.done == frozenset()


# -- summary snapshot -------------------------------------------------------------------------


def sample_summary() -> RunSummary:
    return RunSummary(
        tool="mock",
        count=3,
        total=218,
        skipped=10,
        ok=204,
        failed=3,
        cancelled=1,
        not_started=0,
        startup_time=0.0423,
        wall_time=4.2,
        job_p50=0.031,
        job_p95=0.0525,
        instances=(
            InstanceSummary(
                index=0,
                jobs_ok=70,
                jobs_failed=1,
                prompts=213,
                restarts=1,
                reply_p50=0.0004,
                reply_p95=0.021,
            ),
            InstanceSummary(
                index=1,
                jobs_ok=68,
                jobs_failed=2,
                prompts=210,
                restarts=0,
                reply_p50=0.0005,
                reply_p95=0.0208,
            ),
            InstanceSummary(
                index=2,
                jobs_ok=66,
                jobs_failed=1,
                prompts=201,
                restarts=0,
                reply_p50=0.0004,
                reply_p95=1.5,
            ),
        ),
        failures=(
            FailureSummary(
                item="pkg/module_007.py",
                status="failed",
                attempts=2,
                instance=0,
                error_type="InstanceCrashedError",
                error="instance 0 (mock) exited with code 1 while replying to "
                "'Add a DOC_ID header to pkg/module_007.py'",
                output="Editing pkg/module_007.py\nMemoryError: out of tokens",
            ),
            FailureSummary(
                item="pkg/module_100.py",
                status="failed",
                attempts=1,
                instance=1,
                error_type="ReplyTimeoutError",
                error="instance 1 did not finish "
                "replying to 'Add a DOC_ID header' in time; restarting it",
            ),
            FailureSummary(
                item="pkg/module_101.py",
                status="failed",
                attempts=1,
                instance=1,
                error_type="ReplyTimeoutError",
                error="line one\nline two",
            ),
            FailureSummary(
                item="pkg/module_150.py",
                status="cancelled",
                attempts=1,
                instance=2,
                error_type="Cancelled",
                error="cancelled after the 10 s grace period of the stop",
            ),
        ),
        interrupted=None,
        journal="aimcluster-journal.jsonl",
    )


def test_summary_matches_its_snapshot() -> None:
    console = Console(
        file=io.StringIO(), width=100, color_system=None, force_terminal=False, legacy_windows=False
    )
    console.print(render_summary(sample_summary()))
    rendered = console.file.getvalue()  # type: ignore[attr-defined]
    got = "\n".join(line.rstrip() for line in rendered.splitlines()) + "\n"

    snapshot = SNAPSHOTS / "summary.txt"
    if os.environ.get("AIMCLUSTER_UPDATE_SNAPSHOTS"):
        snapshot.write_text(got)
    assert got == snapshot.read_text()


def test_summary_json_has_the_same_facts() -> None:
    data = sample_summary().as_dict()
    assert data["ok"] == 204
    assert data["succeeded"] is False
    assert data["throughput"] == pytest.approx(208 / (4.2 - 0.0423))
    assert data["failures"][3]["status"] == "cancelled"
    assert json.loads(json.dumps(data)) == data


# -- progress displays ------------------------------------------------------------------------


async def run_live(
    spec: aimcluster.ToolSpec, jobs: list[Job], *, count: int, console: Console
) -> BatchOutcome:
    """Run *jobs* as `aimcluster run` does, with the live display drawing on *console*."""
    tracker = Tracker(total=len(jobs))
    batch = Batch(
        spec=spec,
        count=count,
        routing="least_busy",
        jobs=jobs,
        total=len(jobs),
        skipped=0,
        timeout=None,
        retries=0,
        grace=1.0,
        journal=None,
    )
    return await run_batch(
        batch,
        tracker=tracker,
        display=LiveDisplay(tracker, console, interval=0.001),
        logger=_logger(0),
    )


@pytest.mark.anyio
async def test_live_display_shows_the_bar_counts_and_each_instance(tmp_path: Path) -> None:
    root, originals = project(tmp_path, 12)
    jobs, _ = build_jobs(items_from_paths(["pkg/*.py"], root=root), DEMO_STEPS)
    console = Console(
        file=io.StringIO(), force_terminal=True, width=120, height=40, color_system=None
    )

    outcome = await run_live(tools.mock(cwd=root), jobs, count=2, console=console)

    assert outcome.exit_code == 0
    assert outcome.summary.ok == 12
    assert verify_project(root, originals).ok
    screen = console.file.getvalue()  # type: ignore[attr-defined]
    # The first frame, drawn as the jobs start: both instances listed under their header.
    assert "0/12" in screen
    assert "0 ok  0 failed" in screen
    for header in ("#", "pid", "state", "prompts", "restarts", "reply p50", "current item"):
        assert header in screen
    assert re.search(r"instances: 2 (ready|busy)", screen)
    assert re.search(r"^ *0 +\d+ +(ready|busy) ", screen, re.MULTILINE)
    assert re.search(r"^ *1 +\d+ +(ready|busy) ", screen, re.MULTILINE)


def test_progress_none_prints_no_status_lines(tmp_path: Path) -> None:
    root, _ = project(tmp_path, 5)

    result = invoke(*run_args(root, tmp_path / "j.jsonl", "--progress", "none"))

    assert result.exit_code == 0
    assert "[progress]" not in result.stdout
    assert "All items done." in result.stdout


def test_format_eta_is_short_and_human() -> None:
    assert [format_eta(v) for v in (None, 0, 0.2, 59, 61, 3599, 3661)] == [
        "?", "0s", "1s", "59s", "1m01s", "59m59s", "1h01m",
    ]  # fmt: skip


# -- --tool -----------------------------------------------------------------------------------


def test_tool_names_take_extra_arguments() -> None:
    spec = resolve_tool("mock --delay 0.5")
    assert spec.argv == (*tools.mock().argv, "--delay", "0.5")
    assert resolve_tool("python") == tools.python()


def test_extra_arguments_that_end_like_a_spec_file_stay_arguments(tmp_path, monkeypatch) -> None:
    # Before, "aider ... --model-metadata-file m.json" was read as a spec file named all that.
    spec = resolve_tool("mock --seed 1 --note /tmp/models.json")
    assert spec.argv[-4:] == ("--seed", "1", "--note", "/tmp/models.json")
    # And a bare name stays a profile even where a file of that name is at hand.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mock").write_text("not a spec")
    assert resolve_tool("mock") == tools.mock()


def test_tool_spec_files_in_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text(
        'argv = "my-agent --yes"\nready = "> "\npty = true\nreply_timeout = 60\n'
        'env = {A = "1"}\n[probe]\ncommand = "/ls"\nexpect = "chat"\n'
    )
    spec = resolve_tool(str(toml))
    assert spec.name == "agent"
    assert spec.argv == ("my-agent", "--yes")
    assert spec.pty is True
    assert spec.reply_timeout == 60
    assert spec.env == {"A": "1"}
    assert spec.probe is not None
    assert (spec.probe.command, spec.probe.expect) == ("/ls", "chat")

    json_spec = tmp_path / "agent.json"
    json_spec.write_text('{"name": "x", "argv": ["a", "b"], "ready": "\\\\$ $"}')
    assert resolve_tool(str(json_spec)) == ToolSpec(name="x", argv=["a", "b"], ready=r"\$ $")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("argv = [", "is not valid: "),
        ('ready = "> "', "the field 'argv' is required"),
        ('argv = ["x"]\nready = "("', "ready is not a valid regex: '('"),
        ('argv = ["x"]\nready = "> "\nreply_timeout = -1', "reply_timeout must be > 0, got -1"),
        ('argv = ["x"]\nready = "> "\n[probe]\ncommand = "/ls"', "probe: "),
    ],
)
def test_bad_tool_spec_files_are_reported(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(InputError, match=re.escape(message)):
        resolve_tool(str(path))


def test_a_missing_tool_spec_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"tool spec file not found: '.*/nope\.toml'"):
        resolve_tool(str(tmp_path / "nope.toml"))


class SignalsSelf(PlainDisplay):
    """Plain progress that sends this process SIGINT on the first result, and once more on
    the first notice when *twice* is set: a user pressing Ctrl-C once or twice."""

    def __init__(self, tracker: Tracker, console: Console, *, twice: bool) -> None:
        super().__init__(tracker, console)
        self.twice = twice
        self.notices: list[str] = []

    def result(self, result: JobResult) -> None:
        super().result(result)
        if self.tracker.finished == 1:
            os.kill(os.getpid(), signal.SIGINT)

    def notice(self, message: str) -> None:
        self.notices.append(message)
        if self.twice and len(self.notices) == 1:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.anyio
@pytest.mark.parametrize("twice", [False, True], ids=["once", "twice"])
async def test_ctrl_c_stops_the_batch_and_a_second_one_cancels_jobs_in_flight(
    tmp_path: Path, twice: bool
) -> None:
    jobs = [Job(item="quick", steps=["/echo done"]), Job(item="slow", steps=["/sleep 0.5"])]
    jobs += [Job(item=f"later{n}", steps=["/echo later"]) for n in range(5)]
    tracker = Tracker(total=len(jobs))
    display = SignalsSelf(tracker, Console(file=io.StringIO()), twice=twice)
    batch = Batch(
        spec=attrs.evolve(tools.mock(cwd=tmp_path), shutdown_grace=0.5),
        count=2,
        routing="round_robin",
        jobs=jobs,
        total=len(jobs),
        skipped=0,
        timeout=None,
        retries=0,
        grace=30.0,
        journal=None,
    )

    outcome = await run_batch(batch, tracker=tracker, display=display, logger=_logger(0))

    assert outcome.exit_code == 130
    summary = outcome.summary
    assert summary.interrupted == "SIGINT"
    assert display.notices[0].startswith("SIGINT: starting no new jobs; waiting up to 30 s")
    statuses = {result.item: result.status for result in outcome.results}
    assert statuses["quick"] == "ok"
    if twice:
        assert display.notices[1] == "SIGINT again: cancelling the jobs in flight"
        assert statuses["slow"] == "cancelled"
        # The grace that was given, not the 0 s of the second stop.
        (slow,) = [result for result in outcome.results if result.item == "slow"]
        assert slow.error == (
            "cancelled by a second stop, before the end of the 30 s grace period of the first"
        )
    else:
        assert statuses["slow"] == "ok"
    assert summary.not_started == len(jobs) - len(outcome.results)
    assert summary.not_started > 0
