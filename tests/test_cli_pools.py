"""``aimcluster run`` with several ``--tool``: one cluster of several tools, and failover."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from aimcluster import Pool, tools
from aimcluster._cli.batch import Batch, BatchOutcome, run_batch
from aimcluster._cli.common import _logger
from aimcluster._cli.journal import read_journal
from aimcluster._cli.progress import LiveDisplay, Tracker
from aimcluster._cli.toolref import resolve_tool
from aimcluster._core.jobs import Job
from tests.test_cli import backends, invoke, records

# Echoes '/echo TEXT' as TEXT, like the mock, until it has answered LIMIT prompts; from then
# on it answers every prompt as a provider that is rate limiting. Each prompt it reads is
# logged, one line each, so a test can count what reached it.
_LIMITED_TOOL = """
import sys

limit, log = int(sys.argv[1]), sys.argv[2]
answered = 0
sys.stdout.write("> ")
sys.stdout.flush()
for line in sys.stdin:
    prompt = line.rstrip("\\n")
    with open(log, "a") as handle:
        handle.write(prompt + "\\n")
    if answered >= limit:
        sys.stdout.write("Error: 429 Too Many Requests (rate limit)\\n> ")
    else:
        answered += 1
        sys.stdout.write(prompt.removeprefix("/echo ") + "\\n> ")
    sys.stdout.flush()
"""


# Runs each line it reads with sh, in its working directory, and prints what it printed.
_SHELL_TOOL = """
import subprocess, sys

sys.stdout.write("> ")
sys.stdout.flush()
for line in sys.stdin:
    done = subprocess.run(["sh", "-c", line], capture_output=True, text=True)
    sys.stdout.write(done.stdout + done.stderr + "> ")
    sys.stdout.flush()
