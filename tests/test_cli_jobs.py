"""``aimcluster run`` and ``show``: job identity, success checks, transcripts, rough edges."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from aimcluster._cli.demo import verify_project
from tests.test_cli import TIMEOUT, backends, invoke, project, records, run_args


def items_file(tmp_path: Path, *names: str) -> str:
    path = tmp_path / "items.txt"
    path.write_text("".join(f"{name}\n" for name in names))
    return str(path)


def echo_run(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "run",
        "-t",
        "mock",
        "-n",
        "2",
        "--items-file",
        items_file(tmp_path, "a", "b", "c"),
        "--journal",
        str(tmp_path / "j.jsonl"),
        "--progress",
        "none",
        *extra,
    ]


# -- job identity -----------------------------------------------------------------------------


@backends
def test_a_changed_step_runs_again_the_items_another_job_finished(
    tmp_path: Path, backend: str
) -> None:
    first = invoke(*echo_run(tmp_path, "-s", "/echo one {item}"), backend=backend)
    assert first.exit_code == 0, first.output

    second = invoke(*echo_run(tmp_path, "-s", "/echo two {item}"), backend=backend)

    assert second.exit_code == 0, second.output
    assert (
        "aimcluster: note: 3 items ran before with other steps or options: running them again"
        in (second.stderr)
    )
    replies = sorted(r["replies"][0] for r in records(tmp_path / "j.jsonl")[3:])
    assert replies == ["two a", "two b", "two c"]

    third = invoke(*echo_run(tmp_path, "-s", "/echo two {item}"), backend=backend)

    assert third.exit_code == 0
    assert "Nothing to do: all 3 items are already done" in third.stdout
    assert len(records(tmp_path / "j.jsonl")) == 6


def test_the_tool_and_the_checks_are_part_of_the_job(tmp_path: Path) -> None:
    base = ["-s", "/echo {item}"]
    assert invoke(*echo_run(tmp_path, *base)).exit_code == 0

    args = echo_run(tmp_path, *base)
    args[args.index("mock")] = "mock --delay 0.001"
    other_tool = invoke(*args)
    other_check = invoke(*echo_run(tmp_path, *base, "--fail-on", "nothing-matches-this"))

    assert other_tool.exit_code == 0
    assert "3 items ran before" in other_tool.stderr
    assert other_check.exit_code == 0
    assert "3 items ran before" in other_check.stderr
    jobs = [r["job"] for r in records(tmp_path / "j.jsonl")]
    # Three jobs on each of three items: nine different jobs.
    assert len(set(jobs)) == 9


def test_records_from_before_fingerprints_count_as_another_job(tmp_path: Path) -> None:
    old = {"v": 1, "run": "r0", "status": "ok", "steps": ["/echo {item}"], "replies": ["x"]}
    journal = tmp_path / "j.jsonl"
    journal.write_text("".join(json.dumps({**old, "item": name}) + "\n" for name in "abc"))

    result = invoke(*echo_run(tmp_path, "-s", "/echo {item}"))

    assert result.exit_code == 0, result.output
    assert "3 items ran before with other steps or options" in result.stderr
    assert [r["status"] for r in records(journal)[3:]] == ["ok"] * 3


# -- success checks ---------------------------------------------------------------------------


@backends
def test_a_reply_matching_fail_on_fails_the_item_and_a_resume_runs_it_again(
    tmp_path: Path, backend: str
) -> None:
    args = echo_run(tmp_path, "-s", "/echo {item} is Parse error? no", "--fail-on", r"^b is Parse")

    result = invoke(*args, backend=backend)

    assert result.exit_code == 1
    lines = records(tmp_path / "j.jsonl")
    assert sorted((r["item"], r["status"]) for r in lines) == [
        ("a", "ok"),
        ("b", "failed"),
        ("c", "ok"),
    ]
    (failed,) = [r for r in lines if r["status"] == "failed"]
    assert failed["error"]["type"] == "ReplyFailedError"
    assert failed["output"] == "b is Parse error? no"
    # The summary's failure table shows the tool's last lines.
    assert "| b is Parse error? no" in result.stdout

    again = invoke(*args, backend=backend)

    assert again.exit_code == 1
    assert [r["item"] for r in records(tmp_path / "j.jsonl")[3:]] == ["b"]


def test_a_reply_the_tool_reports_as_a_failure_fails_by_default(tmp_path: Path) -> None:
    (tmp_path / "real.py").write_text("x = 1\n")
    args = [
        "run",
        "-t",
        "mock",
        "--cwd",
        str(tmp_path),
        "--items-file",
        items_file(tmp_path, "real.py", "weird/sp ace.py"),
        "-s",
        "/add {item}",
        "-s",
        "/drop {item}",
        "--progress",
        "none",
    ]

    result = invoke(*args, "--journal", str(tmp_path / "j1.jsonl"))
    opted_out = invoke(*args, "--journal", str(tmp_path / "j2.jsonl"), "--no-default-fail-on")

    assert result.exit_code == 1
    statuses = {r["item"]: (r["status"], r["error"]) for r in records(tmp_path / "j1.jsonl")}
    assert statuses["real.py"] == ("ok", None)
    assert statuses["weird/sp ace.py"][0] == "failed"
    assert statuses["weird/sp ace.py"][1]["message"] == (
        "the reply to step 1 reports a failure (it matches '(?m)^No such file: '): "
        "'No such file: weird/sp'"
    )
    assert opted_out.exit_code == 0, opted_out.output


@backends
def test_a_failing_verify_fails_the_item_keeps_its_output_and_show_prints_it(
    tmp_path: Path, backend: str
) -> None:
    root, originals = project(tmp_path, 6)
    journal = tmp_path / "j.jsonl"
    check = (
        "import sys; text = open(sys.argv[1]).read(); print('checked', sys.argv[1]); "
        "sys.exit(sys.argv[1].endswith('_003.py') or 'DOC_ID' not in text)"
    )
    verify = f"{sys.executable} -c {json.dumps(check)} {{item}}"

    result = invoke(*run_args(root, journal, "--verify", verify), backend=backend)

    assert result.exit_code == 1, result.output
    assert verify_project(root, originals).ok
    by_item = {r["item"]: r for r in records(journal)}
    bad = by_item["pkg/module_003.py"]
    assert bad["status"] == "failed"
    assert bad["error"]["type"] == "VerifyFailedError"
    assert bad["verify"]["exit_code"] == 1
    assert bad["verify"]["output"] == "checked pkg/module_003.py\n"
    assert bad["cwd"] == str(root)
    good = by_item["pkg/module_001.py"]
    assert good["verify"]["exit_code"] == 0
    assert good["verify"]["output"] is None
    assert "| checked pkg/module_003.py" in result.stdout

    shown = invoke("show", "pkg/module_003.py", "--journal", str(journal))
    failed = invoke("show", "--failed", "--journal", str(journal))

    assert shown.exit_code == 0, shown.output
    text = shown.stdout
    assert "status   failed (attempts: 1)" in text
    assert f", in {root}" in text
    assert "step 1 (" in text
    assert "): /add pkg/module_003.py\n    Added pkg/module_003.py to the chat\n" in text
    assert "    Added DOC_ID header to pkg/module_003.py\n" in text
    assert "-> exit code 1\n    checked pkg/module_003.py\n" in text
    assert failed.exit_code == 0
    assert failed.stdout.splitlines()[0].startswith(
        "pkg/module_003.py  VerifyFailedError: the verify command "
    )
    assert failed.stdout.splitlines()[1] == "    | checked pkg/module_003.py"
    assert failed.stdout.splitlines()[-1] == (
        f"1 item failed in {journal} ('aimcluster show ITEM' prints one)"
    )

    resumed = invoke(*run_args(root, journal, "--verify", verify), backend=backend)

    assert resumed.exit_code == 1
    assert [r["item"] for r in records(journal)[6:]] == ["pkg/module_003.py"]


def test_show_reports_a_missing_item_or_journal(tmp_path: Path) -> None:
    missing = invoke("show", "x", "--journal", str(tmp_path / "none.jsonl"))
    (tmp_path / "j.jsonl").write_text("")
    unknown = invoke("show", "x", "--journal", str(tmp_path / "j.jsonl"))
    bare = invoke("show", "--journal", str(tmp_path / "j.jsonl"))

    assert missing.exit_code == 2
    assert missing.stderr == (
        f"aimcluster: error: no journal at {tmp_path / 'none.jsonl'} (pass --journal PATH)\n"
    )
    assert unknown.exit_code == 2
    assert (
        unknown.stderr
        == f"aimcluster: error: the journal {tmp_path / 'j.jsonl'} has no record of 'x'\n"
    )
    assert bare.exit_code == 2


def test_show_prints_a_crashed_jobs_last_output_inertly(tmp_path: Path) -> None:
    result = invoke(*echo_run(tmp_path, "-s", "/echo \x1b[31m{item}", "-s", "/crash 5"))
    assert result.exit_code == 1

    shown = invoke("show", "a", "--journal", str(tmp_path / "j.jsonl"))

    assert "\x1b" not in shown.stdout
    assert "    \\x1b[31ma\n" in shown.stdout
    assert "error    InstanceCrashedError: " in shown.stdout


# -- rough edges ------------------------------------------------------------------------------


def test_dry_run_shows_the_jobs_and_what_is_done_and_starts_nothing(tmp_path: Path) -> None:
    assert invoke(*echo_run(tmp_path, "-s", "/echo {item}", "--limit", "1")).exit_code == 0
    before = (tmp_path / "j.jsonl").read_bytes()
    done = records(tmp_path / "j.jsonl")[0]["item"]

    result = invoke(*echo_run(tmp_path, "-s", "/echo {item}", "-s", "ok {item!r}", "--dry-run"))
    same = invoke(*echo_run(tmp_path, "-s", "/echo {item}", "--dry-run", "--limit", "1"))

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "run   a",
        "  step 1: /echo a",
        "  step 2: ok 'a'",
        "run   b",
        "  step 1: /echo b",
        "  step 2: ok 'b'",
        "run   c",
        "  step 1: /echo c",
        "  step 2: ok 'c'",
        "Dry run: 3 jobs would run, 0 already done; nothing was started.",
    ]
    assert same.stdout.splitlines()[-2:] == [
        f"skip  {done} (already done)",
        "Dry run: 1 job would run, 1 already done, 1 held back by --limit; nothing was started.",
    ]
    assert (tmp_path / "j.jsonl").read_bytes() == before


def test_limit_and_exclude_choose_the_jobs(tmp_path: Path) -> None:
    root, _ = project(tmp_path, 12)
    journal = tmp_path / "j.jsonl"

    # Without a '/', a glob also matches the file name; with one, the whole path.
    excludes = ["--exclude", "module_00[0-7]*", "--exclude", "pkg/*1.py"]

    result = invoke(*run_args(root, journal, *excludes, "--limit", "2"))

    assert result.exit_code == 0, result.output
    assert sorted(r["item"] for r in records(journal)) == ["pkg/module_008.py", "pkg/module_009.py"]
    assert "aimcluster: note: --limit 2: 1 more to do wait for the next run\n" in result.stderr
    # The item held back is counted, as not started by this run; the run does not claim
    # that every item is done.
    assert "3 total: 2 ok, 0 failed, 1 held back by --limit" in result.stdout
    assert "All items done." not in result.stdout
    assert "This run's jobs are done; 1 item held back by --limit is left." in result.stdout

    rest = invoke(*run_args(root, journal, *excludes))

    assert rest.exit_code == 0
    assert [r["item"] for r in records(journal)[2:]] == ["pkg/module_010.py"]
    every = invoke(*run_args(root, journal, "--exclude", "**/*.py"))
    assert every.exit_code == 2
    assert every.stderr == "aimcluster: error: every one of the 12 items matched --exclude\n"


def test_format_specs_and_conversions_work_in_steps(tmp_path: Path) -> None:
    result = invoke(*echo_run(tmp_path, "-s", "/echo {item!r} [{item:>3}] {key: value}"))
    bad = invoke(*echo_run(tmp_path, "-s", "/echo {item:d}"))

    assert result.exit_code == 0, result.output
    replies = {r["item"]: r["replies"] for r in records(tmp_path / "j.jsonl")}
    assert replies["a"] == ["'a' [  a] {key: value}"]
    assert bad.exit_code == 2
    assert bad.stderr == (
        f"aimcluster: error: step 1, item 'a' ({tmp_path / 'items.txt'}:1): "
        "{item:d}: Unknown format code 'd' for object of type 'str'\n"
    )


def test_a_report_that_cannot_be_written_is_found_before_any_work(tmp_path: Path) -> None:
    report = tmp_path / "no" / "such" / "dir" / "report.json"

    result = invoke(*echo_run(tmp_path, "-s", "/echo {item}", "--report", str(report)))

    assert result.exit_code == 2
    assert result.stderr == (
        f"aimcluster: error: cannot write the report {report}: No such file or directory\n"
    )
    assert not (tmp_path / "j.jsonl").exists()


def test_the_restart_budget_options_reach_the_cluster(tmp_path: Path) -> None:
    args = echo_run(tmp_path, "-s", "/crash 3")
    args[args.index("-n") + 1] = "1"

    result = invoke(*args, "--max-restarts", "0", "--restart-window", "60")

    assert result.exit_code == 1
    errors = [r["error"]["type"] for r in records(tmp_path / "j.jsonl")]
    # The first crash spends the budget of 0: the only instance is given up.
    assert errors == ["InstanceCrashedError", "NoHealthyInstancesError", "NoHealthyInstancesError"]


def test_a_journal_that_cannot_grow_is_named(tmp_path: Path) -> None:
    root, _ = project(tmp_path, 20)
    journal = tmp_path / "j.jsonl"

    def limit_file_size() -> None:
        # Python ignores SIGXFSZ: a write past the limit fails with EFBIG instead.
        resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))

    completed = subprocess.run(
        [sys.executable, "-m", "aimcluster", *run_args(root, journal, "-n", "1")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        preexec_fn=limit_file_size,
        check=False,
    )

    assert completed.returncode == 1, completed.stderr
    assert f"aimcluster: error: cannot write the journal {journal}: File too large\n" in (
        completed.stderr
    )


@pytest.mark.parametrize("option", ["--help"])
def test_run_help_documents_the_exit_codes_and_the_default_timeout(option: str) -> None:
    result = invoke("run", option)
    text = " ".join(result.stdout.split())
    assert "3 the tool did not start" in text
    assert "else 600]" in text


def test_an_item_this_job_already_tried_is_not_announced_as_changed(tmp_path: Path) -> None:
    assert invoke(*echo_run(tmp_path, "-s", "/echo {item}")).exit_code == 0
    changed = echo_run(tmp_path, "-s", "/echo {item} again", "--fail-on", "^b again")

    first = invoke(*changed)
    resumed = invoke(*changed)

    assert first.exit_code == 1
    assert "3 items ran before with other steps" in first.stderr
    assert resumed.exit_code == 1
    # b failed as this very job: running it again is a plain resume, not a changed job.
    assert "ran before" not in resumed.stderr
    assert [r["item"] for r in records(tmp_path / "j.jsonl")[6:]] == ["b"]


def test_run_help_says_what_the_journal_skips_and_which_tools_report_a_cost() -> None:
    result = invoke("run", "--help")

    text = " ".join(result.stdout.split())
    assert "the next run skips the items done there by the same job" in text
    assert "(claude, aider; codex and gemini report no cost)" in text


@pytest.mark.parametrize(
    "line",
    [
        '{"item": "b", "status": "failed", "error": "boom"}',
        '{"item": ["b"], "status": "ok"}',
        '{"item": "b", "status": 3}',
        '{"item": "b", "status": "failed", "steps": "/echo b", "replies": {"x": 1}}',
        '{"item": "b", "status": "failed", "timings": ["1s"], "steps": ["/echo b"]}',
        '{"item": "b", "status": "failed", "verify": {"argv": "sh", "exit_code": 1}}',
    ],
)
def test_hand_edited_journal_lines_of_the_wrong_shape_are_bad_lines(
    tmp_path: Path, line: str
) -> None:
    assert invoke(*echo_run(tmp_path, "-s", "/echo {item}")).exit_code == 0
    journal = tmp_path / "j.jsonl"
    with journal.open("a") as file:
        file.write(line + "\n")

    failed = invoke("show", "--failed", "--journal", str(journal))
    one = invoke("show", "b", "--journal", str(journal))
    again = invoke(*echo_run(tmp_path, "-s", "/echo {item}"))

    for result in (failed, one, again):
        assert result.exit_code == 0, result.output
    assert failed.stdout.startswith("0 items failed in ")
    assert "status   ok" in one.stdout
    assert "Nothing to do" in again.stdout
    assert "the journal" in again.stderr
    assert "(line 4); they are ignored" in again.stderr
