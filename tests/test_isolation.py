"""``aimcluster run --isolation worktree`` end to end, on a real repository of 100+ files.

The repository is a copy of the installed click and rich packages' sources. The run is
``python -m aimcluster`` as a subprocess with the mock agent, which inserts
``# DOC_ID: <sha256(path)[:12]>`` into each file; git then shows what landed on the result
branch: exactly one DOC_ID line per file, and no other change.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import rich

from aimcluster._cli.demo import expected_content
from aimcluster._cli.journal import read_journal

from .conftest import descendants, wait_gone

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")

TIMEOUT = 60.0
STEPS = ["/add {item}", "Add a DOC_ID header to {item}", "/drop {item}"]
PROGRESS = re.compile(r"^\[progress\] (\d+)/(\d+) done")


def git(repo: Path, *args: str) -> bytes:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        capture_output=True,
        check=True,
        timeout=TIMEOUT,
    ).stdout


def git_env(tmp_path: Path) -> dict[str, str]:
    """An environment with no git identity or configuration of the user's: a bare CI box."""
    config = tmp_path / "gitconfig"
    config.write_text("")
    env = dict(os.environ)
    env.update(GIT_CONFIG_GLOBAL=str(config), GIT_CONFIG_NOSYSTEM="1", NO_COLOR="1")
    return env


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A git repository of the click and rich sources: (its path, each .py file's content)."""
    root = tmp_path / "repo"
    root.mkdir()
    for package in (click, rich):
        source = Path(package.__file__ or "").parent
        shutil.copytree(source, root / source.name, ignore=shutil.ignore_patterns("__pycache__"))
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "the sources")
    originals = {
        path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*.py")
    }
    assert len(originals) >= 100
    return root, originals


def run_args(tmp_path: Path, *, delay: float) -> list[str]:
    args = [sys.executable, "-m", "aimcluster", "run", "--tool", f"mock --delay {delay:g}"]
    args += ["--isolation", "worktree", "--count", "4", "**/*.py"]
    for step in STEPS:
        args += ["--step", step]
    args += ["--journal", str(tmp_path / "journal.jsonl"), "--report", str(tmp_path / "r.json")]
    return [*args, "--progress", "plain"]


def landing(tmp_path: Path) -> dict[str, Any]:
    report = json.loads((tmp_path / "r.json").read_text())
    found: dict[str, Any] = report["summary"]["landing"]
    return found


def assert_landed_exactly_once(repo: Path, originals: dict[str, bytes], branch: str) -> None:
    """The result branch holds each file with exactly its DOC_ID header, and nothing else."""
    base = git(repo, "rev-parse", "HEAD").decode().strip()
    changed = git(repo, "diff", "--name-only", "-z", base, branch).split(b"\0")
    assert sorted(os.fsdecode(name) for name in changed if name) == sorted(originals)
    assert int(git(repo, "rev-list", "--count", f"{base}..{branch}")) == len(originals)
    # One commit per item, changing that item's file alone.
    for commit in git(repo, "rev-list", f"{base}..{branch}").split():
        subject = git(repo, "log", "-1", "--format=%s", commit.decode()).decode().strip()
        names = git(repo, "diff-tree", "--no-commit-id", "--name-only", "-r", "-z", commit)
        assert [f"aimcluster: {os.fsdecode(n)}" for n in names.split(b"\0") if n] == [subject]
    for path, original in originals.items():
        content = git(repo, "show", f"{branch}:{path}")
        assert content == expected_content(path, original), path
        assert content.count(b"DOC_ID") == original.count(b"DOC_ID") + 1, path
    # The user's checkout is as it was; the worktrees are gone.
    assert git(repo, "status", "--porcelain") == b""
    assert len(git(repo, "worktree", "list").splitlines()) == 1
    assert not (repo / ".git" / "aimcluster").exists()


def test_a_worktree_run_lands_one_doc_id_per_file_on_one_branch(
    tmp_path: Path, repo: tuple[Path, dict[str, bytes]]
) -> None:
    root, originals = repo

    done = subprocess.run(
        run_args(tmp_path, delay=0.01),
        cwd=root,
        env=git_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    result = landing(tmp_path)
    branch = result["branch"]
    assert re.fullmatch(r"aimcluster/run-\d{8}T\d{6}Z-[0-9a-f]{4}", branch)
    assert f"results    branch {branch}: {len(originals)} commit(s)" in done.stdout
    assert_landed_exactly_once(root, originals, branch)
    # Each journal record names its commit; the instance branches are gone, the result stays.
    records = read_journal(tmp_path / "journal.jsonl").records
    assert sorted(r["item"] for r in records) == sorted(originals)
    assert all(r["status"] == "ok" and r["changed"] and r["commit"] for r in records)
    landed = {entry["item"]: entry["commit"] for entry in result["commits"]}
    assert landed == {r["item"]: r["commit"] for r in records}
    branches = git(root, "branch", "--format=%(refname:short)").decode().split()
    assert sorted(branches) == sorted([branch, "master" if "master" in branches else "main"])
    assert not (tmp_path / "journal.worktrees.json").exists()


def test_a_worktree_run_killed_halfway_and_resumed_lands_each_file_once(
    tmp_path: Path, repo: tuple[Path, dict[str, bytes]]
) -> None:
    root, originals = repo
    args = run_args(tmp_path, delay=0.03)
    env = git_env(tmp_path)
    with open(tmp_path / "stderr", "w") as stderr:
        first = subprocess.Popen(
            args, cwd=root, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    assert first.stdout is not None
    try:
        # A progress line comes once the results it counts are in the journal: wait for half.
        for line in first.stdout:
            match = PROGRESS.match(line)
            if match is not None and int(match.group(1)) * 2 >= int(match.group(2)):
                break
        else:
            raise AssertionError("the run ended before half its items were done")
        agents = list(descendants(first.pid))
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=TIMEOUT) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=TIMEOUT)
        first.stdout.close()
    assert wait_gone(agents) == []
    done_before = {r["item"] for r in read_journal(tmp_path / "journal.jsonl").records}
    assert len(originals) // 2 <= len(done_before) < len(originals)
    state = json.loads((tmp_path / "journal.worktrees.json").read_text())
    # The killed run left its worktrees. Whatever a killed job had done in one is not
    # committed: here, as if killed between its edit and its commit, a header for an item not
    # yet done and a stray file.
    assert len(git(root, "worktree", "list").splitlines()) == 5
    worktree = Path(state["instances"][0]["worktree"])
    item = min(set(originals) - done_before)
    (worktree / item).write_bytes(expected_content(item, originals[item]))
    (worktree / "stray.py").write_text("half\n")

    second = subprocess.run(
        args, cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )

    assert second.returncode == 0, second.stdout + second.stderr
    assert f"({len(done_before)} already done)" in second.stdout
    result = landing(tmp_path)
    # The resume used the killed run's branches and worktrees, and lands on its branch.
    assert result["branch"] == state["result_branch"] == f"aimcluster/run-{state['key']}"
    assert result["base"] == state["base"]
    assert_landed_exactly_once(root, originals, result["branch"])


