"""The git layer of ``--isolation worktree``: a commit per item, clean starts, landing, resume.

Each test drives real git on a small repository in tmp_path; the jobs are stood in for by
writing files in the worktrees, as a tool would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from aimcluster._cli.git import commit_message, item_of_message
from aimcluster._cli.items import InputError
from aimcluster._cli.journal import Journal, read_journal
from aimcluster._cli.results import Worktrees, state_path_for
from aimcluster._cli.worktree_open import open_worktrees
from aimcluster._core.jobs import Job, JobResult

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(shutil.which("git") is None, reason="needs git"),
]

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]


def git(repo: Path, *args: str) -> str:
    done = subprocess.run([*GIT, *args], cwd=repo, capture_output=True, check=True)
    return os.fsdecode(done.stdout)


def make_repo(tmp_path: Path, files: dict[str, str]) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    for name, text in files.items():
        (repo / name).write_text(text)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "start")
    return repo


def jobs_for(*items: str) -> list[Job]:
    return [Job(item=item, steps=("edit",)) for item in items]


def ok(job: Job, commit: str, instance: int = 0) -> JobResult:
    now = time.time()
    return JobResult(
        job=job,
        status="ok",
        instance=instance,
        replies=("done",),
        attempts=1,
        started_at=now,
        ended_at=now,
        elapsed=0.0,
        commit=commit,
    )


async def edit(worktrees: Worktrees, instance: int, job: Job, name: str, text: str) -> str:
    """One job on *instance*: prepare, write *name*, settle."""
    await worktrees.prepare(job, instance)
    (worktrees.places[instance].path / name).write_bytes(text.encode("utf-8", "surrogateescape"))
    return await worktrees.settle(job, instance)


def files_at(repo: Path, rev: str) -> dict[str, str]:
    names = [n for n in git(repo, "ls-tree", "-z", "--name-only", rev).split("\0") if n]
    return {name: git(repo, "show", f"{rev}:{name}") for name in names}


def test_commit_message_names_the_item_and_reads_back_any_name() -> None:
    for item in ("a.py", "dir/with space.py", "new\nline.py", "bad\udcff.py", "ünï.py"):
        message = commit_message(item, "key").decode()

        assert item_of_message(message) == item
        assert message.splitlines()[0].startswith("aimcluster: ")
        assert "\n" not in message.splitlines()[0]
    assert commit_message("a.py", "k").decode().splitlines()[0] == "aimcluster: a.py"


async def test_settle_commits_the_change_as_one_commit_naming_the_item(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n", "b.txt": "b\n"})
    [job] = jobs_for("a.txt")
    worktrees = await open_worktrees(repo, 1, run="r1", jobs=[job])
    base = git(repo, "rev-parse", "HEAD").strip()

    commit = await edit(worktrees, 0, job, "a.txt", "a\nedited\n")

    branch = worktrees.places[0].branch
    assert branch == "aimcluster/r1/instance-0"
    assert git(repo, "rev-parse", branch).strip() == commit
    assert git(repo, "rev-parse", f"{commit}^").strip() == base
    assert git(repo, "log", "-1", "--format=%s", commit).strip() == "aimcluster: a.txt"
    assert git(repo, "diff", "--name-only", base, commit).split() == ["a.txt"]
    # The worktree is clean after the commit, and lives in the repository's git directory.
    assert git(worktrees.places[0].path, "status", "--porcelain") == ""
    assert worktrees.places[0].path == repo / ".git" / "aimcluster" / "r1" / "instance-0"
    assert git(repo, "status", "--porcelain") == ""
    await worktrees.close()


async def test_a_job_that_changes_nothing_makes_no_commit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n"})
    [job] = jobs_for("a.txt")
    worktrees = await open_worktrees(repo, 1, run="r1", jobs=[job])
    base = git(repo, "rev-parse", "HEAD").strip()

    commit = await edit(worktrees, 0, job, "a.txt", "a\n")

    assert commit == ""
    assert git(repo, "rev-parse", worktrees.places[0].branch).strip() == base
    await worktrees.close()


async def test_prepare_discards_what_an_unfinished_job_left(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n"})
    first, second = jobs_for("a.txt", "b.txt")
    worktrees = await open_worktrees(repo, 1, run="r1", jobs=[first, second])
    path = worktrees.places[0].path
    await worktrees.prepare(first, 0)
    # The first job fails half-way: an edit and a new file, never settled.
    (path / "a.txt").write_text("half an edit\n")
    (path / "junk").mkdir()
    (path / "junk" / "new.txt").write_text("x\n")

    await worktrees.prepare(second, 0)

    assert (path / "a.txt").read_text() == "a\n"
    assert not (path / "junk").exists()
    assert git(path, "status", "--porcelain", "--untracked-files=all") == ""
    await worktrees.close()


async def test_commits_the_tool_made_become_one_commit_on_the_last_one(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n", "b.txt": "b\n"})
    [job] = jobs_for("a.txt")
    worktrees = await open_worktrees(repo, 1, run="r1", jobs=[job])
    base = git(repo, "rev-parse", "HEAD").strip()
    path = worktrees.places[0].path
    await worktrees.prepare(job, 0)
    # Like aider's auto-commits: the tool commits its edit, then edits again.
    (path / "a.txt").write_text("a\none\n")
    git(path, "commit", "-qam", "tool commit")
    (path / "b.txt").write_text("b\ntwo\n")

    commit = await worktrees.settle(job, 0)

    assert git(repo, "rev-parse", f"{commit}^").strip() == base
    assert sorted(git(repo, "diff", "--name-only", base, commit).split()) == ["a.txt", "b.txt"]
    assert git(repo, "rev-list", "--count", f"{base}..{worktrees.places[0].branch}").strip() == "1"
    await worktrees.close()


async def test_names_with_spaces_newlines_and_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"plain.txt": "p\n"})
    names = ["with space.txt", "new\nline.txt", os.fsdecode(b"latin\xe9.txt")]
    jobs = jobs_for(*names)
    journal_path = tmp_path / "j.jsonl"
    worktrees = await open_worktrees(repo, 2, run="r1", jobs=jobs)
    results = []
    for index, (job, name) in enumerate(zip(jobs, names, strict=True)):
        results.append(ok(job, await edit(worktrees, index % 2, job, name, name), index % 2))

    with Journal(journal_path, run="r1") as journal:
        landed, reopened = await worktrees.land(results, journal=journal)
    await worktrees.close()

    assert reopened == 0
    assert [r.status for r in landed] == ["ok"] * 3
    landing = worktrees.landing
    assert landing is not None
    assert [entry.item for entry in landing.commits] == names
    assert landing.conflicts == ()
    tree = git(repo, "ls-tree", "-z", "--name-only", landing.branch).split("\0")
    assert sorted(n for n in tree if n) == sorted(["plain.txt", *names])
    assert git(repo, "rev-parse", landing.branch).strip() == landing.tip


async def test_land_picks_in_item_order_and_fails_the_item_that_conflicts(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"shared.txt": "line\n", "a.txt": "a\n"})
    first, second, third = jobs_for("first", "second", "third")
    worktrees = await open_worktrees(repo, 2, run="r1", jobs=[first, second, third])
    # Done in another order than the items': third, then second and first on two instances.
    c3 = await edit(worktrees, 0, third, "a.txt", "a\nthird\n")
    c2 = await edit(worktrees, 1, second, "shared.txt", "second's line\n")
    c1 = await edit(worktrees, 0, first, "shared.txt", "first's line\n")
    results = [ok(third, c3, 0), ok(second, c2, 1), ok(first, c1, 0)]
    journal_path = tmp_path / "j.jsonl"

    with Journal(journal_path, run="r1") as journal:
        landed, reopened = await worktrees.land(
            results, journal=journal, fingerprints={"second": "f2"}
        )
    await worktrees.close()

    landing = worktrees.landing
    assert landing is not None
    assert [entry.item for entry in landing.commits] == ["first", "third"]
    assert git(repo, "log", "--format=%s", f"{landing.base}..{landing.branch}").split("\n")[:2] == [
        "aimcluster: third",
        "aimcluster: first",
    ]
    [conflict] = landing.conflicts
    assert (conflict.item, conflict.commit, conflict.paths) == ("second", c2, ("shared.txt",))
    assert conflict.branch == "aimcluster/r1/instance-1"
    assert files_at(repo, landing.branch) == {"shared.txt": "first's line\n", "a.txt": "a\nthird\n"}
    # The failed item: in the results, in the journal (with its job), and its commit is kept.
    by_item = {r.item: r for r in landed}
    assert by_item["second"].status == "failed"
    assert by_item["second"].error_type == "ConflictError"
    assert "shared.txt" in (by_item["second"].error or "")
    assert reopened == 0
    [record] = read_journal(journal_path).records
    assert (record["item"], record["status"], record["job"]) == ("second", "failed", "f2")
    assert git(repo, "rev-parse", "aimcluster/r1/instance-1").strip() == c2
    assert landing.kept_branches == ("aimcluster/r1/instance-0", "aimcluster/r1/instance-1")


async def test_a_commit_the_journal_missed_is_found_by_its_item(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n"})
    [job] = jobs_for("a.txt")
    worktrees = await open_worktrees(repo, 1, run="r1", jobs=[job])
    commit = await edit(worktrees, 0, job, "a.txt", "a\nedited\n")
    # The process died before the record; the item ran again and found its change there.
    again = await edit(worktrees, 0, job, "a.txt", "a\nedited\n")
    assert again == ""

    landed, _ = await worktrees.land([ok(job, again)])
    await worktrees.close()

    landing = worktrees.landing
    assert landing is not None
    assert [(e.item, e.commit) for e in landing.commits] == [("a.txt", commit)]
    assert files_at(repo, landing.branch) == {"a.txt": "a\nedited\n"}
    assert [r.status for r in landed] == ["ok"]


async def test_reopening_with_the_state_reuses_worktrees_and_branches(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n", "b.txt": "b\n"})
    a, b = jobs_for("a.txt", "b.txt")
    state = state_path_for(tmp_path / "journal.jsonl")
    assert state == tmp_path / "journal.worktrees.json"
    first = await open_worktrees(repo, 2, run="r1", jobs=[a, b], state_path=state)
    commit = await edit(first, 0, a, "a.txt", "a\nedited\n")
    await first.prepare(b, 1)
    (first.places[1].path / "b.txt").write_text("half\n")
    (first.places[1].path / "stray.txt").write_text("half\n")
    # Killed here: no land, no close. HEAD moves on meanwhile; the run keeps its base.
    (repo / "c.txt").write_text("c\n")
    git(repo, "add", "c.txt")
    git(repo, "commit", "-qm", "later")

    second = await open_worktrees(repo, 2, run="r2", jobs=[a, b], done=["a.txt"], state_path=state)

    assert (second.key, second.base) == ("r1", first.base)
    assert second.result_branch == "aimcluster/run-r1"
    assert [p.path for p in second.places.values()] == [p.path for p in first.places.values()]
    assert second.places[0].tip == commit
    c2 = await edit(second, 1, b, "b.txt", "b\nedited\n")
    # The half edit the killed job left is not in the item's commit.
    assert git(repo, "diff", "--name-only", f"{c2}^", c2).split() == ["b.txt"]
    await second.land([ok(b, c2, 1)])
    await second.close()
    landing = second.landing
    assert landing is not None
    assert [e.item for e in landing.commits] == ["a.txt", "b.txt"]
    assert files_at(repo, landing.branch) == {"a.txt": "a\nedited\n", "b.txt": "b\nedited\n"}
    # Complete: the instance branches, worktrees and state are gone; the result stays.
    assert second.complete
    assert not state.exists()
    assert git(repo, "branch", "--format=%(refname:short)").split() == [
        "aimcluster/run-r1",
        git(repo, "branch", "--show-current").strip(),
    ]
    assert len(git(repo, "worktree", "list").splitlines()) == 1
    assert not (repo / ".git" / "aimcluster").exists()
    assert json.loads(json.dumps(landing.base))


async def test_a_result_branch_that_exists_and_is_not_the_runs_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n"})
    git(repo, "branch", "mine")

    with pytest.raises(InputError, match="the branch 'mine' already exists"):
        await open_worktrees(repo, 1, run="r1", jobs=jobs_for("a.txt"), result_branch="mine")
    with pytest.raises(InputError, match="is not a valid branch name"):
        await open_worktrees(repo, 1, run="r1", jobs=jobs_for("a.txt"), result_branch="a..b")
    assert len(git(repo, "worktree", "list").splitlines()) == 1


async def test_a_result_branch_that_is_checked_out_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n"})
    git(repo, "checkout", "-q", "-b", "results")
    git(repo, "checkout", "-q", "-")
    git(repo, "worktree", "add", "-q", str(tmp_path / "elsewhere"), "results")

    with pytest.raises(InputError, match="the result branch 'results' is checked out"):
        await open_worktrees(repo, 1, run="r1", jobs=jobs_for("a.txt"), result_branch="results")


async def test_fresh_starts_from_head_and_removes_the_old_worktrees(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n"})
    [job] = jobs_for("a.txt")
    state = tmp_path / "j.worktrees.json"
    old = await open_worktrees(repo, 1, run="r1", jobs=[job], state_path=state)
    await edit(old, 0, job, "a.txt", "half")
    # Killed; then run again with --fresh.

    new = await open_worktrees(repo, 1, run="r2", jobs=[job], state_path=state, fresh=True)

    assert new.key == "r2"
    assert not old.places[0].path.exists()
    assert json.loads(state.read_text())["key"] == "r2"
    assert "aimcluster/r1/instance-0" in git(repo, "branch", "--format=%(refname:short)")
    assert any(note.startswith("--fresh: the earlier run's branches") for note in new.notes)
    await new.close()


async def test_items_landed_by_an_earlier_complete_run_are_not_counted_again(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n", "b.txt": "b\n"})
    a, b = jobs_for("a.txt", "b.txt")
    # a.txt was done, committed and landed by a run whose branches are gone now.
    earlier = [{"item": "a.txt", "status": "ok", "commit": "0" * 40, "changed": True}]
    worktrees = await open_worktrees(
        repo, 1, run="r2", jobs=[a, b], done=["a.txt"], records=earlier
    )
    commit = await edit(worktrees, 0, b, "b.txt", "b\nedited\n")

    await worktrees.land([ok(b, commit)])
    await worktrees.close()

    landing = worktrees.landing
    assert landing is not None
    assert [e.item for e in landing.commits] == ["b.txt"]
    assert landing.unchanged == ()
    assert worktrees.complete


async def test_a_resume_with_fewer_instances_removes_every_worktree_and_branch(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n", "b.txt": "b\n", "c.txt": "c\n"})
    a, b, c = jobs_for("a.txt", "b.txt", "c.txt")
    state = tmp_path / "j.worktrees.json"
    first = await open_worktrees(repo, 3, run="r1", jobs=[a, b, c], state_path=state)
    await edit(first, 0, a, "a.txt", "a\nedited\n")
    await edit(first, 2, b, "b.txt", "b\nedited\n")
    # Killed here. One item is left, so the resume has one instance.
    second = await open_worktrees(
        repo, 1, run="r2", jobs=[a, b, c], done=["a.txt", "b.txt"], state_path=state
    )
    commit = await edit(second, 0, c, "c.txt", "c\nedited\n")

    await second.land([ok(c, commit)])
    await second.close()

    assert second.complete
    assert len(git(repo, "worktree", "list").splitlines()) == 1
    assert sorted(git(repo, "branch", "--format=%(refname:short)").split()) == sorted(
        ["aimcluster/run-r1", git(repo, "branch", "--show-current").strip()]
    )
    assert not state.exists()
    assert not (repo / ".git" / "aimcluster").exists()
    assert files_at(repo, "aimcluster/run-r1") == {
        "a.txt": "a\nedited\n",
        "b.txt": "b\nedited\n",
        "c.txt": "c\nedited\n",
    }


async def test_the_users_failing_git_hooks_do_not_stop_the_landing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n", "b.txt": "b\n"})
    marker = tmp_path / "hooks-ran"
    hooks = repo / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    for name in (
        "post-checkout",
        "prepare-commit-msg",
        "commit-msg",
        "pre-commit",
        "post-commit",
        "reference-transaction",
    ):
        hook = hooks / name
        hook.write_text(f"#!/bin/sh\necho {name} >> '{marker}'\nexit 1\n")
        hook.chmod(0o755)
    a, b = jobs_for("a.txt", "b.txt")
    worktrees = await open_worktrees(repo, 2, run="r1", jobs=[a, b])
    ca = await edit(worktrees, 0, a, "a.txt", "a\nedited\n")
    cb = await edit(worktrees, 1, b, "b.txt", "b\nedited\n")

    landed, _ = await worktrees.land([ok(a, ca, 0), ok(b, cb, 1)])
    await worktrees.close()

    assert [r.status for r in landed] == ["ok", "ok"]
    landing = worktrees.landing
    assert landing is not None
    assert [e.item for e in landing.commits] == ["a.txt", "b.txt"]
    assert files_at(repo, landing.branch) == {"a.txt": "a\nedited\n", "b.txt": "b\nedited\n"}
    assert not marker.exists()
    assert worktrees.complete
    assert len(git(repo, "worktree", "list").splitlines()) == 1


async def test_a_commit_the_user_added_on_the_result_branch_is_kept(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n", "b.txt": "b\n"})
    a, b = jobs_for("a.txt", "b.txt")
    state = tmp_path / "j.worktrees.json"
    first = await open_worktrees(repo, 1, run="r1", jobs=[a, b], state_path=state)
    ca = await edit(first, 0, a, "a.txt", "a\nedited\n")
    await first.land([ok(a, ca)])
    await first.close()
    assert not first.complete
    # The user commits on the result branch (say, a conflicting item's change, by hand).
    tip = git(repo, "rev-parse", "aimcluster/run-r1").strip()
    tree = git(repo, "rev-parse", f"{tip}^{{tree}}").strip()
    mine = git(repo, "commit-tree", tree, "-p", tip, "-m", "mine").strip()
    git(repo, "update-ref", "refs/heads/aimcluster/run-r1", mine)
    second = await open_worktrees(repo, 1, run="r2", jobs=[a, b], done=["a.txt"], state_path=state)
    cb = await edit(second, 0, b, "b.txt", "b\nedited\n")

    await second.land([ok(b, cb)])
    await second.close()

    assert git(repo, "rev-parse", "aimcluster/run-r1").strip() == mine
    landing = second.landing
    assert landing is not None
    assert landing.branch == "aimcluster/run-r1-2"
    assert files_at(repo, landing.branch) == {"a.txt": "a\nedited\n", "b.txt": "b\nedited\n"}
    assert any(
        "aimcluster/run-r1 has moved" in note and "aimcluster/run-r1-2" in note
        for note in second.notes
    )


async def test_the_result_branch_is_moved_again_on_resume_when_only_the_run_wrote_it(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n", "b.txt": "b\n"})
    a, b = jobs_for("a.txt", "b.txt")
    state = tmp_path / "j.worktrees.json"
    first = await open_worktrees(repo, 1, run="r1", jobs=[a, b], state_path=state)
    ca = await edit(first, 0, a, "a.txt", "a\nedited\n")
    await first.land([ok(a, ca)])
    await first.close()
    assert (
        json.loads(state.read_text())["result_tip"]
        == git(repo, "rev-parse", "aimcluster/run-r1").strip()
    )
    second = await open_worktrees(repo, 1, run="r2", jobs=[a, b], done=["a.txt"], state_path=state)
    cb = await edit(second, 0, b, "b.txt", "b\nedited\n")

    await second.land([ok(b, cb)])
    await second.close()

    landing = second.landing
    assert landing is not None
    assert landing.branch == "aimcluster/run-r1"
    assert files_at(repo, landing.branch) == {"a.txt": "a\nedited\n", "b.txt": "b\nedited\n"}
    assert second.complete


async def test_an_items_unrecorded_commit_is_taken_off_so_its_rerun_lands_all_of_it(
    tmp_path: Path,
) -> None:
    # Killed between the item's commit and its journal record: on resume the item runs again.
    # Before, its new commit sat on top of the old one and held only what the rerun added,
    # and that alone landed: the first half of the change was lost, silently.
    repo = make_repo(tmp_path, {"a.txt": "a\n", "b.txt": "b\n"})
    a, b = jobs_for("a.txt", "b.txt")
    state = state_path_for(tmp_path / "journal.jsonl")
    first = await open_worktrees(repo, 1, run="r1", jobs=[a, b], state_path=state)
    kept = await edit(first, 0, b, "b.txt", "b\nedited\n")  # recorded below
    unrecorded = await edit(first, 0, a, "a.txt", "a\nfirst half\n")
    records = [{"item": "b.txt", "status": "ok", "commit": kept}]

    second = await open_worktrees(
        repo, 1, run="r2", jobs=[a, b], done=["b.txt"], records=records, state_path=state
    )
    assert second.places[0].tip == kept
    assert any(unrecorded[:12] in note for note in second.notes)
    rerun = await edit(second, 0, a, "a.txt", "a\nfirst half\nsecond half\n")
    landed, _ = await second.land([ok(a, rerun)])
    await second.close()

    landing = second.landing
    assert landing is not None
    assert files_at(repo, landing.branch) == {
        "a.txt": "a\nfirst half\nsecond half\n",
        "b.txt": "b\nedited\n",
    }
    assert [r.status for r in landed] == ["ok"]
