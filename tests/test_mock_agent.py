"""Behaviour of the mock coding agent, driven as a real subprocess.

One-shot conversations use ``subprocess.run`` and compare the complete
transcript.  Tests that must react to output as it arrives (pids, timing,
hangs, signals) use :class:`AgentSession`, which reads stdout on a thread.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
AGENT_SCRIPT = REPO_ROOT / "aimcluster" / "mock_agent.py"
MODULE_COMMAND = [sys.executable, "-m", "aimcluster.mock_agent"]
SCRIPT_COMMAND = [sys.executable, str(AGENT_SCRIPT)]
TIMEOUT = 10.0
# How long "nothing happens" is observed for.  Only used to check absence of
# output, never to wait for something to happen.
QUIET_PERIOD = 0.5
BANNER = b"mock-agent 1.0 (seed=none, delay=0)\n"

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def agent_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    pythonpath = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{pythonpath}" if pythonpath else str(REPO_ROOT)
    env.update(extra)
    return env


def run_agent(
    *args: str,
    stdin: bytes = b"",
    cwd: Path,
    command: list[str] = MODULE_COMMAND,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*command, *args],
        input=stdin,
        cwd=cwd,
        env=env or agent_env(),
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )


def doc_id(relative_path: str) -> str:
    return hashlib.sha256(relative_path.encode()).hexdigest()[:12]


def filler(char: bytes, total: int) -> bytes:
    """The /big and /flood body: 80-byte lines, the last one shorter."""
    full_lines, tail = divmod(total, 80)
    body = (char * 79 + b"\n") * full_lines
    if tail:
        body += char * (tail - 1) + b"\n"
    return body


class AgentSession:
    """A running agent whose stdout can be awaited piece by piece."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*MODULE_COMMAND, *args],
            cwd=cwd,
            env=env or agent_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._output = bytearray()
        self._consumed = 0
        self._eof = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, 65536):
            with self._changed:
                self._output += chunk
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def output(self) -> bytes:
        with self._changed:
            return bytes(self._output)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def expect(self, marker: bytes) -> bytes:
        """Return unread output up to and including ``marker``."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: marker in self._output[self._consumed :] or self._eof, TIMEOUT
            )
            start = self._consumed
            index = self._output.find(marker, start)
            assert found, f"{marker!r} not in {bytes(self._output[start:])!r}"
            assert index != -1, f"EOF before {marker!r}: {bytes(self._output[start:])!r}"
            self._consumed = index + len(marker)
            return bytes(self._output[start : self._consumed])

    def assert_quiet(self) -> None:
        """Assert that no new output arrives during QUIET_PERIOD."""
        before = self.output
        with self._changed:
            self._changed.wait_for(lambda: len(self._output) != len(before), QUIET_PERIOD)
        assert self.output == before
        assert self.proc.poll() is None

    def wait(self) -> int:
        return self.proc.wait(timeout=TIMEOUT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)
        self._reader.join(TIMEOUT)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(BrokenPipeError):  # stdin of a dead agent
                    pipe.close()


SessionFactory = Callable[..., AgentSession]


@pytest.fixture
def session(tmp_path: Path) -> Iterator[SessionFactory]:
    """Start AgentSessions in tmp_path; all are killed and reaped afterwards."""
    sessions: list[AgentSession] = []

    def start(*args: str, env: dict[str, str] | None = None) -> AgentSession:
        agent = AgentSession(*args, cwd=tmp_path, env=env)
        sessions.append(agent)
        return agent

    yield start
    for agent in sessions:
        agent.close()


# --------------------------------------------------------------------------
# Start-up, prompt and line handling
# --------------------------------------------------------------------------


def test_prints_banner_and_prompt_then_exits_0_on_eof(tmp_path: Path) -> None:
    result = run_agent(cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, BANNER + b"> ", b"")


def test_banner_reports_seed_and_delay(tmp_path: Path) -> None:
    result = run_agent("--seed", "42", "--delay", "0.25", cwd=tmp_path)
    assert result.stdout == b"mock-agent 1.0 (seed=42, delay=0.25)\n> "


def test_no_banner_and_custom_prompt(tmp_path: Path) -> None:
    result = run_agent("--no-banner", "--prompt", "aider> ", stdin=b"hi\n", cwd=tmp_path)
    assert result.stdout == b"aider> echo: hi\naider> "


def test_runs_as_a_script_path_as_well_as_a_module(tmp_path: Path) -> None:
    result = run_agent(stdin=b"/echo hi\n", cwd=tmp_path, command=SCRIPT_COMMAND)
    assert (result.returncode, result.stdout) == (0, BANNER + b"> hi\n> ")


def test_script_ignores_sibling_modules_that_shadow_the_stdlib(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    script = package / "mock_agent.py"
    shutil.copy(AGENT_SCRIPT, script)
    for name in ("argparse", "random", "hashlib"):
        (package / f"{name}.py").write_text("raise SystemExit(99)\n")
    (tmp_path / "a.txt").write_text("a\n")

    result = run_agent(
        "--no-banner",
        "--jitter",
        "0.01",
        "--seed",
        "1",
        stdin=b"/add a.txt\nDOC_ID\n",
        cwd=tmp_path,
        command=[sys.executable, str(script)],
    )

    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == b"> Added a.txt to the chat\n> Added DOC_ID header to a.txt\n> "


def test_prompt_is_flushed_before_any_input(session: SessionFactory) -> None:
    agent = session()
    assert agent.expect(b"> ") == BANNER + b"> "


def test_free_text_is_echoed_verbatim(tmp_path: Path) -> None:
    result = run_agent("--no-banner", stdin=b"  hello   world \t\n", cwd=tmp_path)
    assert result.stdout == b"> echo:   hello   world \t\n> "


def test_unknown_slash_command_is_treated_as_free_text(tmp_path: Path) -> None:
    result = run_agent("--no-banner", stdin=b"/frobnicate now\n", cwd=tmp_path)
    assert result.stdout == b"> echo: /frobnicate now\n> "


def test_blank_lines_only_reprint_the_prompt(tmp_path: Path) -> None:
    result = run_agent("--no-banner", stdin=b"\n   \n\r\n", cwd=tmp_path)
    assert result.stdout == b"> > > > "


def test_crlf_line_endings_are_stripped(tmp_path: Path) -> None:
    result = run_agent("--no-banner", stdin=b"hi\r\n", cwd=tmp_path)
    assert result.stdout == b"> echo: hi\n> "


def test_final_line_without_newline_is_answered_before_eof_exit(tmp_path: Path) -> None:
    result = run_agent("--no-banner", stdin=b"hi", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, b"> echo: hi\n> ")


def test_invalid_utf8_input_is_replaced_not_fatal(tmp_path: Path) -> None:
    result = run_agent("--no-banner", stdin=b"\xff\xfe ok\n/echo still here\n", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == "> echo: \ufffd\ufffd ok\n> still here\n> ".encode()


@pytest.mark.parametrize("command", ["/exit", "/quit"])
def test_exit_commands_stop_without_further_output(tmp_path: Path, command: str) -> None:
    result = run_agent("--no-banner", stdin=f"{command}\nhello\n".encode(), cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, b"> ")


def test_closed_stdout_makes_the_agent_exit_0_quietly(tmp_path: Path) -> None:
    with subprocess.Popen(
        [*MODULE_COMMAND, "--no-banner"],
        cwd=tmp_path,
        env=agent_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        proc.stdout.close()
        _, stderr = proc.communicate(b"/big 1000000\n", timeout=TIMEOUT)
    assert (proc.returncode, stderr) == (0, b"")


# --------------------------------------------------------------------------
# Flags
# --------------------------------------------------------------------------


def test_help_exits_0_with_usage(tmp_path: Path) -> None:
    result = run_agent("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith(b"usage: mock_agent ")
    assert b"--crash-rate" in result.stdout


def test_unknown_flag_exits_2_with_usage_on_stderr(tmp_path: Path) -> None:
    result = run_agent("--bogus", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, b"")
    assert result.stderr.startswith(b"usage: mock_agent ")
    assert result.stderr.endswith(b"error: unrecognized arguments: --bogus\n")


@pytest.mark.parametrize(
    "flags",
    [
        ["--crash-rate", "1.5"],
        ["--hang-rate", "nan"],
        ["--delay", "-1"],
        ["--jitter", "inf"],
        ["--startup-delay", "soon"],
        ["--seed", "x"],
    ],
)
def test_invalid_flag_values_exit_2(tmp_path: Path, flags: list[str]) -> None:
    result = run_agent(*flags, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, b"")
    assert f"argument {flags[0]}: invalid".encode() in result.stderr


def test_delay_is_applied_before_free_text_replies(session: SessionFactory) -> None:
    agent = session("--no-banner", "--delay", "0.3")
    agent.expect(b"> ")
    sent = time.monotonic()
    agent.send("hello")
    assert agent.expect(b"> ") == b"echo: hello\n> "
    assert time.monotonic() - sent >= 0.3


def test_startup_delay_is_applied_before_the_banner(session: SessionFactory) -> None:
    started = time.monotonic()
    agent = session("--startup-delay", "0.3")
    assert agent.expect(b"> ") == BANNER + b"> "
    assert time.monotonic() - started >= 0.3


def test_delay_and_faults_do_not_apply_to_slash_commands(tmp_path: Path) -> None:
    flags = ["--no-banner", "--delay", "60", "--crash-rate", "1", "--hang-rate", "1"]
    result = run_agent(*flags, stdin=b"/echo fast\n/exit\n", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, b"> fast\n> ")


def test_crash_rate_1_exits_1_after_a_partial_reply(tmp_path: Path) -> None:
    result = run_agent("--no-banner", "--crash-rate", "1.0", stdin=b"hello\nagain\n", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, b"> partial...")


def test_hang_rate_1_never_replies(session: SessionFactory) -> None:
    agent = session("--no-banner", "--hang-rate", "1.0")
    agent.expect(b"> ")
    agent.send("hello")
    agent.send("/echo are you there")
    agent.assert_quiet()
    assert agent.output == b"> "


def test_seed_makes_faults_and_jitter_reproducible(tmp_path: Path) -> None:
    flags = ["--no-banner", "--seed", "1234", "--crash-rate", "0.3", "--jitter", "0.001"]
    stdin = b"".join(f"line {i}\n".encode() for i in range(50))
    first = run_agent(*flags, stdin=stdin, cwd=tmp_path)
    second = run_agent(*flags, stdin=stdin, cwd=tmp_path)
    assert (first.returncode, first.stdout) == (second.returncode, second.stdout)
    # 0.7**50 makes surviving all 50 prompts essentially impossible.
    assert first.returncode == 1
    assert first.stdout.endswith(b"\n> partial...")


def test_jitter_larger_than_delay_still_replies(tmp_path: Path) -> None:
    flags = ["--no-banner", "--delay", "0", "--jitter", "0.01", "--seed", "7"]
    result = run_agent(*flags, stdin=b"a\nb\nc\n", cwd=tmp_path)
    assert result.stdout == b"> echo: a\n> echo: b\n> echo: c\n> "


# --------------------------------------------------------------------------
# Chat management
# --------------------------------------------------------------------------


def test_add_ls_and_drop_manage_the_chat(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("b\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("a\n")
    stdin = b"/ls\n/add b.txt src/a.py\n/ls\n/drop b.txt\n/ls\n/drop\n/ls\n"

    result = run_agent("--no-banner", stdin=stdin, cwd=tmp_path)

    assert result.stdout == (
        b"> No files in the chat\n"
        b"> Added b.txt to the chat\nAdded src/a.py to the chat\n"
        b"> b.txt\nsrc/a.py\n"
        b"> Removed b.txt from the chat\n"
        b"> src/a.py\n"
        b"> Dropped all files from the chat\n"
        b"> No files in the chat\n"
        b"> "
    )


def test_add_normalises_paths_relative_to_cwd(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a\n")
    (tmp_path / "sub").mkdir()
    result = run_agent("--no-banner", stdin=b"/add ./sub/../a.txt\n/ls\n", cwd=tmp_path)
    assert result.stdout == b"> Added a.txt to the chat\n> a.txt\n> "


def test_add_missing_file_reports_it_and_keeps_going(tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_text("r\n")
    (tmp_path / "folder").mkdir()
    stdin = b"/add missing.txt folder real.txt\n/ls\n"
    result = run_agent("--no-banner", stdin=stdin, cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == (
        b"> No such file: missing.txt\nNo such file: folder\nAdded real.txt to the chat\n"
        b"> real.txt\n> "
    )


def test_drop_of_a_file_not_in_the_chat_says_so(tmp_path: Path) -> None:
    result = run_agent("--no-banner", stdin=b"/drop ghost.txt\n", cwd=tmp_path)
    assert result.stdout == b"> ghost.txt is not in the chat\n> "


# --------------------------------------------------------------------------
# DOC_ID edits
# --------------------------------------------------------------------------


def test_doc_id_instruction_inserts_header_with_path_hash(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    target = tmp_path / "src" / "app.py"
    target.write_bytes(b"print('hi')\n")

    result = run_agent(
        "--no-banner", stdin=b"/add src/app.py\nPlease add a DOC_ID header\n", cwd=tmp_path
    )

    assert result.stdout == (
        b"> Added src/app.py to the chat\n> Added DOC_ID header to src/app.py\n> "
    )
    expected_header = f"# DOC_ID: {doc_id('src/app.py')}\n".encode()
    assert target.read_bytes() == expected_header + b"print('hi')\n"
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == ["app.py"]


def test_doc_id_instruction_is_idempotent(tmp_path: Path) -> None:
    target = tmp_path / "notes.md"
    target.write_bytes(b"# Notes\n")

    result = run_agent("--no-banner", stdin=b"/add notes.md\nDOC_ID\nDOC_ID\n", cwd=tmp_path)

    assert result.stdout == (
        b"> Added notes.md to the chat\n"
        b"> Added DOC_ID header to notes.md\n"
        b"> notes.md already has a DOC_ID header\n"
        b"> "
    )
    assert target.read_bytes() == f"# DOC_ID: {doc_id('notes.md')}\n# Notes\n".encode()


@posix_only
def test_doc_id_header_goes_after_shebang_and_keeps_file_mode(tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_bytes(b"#!/bin/sh\necho hi\n")
    script.chmod(0o751)

    run_agent("--no-banner", stdin=b"/add run.sh\nDOC_ID\n", cwd=tmp_path)

    header = f"# DOC_ID: {doc_id('run.sh')}\n".encode()
    assert script.read_bytes() == b"#!/bin/sh\n" + header + b"echo hi\n"
    assert script.stat().st_mode & 0o777 == 0o751


def test_doc_id_header_after_shebang_is_recognised(tmp_path: Path) -> None:
    header = f"# DOC_ID: {doc_id('run.py')}\n".encode()
    original = b"#!/usr/bin/env python\n" + header + b"pass\n"
    (tmp_path / "run.py").write_bytes(original)

    result = run_agent("--no-banner", stdin=b"/add run.py\nDOC_ID\n", cwd=tmp_path)

    assert result.stdout.endswith(b"> run.py already has a DOC_ID header\n> ")
    assert (tmp_path / "run.py").read_bytes() == original


def test_doc_id_edits_every_chat_file_in_sorted_order(tmp_path: Path) -> None:
    for name in ("b.txt", "a.txt", "empty.txt"):
        (tmp_path / name).write_bytes(b"" if name == "empty.txt" else b"text\n")

    result = run_agent(
        "--no-banner", stdin=b"/add b.txt empty.txt a.txt\nadd DOC_ID now\n", cwd=tmp_path
    )

    assert result.stdout.endswith(
        b"> Added DOC_ID header to a.txt\n"
        b"Added DOC_ID header to b.txt\n"
        b"Added DOC_ID header to empty.txt\n"
        b"> "
    )
    assert (tmp_path / "empty.txt").read_bytes() == f"# DOC_ID: {doc_id('empty.txt')}\n".encode()


def test_doc_id_header_matches_crlf_line_endings(tmp_path: Path) -> None:
    (tmp_path / "win.txt").write_bytes(b"one\r\ntwo\r\n")
    run_agent("--no-banner", stdin=b"/add win.txt\nDOC_ID\n", cwd=tmp_path)
    expected = f"# DOC_ID: {doc_id('win.txt')}\r\none\r\ntwo\r\n".encode()
    assert (tmp_path / "win.txt").read_bytes() == expected


def test_doc_id_with_no_files_in_the_chat(tmp_path: Path) -> None:
    result = run_agent("--no-banner", stdin=b"DOC_ID\n", cwd=tmp_path)
    assert result.stdout == b"> No files in the chat to edit\n> "


def test_doc_id_marker_is_case_sensitive(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"a\n")
    result = run_agent("--no-banner", stdin=b"/add a.txt\nadd a doc_id\n", cwd=tmp_path)
    assert result.stdout.endswith(b"> echo: add a doc_id\n> ")
    assert (tmp_path / "a.txt").read_bytes() == b"a\n"


def test_doc_id_reports_files_deleted_after_adding(tmp_path: Path) -> None:
    (tmp_path / "gone.txt").write_bytes(b"a\n")
    with subprocess.Popen(
        [*MODULE_COMMAND, "--no-banner"],
        cwd=tmp_path,
        env=agent_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(b"/add gone.txt\n")
        proc.stdin.flush()
        added = b"> Added gone.txt to the chat\n> "
        assert proc.stdout.read(len(added)) == added
        (tmp_path / "gone.txt").unlink()
        stdout, _ = proc.communicate(b"DOC_ID\n", timeout=TIMEOUT)
    assert stdout == b"Could not edit gone.txt: No such file or directory\n> "


# --------------------------------------------------------------------------
# Test and benchmark helpers
# --------------------------------------------------------------------------


def test_echo_command_replies_text_verbatim(tmp_path: Path) -> None:
    result = run_agent("--no-banner", stdin=b"/echo  two  spaces \n/echo\n", cwd=tmp_path)
    assert result.stdout == b">  two  spaces \n> > "


def test_env_command_reports_value_or_unset(tmp_path: Path) -> None:
    env = agent_env(MOCK_AGENT_TEST_VAR="some value")
    env.pop("MOCK_AGENT_SURELY_UNSET", None)
    stdin = b"/env MOCK_AGENT_TEST_VAR\n/env MOCK_AGENT_SURELY_UNSET\n"
    result = run_agent("--no-banner", stdin=stdin, cwd=tmp_path, env=env)
    assert result.stdout == b"> some value\n> <unset>\n> "


def test_pid_command_reports_the_agent_pid(session: SessionFactory) -> None:
    agent = session("--no-banner")
    agent.send("/pid")
    assert agent.expect(b"\n> ") == f"> {agent.proc.pid}\n> ".encode()


def test_sleep_command_replies_after_sleeping(session: SessionFactory) -> None:
    agent = session("--no-banner")
    agent.expect(b"> ")
    sent = time.monotonic()
    agent.send("/sleep 0.3")
    assert agent.expect(b"> ") == b"slept 0.3\n> "
    assert time.monotonic() - sent >= 0.3


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("/sleep", "usage: /sleep SECONDS"),
        ("/sleep -1", "usage: /sleep SECONDS"),
        ("/big many", "usage: /big N"),
        ("/big -5", "usage: /big N"),
        ("/flood", "usage: /flood N"),
        ("/crash boom", "usage: /crash [CODE]"),
        ("/crash 256", "usage: /crash [CODE]"),
        ("/env", "usage: /env NAME"),
        ("/add", "usage: /add PATH [PATH...]"),
    ],
)
def test_malformed_helper_commands_reply_with_usage(tmp_path: Path, line: str, reply: str) -> None:
    result = run_agent("--no-banner", stdin=f"{line}\n".encode(), cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, f"> {reply}\n> ".encode())


@pytest.mark.parametrize(("line", "code"), [("/crash", 3), ("/crash 7", 7), ("/crash 0", 0)])
def test_crash_command_exits_with_code(tmp_path: Path, line: str, code: int) -> None:
    result = run_agent("--no-banner", stdin=f"{line}\n/echo unreachable\n".encode(), cwd=tmp_path)
    assert (result.returncode, result.stdout) == (code, b"> crashing\n")


@pytest.mark.parametrize("size", [0, 1, 2, 79, 80, 81, 1000])
def test_big_command_writes_exactly_n_bytes_of_x_lines(tmp_path: Path, size: int) -> None:
    result = run_agent("--no-banner", stdin=f"/big {size}\n".encode(), cwd=tmp_path)
    assert result.stdout == b"> " + filler(b"x", size) + b"> "


def test_big_command_handles_ten_megabytes(tmp_path: Path) -> None:
    size = 10_000_000
    result = run_agent("--no-banner", stdin=f"/big {size}\n/echo after\n".encode(), cwd=tmp_path)
    body = result.stdout[2 : -len(b"> after\n> ")]
    assert len(body) == size
    assert body.count(b"\n") == size // 80
    assert body.count(b"x") == size - size // 80
    assert result.stdout.endswith(b"\n> after\n> ")


def test_flood_command_writes_n_bytes_and_never_prompts(session: SessionFactory) -> None:
    agent = session("--no-banner")
    agent.expect(b"> ")
    agent.send("/flood 1000")
    agent.send("/echo ignored")
    assert agent.expect(b"\n" + b"y" * 39 + b"\n") == filler(b"y", 1000)
    agent.assert_quiet()
    assert agent.output == b"> " + filler(b"y", 1000)


@posix_only
def test_hang_command_stops_replying_but_dies_on_sigterm(session: SessionFactory) -> None:
    agent = session("--no-banner")
    agent.expect(b"> ")
    agent.send("/hang")
    agent.send("/echo are you there")
    agent.assert_quiet()
    agent.proc.terminate()
    assert agent.wait() == -signal.SIGTERM
    assert agent.output == b"> "


@posix_only
def test_ignore_term_command_survives_sigterm(session: SessionFactory) -> None:
    agent = session("--no-banner")
    agent.send("/ignore-term")
    assert agent.expect(b"\n> ") == b"> ignoring SIGTERM\n> "
    agent.proc.terminate()
    # An ignored signal is discarded when sent, so answering afterwards
    # proves the agent survived it.
    agent.send("/echo still alive")
    assert agent.expect(b"\n> ") == b"still alive\n> "
    agent.proc.kill()
    assert agent.wait() == -signal.SIGKILL


@posix_only
def test_spawn_command_starts_a_grandchild_sharing_stdout(session: SessionFactory) -> None:
    agent = session("--no-banner")
    agent.send("/spawn")
    reply = agent.expect(b"\n> ")
    grandchild = int(reply.removeprefix(b"> ").removesuffix(b"\n> "))
    try:
        assert grandchild != agent.proc.pid
        assert os.getpgid(grandchild) == os.getpgid(agent.proc.pid)
        if Path("/proc/self/fd").is_dir():
            assert os.readlink(f"/proc/{grandchild}/fd/1") == os.readlink(
                f"/proc/{agent.proc.pid}/fd/1"
            )
    finally:
        os.kill(grandchild, signal.SIGKILL)


# --------------------------------------------------------------------------
# Start-up cost
# --------------------------------------------------------------------------


def test_agent_imports_only_the_standard_library() -> None:
    tree = ast.parse(AGENT_SCRIPT.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports would pull in aimcluster"
            imported.add((node.module or "").split(".")[0])
    assert imported
    assert imported <= sys.stdlib_module_names