"""


def tool_file(tmp_path: Path, name: str, *, limit: int) -> str:
    """A spec file for a tool named *name* that answers *limit* prompts, then only 429s."""
    script = tmp_path / "limited_tool.py"
    script.write_text(textwrap.dedent(_LIMITED_TOOL))
    spec = tmp_path / f"{name}.toml"
    argv = [sys.executable, str(script), str(limit), str(tmp_path / f"{name}.log")]
    spec.write_text(
        f"name = {json.dumps(name)}\n"
        f"argv = {json.dumps(argv)}\n"
        'ready = "> $"\n'
        'rate_limit = "\\\\b429\\\\b"\n'
        "rate_limit_backoff = 0.2\n"
    )
    return str(spec)


def items(tmp_path: Path, count: int) -> list[str]:
    names = [f"item-{n}" for n in range(count)]
    (tmp_path / "items.txt").write_text("".join(f"{name}\n" for name in names))
    return names


def pools_run(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--items-file",
        str(tmp_path / "items.txt"),
        "--step",
        "/echo {item}",
        "--journal",
        str(tmp_path / "j.jsonl"),
        "--report",
        str(tmp_path / "report.json"),
        "--progress",
        "plain",
        "--cwd",
        str(tmp_path),
        *extra,
    ]


def report(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "report.json").read_text())
    return data


# -- several tools ----------------------------------------------------------------------------


@backends
def test_two_tools_share_the_jobs_and_every_record_names_its_tool(
    tmp_path: Path, backend: str
) -> None:
    names = items(tmp_path, 8)
    echoer = tool_file(tmp_path, "echoer", limit=1000)

    # -n is the count of a --tool given without '=COUNT'.
    result = invoke(
        *pools_run(tmp_path, "--tool", "mock", "--tool", f"{echoer}=1", "-n", "2"),
        backend=backend,
    )

    assert result.exit_code == 0, result.output
    assert "8 jobs, mock x 2 + echoer x 1, journal" in result.stdout
    assert "mock x 2, echoer x 1; failover order mock, echoer" in result.stdout
    assert "failovers  none" in result.stdout
    assert "All items done." in result.stdout
    journal = records(tmp_path / "j.jsonl")
    assert sorted(r["item"] for r in journal) == names
    assert all(r["status"] == "ok" and r["failovers"] == [] for r in journal)
    assert all(r["replies"] == [r["item"]] for r in journal)
    # Instances are numbered across the tools: mock has 0 and 1, echoer 2.
    assert all(
        (r["tool"], r["instance"] in (0, 1)) in {("mock", True), ("echoer", False)} for r in journal
    )
    summary = report(tmp_path)["summary"]
    pools = {pool["name"]: pool for pool in summary["pools"]}
    assert [pool["name"] for pool in summary["pools"]] == ["mock", "echoer"]
    assert pools["mock"]["instances"] == [0, 1]
    assert pools["echoer"]["instances"] == [2]
    for name, pool in pools.items():
        assert pool["jobs_ok"] == sum(1 for r in journal if r["tool"] == name)
        assert pool["jobs_failed"] == 0
        assert pool["failovers_out"] == pool["failovers_in"] == 0
    assert [m["tool"] for m in summary["instances"]] == ["mock", "mock", "echoer"]
    assert summary["fallback"] == ["mock", "echoer"]
    assert summary["failovers"] == []
    assert summary["tool"] == "mock, echoer"
    assert summary["count"] == 3


@backends
def test_a_rate_limited_tool_hands_its_jobs_to_the_next_and_none_runs_twice(
    tmp_path: Path, backend: str
) -> None:
    names = items(tmp_path, 6)
    # Given first, 'limited' is the least busy pool of the first job, whose only prompt it
    # answers with a 429: that job at least moves to mock.
    limited = tool_file(tmp_path, "limited", limit=0)

    result = invoke(
        *pools_run(tmp_path, "--tool", f"{limited}=1", "--tool", "mock=2"), backend=backend
    )

    assert result.exit_code == 0, result.output
    journal = records(tmp_path / "j.jsonl")
    # Every item done once, on mock; the ones that moved say they left 'limited'.
    assert sorted(r["item"] for r in journal) == names
    assert all(r["status"] == "ok" and r["tool"] == "mock" for r in journal)
    assert all(r["replies"] == [r["item"]] and r["attempts"] == 1 for r in journal)
    moved = sorted(r["item"] for r in journal if r["failovers"])
    assert moved, "the first job went to the rate-limited tool and had to move"
    assert all(r["failovers"] in ([], ["limited"]) for r in journal)
    # 'limited' answered none of them: whatever reached it moved, and none reached it twice.
    # A job can also move without reaching it: queued behind the one in flight there when
    # the 429 came, it moved with it, unsent.
    reached = (tmp_path / "limited.log").read_text().splitlines()
    assert reached, "the first job reached the rate-limited tool"
    assert len(set(reached)) == len(reached)
    assert set(reached) <= {f"/echo {item}" for item in moved}

    summary = report(tmp_path)["summary"]
    assert summary["failovers"] == [
        {"item": item, "moved_from": ["limited"], "tool": "mock", "status": "ok"}
        for item in (r["item"] for r in journal if r["failovers"])
    ]
    pools = {pool["name"]: pool for pool in summary["pools"]}
    assert (pools["limited"]["jobs_ok"], pools["mock"]["jobs_ok"]) == (0, 6)
    assert pools["limited"]["rate_limited"] >= len(moved)
    assert (pools["limited"]["jobs_moved_out"], pools["limited"]["jobs_moved_in"]) == (
        len(moved),
        0,
    )
    assert (pools["mock"]["jobs_moved_out"], pools["mock"]["jobs_moved_in"]) == (0, len(moved))
    jobs = "job" if len(moved) == 1 else "jobs"
    assert f"failovers  {len(moved)} {jobs} moved: limited -> mock x {len(moved)}" in (
        result.stdout
    )
    assert f"Failovers ({len(moved)})" in result.stdout
    # The plain progress lines count each tool and the moves.
    assert f"(limited 0 ok, mock 6 ok; {len(moved)} moved)" in result.stdout

    shown = invoke("show", moved[0], "--journal", str(tmp_path / "j.jsonl"))
    assert "tool     mock (moved from limited)\n" in shown.stdout


@backends
def test_several_tools_with_dir_isolation_and_verify_work_in_each_instances_directory(
    tmp_path: Path, backend: str
) -> None:
    items(tmp_path, 6)
    echoer = tool_file(tmp_path, "echoer", limit=1000)

    result = invoke(
        *pools_run(
            tmp_path,
            "--tool",
            "mock=1",
            "--tool",
            f"{echoer}=2",
            "--isolation",
            "dir",
            "--verify",
            "sh -c 'echo {item} > verified-{item}'",
        ),
        backend=backend,
    )

    assert result.exit_code == 0, result.output
    base = tmp_path / ".aimcluster"
    for record in records(tmp_path / "j.jsonl"):
        home = base / f"instance-{record['instance']}"
        assert record["cwd"] == str(home)
        assert (home / f"verified-{record['item']}").read_text() == f"{record['item']}\n"
    assert sorted(p.name for p in base.iterdir()) == ["instance-0", "instance-1", "instance-2"]


def test_a_single_tool_takes_its_count_after_the_equals_sign(tmp_path: Path) -> None:
    items(tmp_path, 5)

    result = invoke(*pools_run(tmp_path, "--tool", "mock=3", "-n", "1"))

    assert result.exit_code == 0, result.output
    assert "5 jobs, mock x 3, journal" in result.stdout
    assert "tool       mock x 3" in result.stdout
    summary = report(tmp_path)["summary"]
    assert summary["count"] == 3
    assert summary["fallback"] == []
    assert [pool["name"] for pool in summary["pools"]] == ["mock"]


# -- bad input --------------------------------------------------------------------------------


BAD: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "zero count": (
        lambda d: ["--tool", "mock=0"],
        "--tool 'mock=0': the count after '=' must be a whole number >= 1, got '0'",
    ),
    "count not a number": (
        lambda d: ["--tool", "mock", "--tool", "python=abc"],
        "--tool 'python=abc': the count after '=' must be a whole number >= 1, got 'abc'",
    ),
    "no tool before the count": (
        lambda d: ["--tool", "=3"],
        "--tool '=3': name a tool before '=3'",
    ),
    "the same tool twice": (
        lambda d: ["--tool", "mock=2", "--tool", "mock --delay 0.1"],
        "--tool 'mock --delay 0.1': the tool 'mock' is already given (--tool 'mock=2'); give "
        "each tool once, with its count ('mock=N'), or a spec file with a name of its own",
    ),
    "unknown tool": (
        lambda d: ["--tool", "mock=2", "--tool", "nosuch=1"],
        f"unknown tool 'nosuch'; known tools are: {', '.join(tools.names())} "
        "(or a path to a .toml/.json tool spec)",
    ),
    "fallback names no tool": (
        lambda d: ["--tool", "mock", "--tool", "python", "--fallback", "python,aider"],
        "--fallback 'python,aider': 'aider' is none of the tools; they are: mock, python",
    ),
    "fallback names a tool twice": (
        lambda d: ["--tool", "mock", "--tool", "python", "--fallback", "mock,mock"],
        "--fallback 'mock,mock' names 'mock' twice",
    ),
    "fallback with one tool": (
        lambda d: ["--tool", "mock", "--fallback", "mock"],
        "--fallback needs several tools (--tool a=N --tool b=M)",
    ),
    "failover-after with one tool": (
        lambda d: ["--tool", "mock", "--failover-after", "5"],
        "--failover-after needs several tools (--tool a=N --tool b=M)",
    ),
    "failover-after without an order": (
        lambda d: [
            *("--tool", "mock", "--tool", "python"),
            *("--fallback", "none", "--failover-after", "5"),
        ],
        "--failover-after needs a failover order, and --fallback is none",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_tool_options_are_one_line_naming_the_problem_and_exit_2(
    case: str, tmp_path: Path
) -> None:
    items(tmp_path, 1)
    make_args, message = BAD[case]

    result = invoke(*pools_run(tmp_path, *make_args(tmp_path)))

    assert result.exit_code == 2
    assert result.stderr == f"aimcluster: error: {message}\n"
    assert not (tmp_path / "j.jsonl").exists()


def test_an_option_of_the_tools_own_with_an_equals_sign_is_no_count(tmp_path: Path) -> None:
    items(tmp_path, 2)

    result = invoke(*pools_run(tmp_path, "--tool", "mock --delay=0.001", "-n", "1", "--dry-run"))

    assert result.exit_code == 0, result.output
    assert "Dry run: 2 jobs would run" in result.stdout


# -- the journal ------------------------------------------------------------------------------


def test_records_from_before_several_tools_still_read_and_show(tmp_path: Path) -> None:
    journal = tmp_path / "j.jsonl"
    old = {"v": 2, "item": "a", "status": "ok", "attempts": 1, "instance": 0, "job": "x"}
    bad = {**old, "item": "b", "failovers": "limited"}
    journal.write_text(json.dumps(old) + "\n" + json.dumps(bad) + "\n")

    contents = read_journal(journal)
    shown = invoke("show", "a", "--journal", str(journal))

    assert [r["item"] for r in contents.records] == ["a"]
    assert contents.bad_lines == (2,)
    assert shown.exit_code == 0, shown.output
    assert "status   ok (attempts: 1)" in shown.stdout
    assert "tool " not in shown.stdout


# -- worktrees and the live display -----------------------------------------------------------


def test_several_tools_with_worktree_isolation_land_one_commit_per_item(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    names = [f"{letter}.txt" for letter in "abcdef"]
    for name in names:
        (repo / name).write_text(f"{name}\n")
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "start"], cwd=repo, check=True)
    # A second tool: a shell of a script's own, which runs each line it reads.
    script = tmp_path / "shell.py"
    script.write_text(textwrap.dedent(_SHELL_TOOL))
    other = tmp_path / "othershell.json"
    other.write_text(
        json.dumps({"name": "othershell", "argv": [sys.executable, str(script)], "ready": "> $"})
    )

    result = invoke(
        "run",
        "--tool",
        "bash=1",
        "--tool",
        f"{other}=2",
        "--cwd",
        str(repo),
        "--isolation",
        "worktree",
        "--journal",
        str(tmp_path / "j.jsonl"),
        "--progress",
        "none",
        "*.txt",
        "-s",
        "echo edited >> {item} && " + " ".join(git) + " commit -qam 'edit {item}' && pwd",
    )

    assert result.exit_code == 0, result.output
    branch = next(
        b
        for b in subprocess.run(
            ["git", "branch", "--format=%(refname:short)"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if b.startswith("aimcluster/")
    )
    log = subprocess.run(
        ["git", "log", "--reverse", "--format=%s", f"HEAD..{branch}"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert log == [f"aimcluster: {name}" for name in names]
    journal = records(tmp_path / "j.jsonl")
    for record in journal:
        # Each instance (numbered across both tools) worked in a worktree of its own.
        assert record["replies"][0].endswith(f"/instance-{record['instance']}")
        assert record["tool"] == ("bash" if record["instance"] == 0 else "othershell")
        assert record["changed"] is True


@pytest.mark.anyio
async def test_the_live_display_shows_each_instances_tool_and_the_per_tool_counts(
    tmp_path: Path,
) -> None:
    echoer = resolve_tool(tool_file(tmp_path, "echoer", limit=1000))
    jobs = [Job(item=f"i{n}", steps=[f"/echo i{n}"]) for n in range(4)]
    console = Console(
        file=io.StringIO(), force_terminal=True, width=120, height=40, color_system=None
    )
    tracker = Tracker(total=len(jobs))
    batch = Batch(
        spec=tools.mock(),
        count=3,
        pools=[Pool(tools.mock(), 2), Pool(echoer, 1)],
        fallback=["mock", "echoer"],
        routing="least_busy",
        jobs=jobs,
        total=len(jobs),
        skipped=0,
        timeout=30,
        retries=0,
        grace=1.0,
        journal=None,
    )

    outcome = await run_batch(
        batch,
        tracker=tracker,
        display=LiveDisplay(tracker, console, interval=0.001),
        logger=_logger(0),
    )

    assert outcome.exit_code == 0
    screen = console.file.getvalue()  # type: ignore[attr-defined]
    assert "tools: mock 0 ok, echoer 0 ok; 0 moved" in screen
    assert re.search(r"^ *0 +mock +\d+ +(ready|busy) ", screen, re.MULTILINE)
    assert re.search(r"^ *2 +echoer +\d+ +(ready|busy) ", screen, re.MULTILINE)
    assert tracker.per_tool_ok + tracker.per_tool_failed == outcome_counts(outcome)


def outcome_counts(outcome: BatchOutcome) -> Counter[str]:
    return Counter(result.tool for result in outcome.results if result.tool is not None)