def test_an_item_whose_change_conflicts_fails_and_keeps_its_commit(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("a.txt", "b.txt"):
        (root / name).write_text(f"{name}\n")
    (root / "shared.log").write_text("start\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "start")
    # The two jobs run on two instances (round robin: one each), and append to one file.
    args = [sys.executable, "-m", "aimcluster", "run", "--tool", "bash", "-n", "2"]
    args += ["--routing", "round_robin"]
    args += ["--isolation", "worktree", "--result-branch", "out", "*.txt"]
    args += ["--step", "echo {item} >> shared.log && echo done"]
    args += ["--journal", str(tmp_path / "journal.jsonl"), "--report", str(tmp_path / "r.json")]

    done = subprocess.run(
        args, cwd=root, env=git_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT
    )

    assert done.returncode == 1, done.stdout + done.stderr
    assert "ConflictError" in done.stdout
    assert "Some items failed." in done.stdout
    result = landing(tmp_path)
    [conflict] = result["conflicts"]
    assert (conflict["item"], conflict["paths"]) == ("b.txt", ["shared.log"])
    assert [entry["item"] for entry in result["commits"]] == ["a.txt"]
    assert git(root, "show", "out:shared.log") == b"start\na.txt\n"
    # b.txt's commit stays on its instance's branch, named in the journal and the summary.
    assert git(root, "show", f"{conflict['branch']}:shared.log") == b"start\nb.txt\n"
    assert conflict["branch"] in done.stdout
    last = {r["item"]: r for r in read_journal(tmp_path / "journal.jsonl").latest()}
    assert {item: r["status"] for item, r in last.items()} == {"a.txt": "ok", "b.txt": "failed"}
    assert last["b.txt"]["error"]["type"] == "ConflictError"
    assert last["b.txt"]["commit"] == conflict["commit"]


def small_repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("a.txt", "b.txt"):
        (root / name).write_text(f"{name}\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "start")
    return root


def bash_args(tmp_path: Path) -> list[str]:
    args = [sys.executable, "-m", "aimcluster", "run", "--tool", "bash", "-n", "2"]
    args += ["--isolation", "worktree", "--result-branch", "out", "*.txt"]
    args += ["--step", "echo {item} >> {item} && echo done"]
    return [*args, "--journal", str(tmp_path / "journal.jsonl")]


def test_a_git_failure_while_setting_up_worktrees_is_one_line_of_error(tmp_path: Path) -> None:
    root = small_repo(tmp_path)
    # Where the worktrees go is a file: 'git worktree add' fails.
    (root / ".git" / "aimcluster").write_text("in the way\n")

    done = subprocess.run(
        bash_args(tmp_path),
        cwd=root,
        env=git_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )

    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(
        "aimcluster: error: --isolation worktree could not be set up: git worktree add -q "
        "exited with code 128: fatal: "
    ), line
    assert "Traceback" not in done.stderr


def test_a_run_whose_jobs_are_all_done_but_not_landed_lands_when_run_again(
    tmp_path: Path,
) -> None:
    root = small_repo(tmp_path)
    env = git_env(tmp_path)
    # A branch 'out/x' keeps the ref 'out' from being made: the first run does every job but
    # cannot land them, as if killed between its last job and its landing.
    git(root, "branch", "out/x")
    first = subprocess.run(
        bash_args(tmp_path), cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    records = read_journal(tmp_path / "journal.jsonl").records
    assert sorted((r["item"], r["status"]) for r in records) == [("a.txt", "ok"), ("b.txt", "ok")]
    assert (tmp_path / "journal.worktrees.json").exists(), first.stdout + first.stderr
    git(root, "branch", "-D", "out/x")

    second = subprocess.run(
        bash_args(tmp_path), cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )

    assert second.returncode == 0, second.stdout + second.stderr
    assert "Nothing to do" not in second.stdout
    assert git(root, "show", "out:a.txt") == b"a.txt\na.txt\n"
    assert git(root, "show", "out:b.txt") == b"b.txt\nb.txt\n"
    assert not (tmp_path / "journal.worktrees.json").exists()
    branches = git(root, "branch", "--format=%(refname:short)").decode().split()
    assert sorted(branches) == sorted(["out", "master" if "master" in branches else "main"])
    assert len(git(root, "worktree", "list").splitlines()) == 1
    assert not (root / ".git" / "aimcluster").exists()
