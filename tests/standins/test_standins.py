"""The stand-ins speak their tools' protocols, and their test knobs do what README.md says."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
CLAUDE_STREAM = ["-p", "--output-format", "stream-json", "--verbose"]


def run(
    tool: str,
    *args: str,
    stdin: str | None = "",
    cwd: Path | None = None,
    **knobs: str,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STANDIN_")}
    env.update(knobs)
    return subprocess.run(
        [str(HERE / tool), *args],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=30,
    )


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def types(stdout: str) -> list[str]:
    return [event["type"] for event in events(stdout)]


# -- claude -------------------------------------------------------------------------------------


def test_claude_one_shot_stream_json_is_init_assistant_result() -> None:
    done = run("claude", *CLAUDE_STREAM, "hi")
    assert done.returncode == 0
    init, assistant, result = events(done.stdout)
    assert (init["type"], init["subtype"]) == ("system", "init")
    assert assistant["message"]["content"] == [{"type": "text", "text": "echo: hi"}]
    assert result["subtype"] == "success"
    assert result["is_error"] is False
    assert result["result"] == "echo: hi"
    assert result["session_id"] == init["session_id"] == assistant["session_id"]


def test_claude_stream_json_output_requires_verbose() -> None:
    done = run("claude", "-p", "--output-format", "stream-json", "hi")
    assert done.returncode == 1
    assert "requires --verbose" in done.stderr


def test_claude_streaming_input_answers_each_line_with_a_result_until_eof() -> None:
    lines = [
        {"type": "user", "message": {"role": "user", "content": "one"}},
        {"type": "user", "message": {"role": "user", "content": [{"type": "text", "text": "two"}]}},
    ]
    stdin = "".join(json.dumps(line) + "\n" for line in lines)
    done = run(
        "claude", *CLAUDE_STREAM, "--input-format", "stream-json", stdin=stdin,
        STANDIN_CLAUDE_INIT="once",
    )  # fmt: skip
    assert done.returncode == 0
    assert types(done.stdout) == ["system", "assistant", "result", "assistant", "result"]
    results = [e["result"] for e in events(done.stdout) if e["type"] == "result"]
    assert results == ["echo: one", "echo: two"]


def test_claude_rate_limit_is_a_synthetic_message_and_an_error_result() -> None:
    line = json.dumps({"type": "user", "message": {"role": "user", "content": "x"}}) + "\n"
    done = run(
        "claude", *CLAUDE_STREAM, "--input-format", "stream-json", stdin=line * 2,
        STANDIN_RATE_LIMIT="1",
    )  # fmt: skip
    limited, ok = (e for e in events(done.stdout) if e["type"] == "result")
    synthetic = next(e for e in events(done.stdout) if e["type"] == "assistant")
    assert synthetic["message"]["model"] == "<synthetic>"
    assert (limited["subtype"], limited["is_error"], limited["api_error_status"]) == (
        "success",
        True,
        429,
    )
    assert limited["result"].startswith("API Error: Request rejected (429) · ")
    assert (ok["is_error"], ok["result"]) == (False, "echo: x")
    # As Claude Code 2.1.332 does: a system/api_retry event per retry of its own first.
    retries = [e for e in events(done.stdout) if e.get("subtype") == "api_retry"]
    assert [(e["attempt"], e["max_retries"]) for e in retries] == [(n, 10) for n in range(1, 11)]
    assert done.returncode == 0  # the last turn succeeded


def test_claude_rate_limited_one_shot_exits_1_after_cli_max_retries() -> None:
    done = run("claude", *CLAUDE_STREAM, "x", STANDIN_RATE_LIMIT="1", CLAUDE_CODE_MAX_RETRIES="2")
    assert done.returncode == 1
    assert [e.get("subtype") for e in events(done.stdout)] == [
        "init", "api_retry", "api_retry", None, "success",
    ]  # fmt: skip


def test_claude_error_gives_error_during_execution_and_exit_1() -> None:
    done = run("claude", *CLAUDE_STREAM, "hi", STANDIN_ERROR="boom")
    result = events(done.stdout)[-1]
    assert (result["subtype"], result["is_error"], result["errors"]) == (
        "error_during_execution",
        True,
        ["boom"],
    )
    assert done.returncode == 1


@pytest.mark.parametrize("tool", ["claude", "codex", "gemini"])
def test_crash_after_n_events_stops_the_stream_there(tool: str) -> None:
    args = {
        "claude": [*CLAUDE_STREAM, "hi"],
        "codex": ["exec", "--json", "--skip-git-repo-check", "hi"],
        "gemini": ["-p", "hi", "-o", "stream-json"],
    }[tool]
    done = run(tool, *args, STANDIN_CRASH_AFTER="2", STANDIN_CRASH_EXIT="9")
    assert done.returncode == 9
    assert len(done.stdout.splitlines()) == 2
    assert "simulated crash after 2 events" in done.stderr


# -- codex --------------------------------------------------------------------------------------


def test_codex_exec_json_event_sequence(tmp_path: Path) -> None:
    done = run("codex", "exec", "--json", "--skip-git-repo-check", "hi", cwd=tmp_path)
    assert done.returncode == 0
    assert types(done.stdout) == [
        "thread.started",
        "turn.started",
        "item.completed",
        "item.completed",
        "turn.completed",
    ]
    message = events(done.stdout)[3]["item"]
    assert message == {"id": "item_1", "type": "agent_message", "text": "echo: hi"}
    assert set(events(done.stdout)[-1]["usage"]) == {
        "input_tokens",
        "cached_input_tokens",
        "cache_write_input_tokens",
        "output_tokens",
        "reasoning_output_tokens",
    }


def test_codex_warns_in_an_error_item_about_a_model_it_has_no_metadata_for(
    tmp_path: Path,
) -> None:
    done = run("codex", "exec", "--json", "--skip-git-repo-check", "-m", "mine", "hi", cwd=tmp_path)
    assert done.returncode == 0
    assert types(done.stdout)[:3] == ["thread.started", "item.completed", "turn.started"]
    warning = events(done.stdout)[1]["item"]
    assert (warning["id"], warning["type"]) == ("item_0", "error")
    assert warning["message"].startswith("Model metadata for `mine` not found.")
    assert events(done.stdout)[-2]["item"]["id"] == "item_2"


def test_codex_reconnects_are_error_events_before_the_outcome(tmp_path: Path) -> None:
    done = run(
        "codex", "exec", "--json", "--skip-git-repo-check", "hi", cwd=tmp_path,
        STANDIN_CODEX_RECONNECTS="2", STANDIN_RATE_LIMIT="1",
    )  # fmt: skip
    assert done.returncode == 1
    assert [e.get("message", "")[:17] for e in events(done.stdout)[2:4]] == [
        "Reconnecting... 1",
        "Reconnecting... 2",
    ]
    assert types(done.stdout)[-2:] == ["error", "turn.failed"]


def test_codex_refuses_a_codex_home_that_does_not_exist(tmp_path: Path) -> None:
    done = run(
        "codex", "exec", "--json", "--skip-git-repo-check", "hi", cwd=tmp_path,
        CODEX_HOME=str(tmp_path / "missing"),
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Error finding codex home: CODEX_HOME points to" in done.stderr


def test_codex_refuses_outside_a_git_repo(tmp_path: Path) -> None:
    done = run("codex", "exec", "--json", "hi", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    # As the real one, it reads stdin first, then checks the directory.
    assert done.stderr.splitlines() == [
        "Reading additional input from stdin...",
        "Not inside a trusted directory and --skip-git-repo-check was not specified.",
    ]


def test_codex_reads_an_open_stdin_to_eof_before_starting(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STANDIN_")}
    with subprocess.Popen(
        [str(HERE / "codex"), "exec", "--json", "--skip-git-repo-check", "hi"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    ) as child:
        assert child.stderr is not None
        assert child.stdin is not None
        assert child.stderr.readline() == "Reading additional input from stdin...\n"
        child.stdin.write("late")  # only after codex is waiting: it must still see it
        child.stdin.close()
        assert child.stdout is not None
        stdout = child.stdout.read()
        assert child.wait(timeout=30) == 0
    assert events(stdout)[3]["item"]["text"] == "echo: hi\n\n<stdin>\nlate\n</stdin>"


def test_codex_rate_limit_counts_across_processes_in_the_state_file(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    outcomes = []
    for _ in range(3):
        done = run(
            "codex", "exec", "--json", "--skip-git-repo-check", "hi", cwd=tmp_path,
            STANDIN_RATE_LIMIT="2", STANDIN_STATE=str(state),
        )  # fmt: skip
        outcomes.append((done.returncode, events(done.stdout)[-1]["type"]))
    assert outcomes == [(1, "turn.failed"), (1, "turn.failed"), (0, "turn.completed")]
    done = run(
        "codex", "exec", "--json", "--skip-git-repo-check", "hi", cwd=tmp_path,
        STANDIN_RATE_LIMIT="1",
    )  # fmt: skip
    error, failed = events(done.stdout)[-2:]
    assert error["type"] == "error"
    assert error["message"].startswith("exceeded retry limit, last status: 429 Too Many Requests")
    assert failed["error"]["message"] == error["message"]


# -- gemini -------------------------------------------------------------------------------------


def test_gemini_stream_json_event_sequence() -> None:
    done = run("gemini", "-p", "hello there, gemini", "-o", "stream-json")
    assert done.returncode == 0
    evs = events(done.stdout)
    assert [e["type"] for e in evs] == ["init", "message", "message", "message", "result"]
    assert all("timestamp" in e for e in evs)
    assert (evs[1]["role"], evs[1]["content"]) == ("user", "hello there, gemini")
    assert "".join(e["content"] for e in evs if e.get("delta")) == "echo: hello there, gemini"
    assert evs[-1]["status"] == "success"
    assert set(evs[-1]["stats"]) == {
        "total_tokens",
        "input_tokens",
        "output_tokens",
        "cached",
        "input",
        "duration_ms",
        "tool_calls",
        "models",
    }
    assert set(evs[-1]["stats"]["models"]["gemini-2.5-pro"]) == {
        "total_tokens",
        "input_tokens",
        "output_tokens",
        "cached",
        "input",
    }


def test_gemini_prepends_piped_stdin_to_the_prompt() -> None:
    done = run("gemini", "-p", "hi", "-o", "stream-json", stdin="context")
    assert events(done.stdout)[1]["content"] == "context\n\nhi"


@pytest.mark.parametrize(
    ("knobs", "exit_code"),
    [({"STANDIN_RATE_LIMIT": "1"}, 173), ({"STANDIN_ERROR": "1"}, 1)],
)
def test_gemini_errors_end_in_an_error_result(knobs: dict[str, str], exit_code: int) -> None:
    done = run("gemini", "-p", "hi", "-o", "stream-json", **knobs)
    result = events(done.stdout)[-1]
    assert (result["type"], result["status"]) == ("result", "error")
    assert result["error"]["message"].startswith("[API Error: ")
    assert done.returncode == exit_code


def test_gemini_turn_limit_exits_53() -> None:
    done = run("gemini", "-p", "hi", "-o", "stream-json", STANDIN_ERROR="max_turns")
    assert done.returncode == 53


# -- jules --------------------------------------------------------------------------------------


def test_jules_remote_new_creates_sessions_and_returns(tmp_path: Path) -> None:
    state = str(tmp_path / "state.json")
    done = run(
        "jules", "remote", "new", "--repo", "me/proj", "--session", "do it", "--parallel", "2",
        STANDIN_STATE=state,
    )  # fmt: skip
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0::3] == ["Session is created.", "Session is created."]
    ids = [line.removeprefix("ID: ") for line in lines[1::3]]
    assert lines[2::3] == [f"URL: https://jules.google.com/session/{i}" for i in ids]
    pulled = run("jules", "remote", "pull", "--session", ids[0], STANDIN_STATE=state)
    assert pulled.stdout == "echo: do it\n"


def test_jules_reads_the_task_from_stdin_without_session_flag() -> None:
    done = run("jules", "remote", "new", "--repo", "me/proj", stdin="from a pipe\n")
    assert done.returncode == 0
    assert done.stdout.startswith("Session is created.\n")
