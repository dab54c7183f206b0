"""run_jobs: job scripts on leased instances, ordered by shared resources, on real processes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import attrs
import pytest

from aimcluster import ToolSpec, launch_cluster, tools
from aimcluster._core.jobs import Job, JobResult
from aimcluster._core.scheduler import run_jobs

pytestmark = pytest.mark.anyio

# A step that never ends would hang the test; this bounds each one instead.
STEP_TIMEOUT = 20.0


def fast_mock(tmp_path: Path) -> ToolSpec:
    # A short shutdown grace: a mock stuck in /sleep or /hang is SIGTERMed sooner.
    return attrs.evolve(tools.mock(cwd=tmp_path), shutdown_grace=0.5)


def py_write(path: Path, text: str) -> str:
    """A Python REPL step that appends a line to *path* (atomic: O_APPEND, one write)."""
    return f"open({str(path)!r}, 'a').write({text + chr(10)!r})"


def py_fifo_read(path: Path) -> str:
    return f"(lambda f: (f.read(), f.close())[0])(open({str(path)!r}))"


def py_fifo_write(path: Path) -> str:
    return f"(lambda f: (f.write('go'), f.close()))(open({str(path)!r}, 'w'))"


async def test_every_job_runs_its_steps_in_order_on_one_instance(tmp_path: Path) -> None:
    for name in ("a.py", "b.py", "c.py"):
        (tmp_path / name).write_text("x = 1\n")
    jobs = [
        Job(item=name, steps=[f"/add {name}", f"Add a DOC_ID header to {name}", f"/drop {name}"])
        for name in ("a.py", "b.py", "c.py")
    ]
    async with launch_cluster(fast_mock(tmp_path), 2) as cluster:
        results = [result async for result in run_jobs(cluster, jobs)]

    assert sorted(result.item for result in results) == ["a.py", "b.py", "c.py"]
    for result in results:
        name = result.item
        assert result.status == "ok"
        assert result.ok
        assert result.attempts == 1
        assert result.instance in (0, 1)
        assert result.error_type is None
        assert result.replies == (
            f"Added {name} to the chat",
            f"Added DOC_ID header to {name}",
            f"Removed {name} from the chat",
        )
        assert result.started_at <= result.ended_at
        assert (tmp_path / name).read_text().startswith("# DOC_ID: ")


async def test_conflicting_jobs_run_in_submission_order_and_never_hold_a_slot(
    tmp_path: Path,
) -> None:
    # Two instances. A, B and C share resource "r"; D is independent. A blocks on a FIFO
    # until D writes to it, so the run completes only if D runs while A does, that is, if
    # B and C (queued behind A) do not take the second instance while they wait.
    log = tmp_path / "log"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    jobs = [
        Job(
            item="A",
            resources=["r"],
            steps=[py_write(log, "A start"), py_fifo_read(fifo), py_write(log, "A end")],
        ),
        Job(item="B", resources=["r"], steps=[py_write(log, "B start"), py_write(log, "B end")]),
        Job(item="C", resources=["r"], steps=[py_write(log, "C start"), py_write(log, "C end")]),
        Job(item="D", resources=["d"], steps=[py_fifo_write(fifo)]),
    ]
    async with launch_cluster(tools.python(cwd=tmp_path), 2) as cluster:
        results = {r.item: r async for r in run_jobs(cluster, jobs, timeout=STEP_TIMEOUT)}

    assert {item: r.status for item, r in results.items()} == dict.fromkeys("ABCD", "ok")
    assert results["A"].replies[1] == "'go'"
    assert log.read_text().splitlines() == [
        "A start",
        "A end",
        "B start",
        "B end",
        "C start",
        "C end",
    ]
    a, b, c, d = (results[item] for item in "ABCD")
    # Serialised, in submission order ...
    assert a.ended_at <= b.started_at
    assert b.ended_at <= c.started_at
    # ... while the independent job overlapped the first of them.
    assert d.started_at < a.ended_at
    assert a.started_at < d.ended_at


async def test_jobs_on_one_item_are_serialised_by_default(tmp_path: Path) -> None:
    log = tmp_path / "log"
    jobs = [
        Job(item="same", steps=[py_write(log, f"{n} start"), py_write(log, f"{n} end")])
        for n in range(4)
    ]
    assert jobs[0].resources == ("same",)
    async with launch_cluster(tools.python(cwd=tmp_path), 4) as cluster:
        results = [r async for r in run_jobs(cluster, jobs, timeout=STEP_TIMEOUT)]

    assert [r.status for r in results] == ["ok"] * 4
    assert log.read_text().splitlines() == [
        f"{n} {edge}" for n in range(4) for edge in ("start", "end")
    ]


async def test_a_failed_job_is_retried_from_its_first_step(tmp_path: Path) -> None:
    jobs = [
        Job(item="crasher", steps=["/echo first", "/crash 7"]),
        Job(item="fine", steps=["/echo ok"]),
    ]
    async with launch_cluster(fast_mock(tmp_path), 2) as cluster:
        results = {r.item: r async for r in run_jobs(cluster, jobs, retries=1)}

    crasher = results["crasher"]
    assert crasher.status == "failed"
    assert crasher.attempts == 2
    assert crasher.error_type == "InstanceCrashedError"
    assert crasher.error is not None
    assert "code 7" in crasher.error
    # The replies of the last attempt, up to the step that failed.
    assert crasher.replies == ("first",)
    assert results["fine"].status == "ok"
    assert results["fine"].replies == ("ok",)


async def test_a_step_that_overruns_the_timeout_fails_the_job(tmp_path: Path) -> None:
    jobs = [Job(item="slow", steps=["/sleep 30"])]
    async with launch_cluster(fast_mock(tmp_path), 1) as cluster:
        results = [r async for r in run_jobs(cluster, jobs, timeout=0.2)]

    assert [(r.status, r.error_type) for r in results] == [("failed", "ReplyTimeoutError")]


async def test_stop_starts_nothing_new_and_lets_jobs_in_flight_finish(tmp_path: Path) -> None:
    jobs = [Job(item=str(n), steps=["/echo hi"]) for n in range(50)]
    async with launch_cluster(fast_mock(tmp_path), 2) as cluster:
        results: list[JobResult] = []
        async with run_jobs(cluster, jobs) as run:
            assert run.total == 50
            async for result in run:
                results.append(result)
                if len(results) == 1:
                    run.stop(grace=None)
                    assert run.stopping

    assert all(r.status == "ok" for r in results)
    # The jobs already started when stop() was called finished; the rest never started.
    assert len(results) + len(run.unstarted) == 50
    assert len(run.unstarted) > 0
    assert {job.item for job in run.unstarted}.isdisjoint(r.item for r in results)


async def test_stop_with_a_grace_period_cancels_jobs_still_running(tmp_path: Path) -> None:
    jobs = [Job(item="quick", steps=["/echo done"]), Job(item="stuck", steps=["/hang"])]
    async with launch_cluster(fast_mock(tmp_path), 2) as cluster:
        results = {}
        async with run_jobs(cluster, jobs) as run:
            async for result in run:
                results[result.item] = result
                run.stop(grace=0)

    assert results["quick"].status == "ok"
    stuck = results["stuck"]
    assert stuck.status == "cancelled"
    assert stuck.error_type == "Cancelled"
    assert stuck.instance in (0, 1)
    assert stuck.replies == ()


async def test_leaving_the_block_early_cancels_the_remaining_jobs(tmp_path: Path) -> None:
    jobs = [Job(item="first", steps=["/echo 1"])] + [
        Job(item=f"hang{n}", steps=["/hang"]) for n in range(3)
    ]
    async with launch_cluster(fast_mock(tmp_path), 4) as cluster:
        async with run_jobs(cluster, jobs) as run:
            async for result in run:
                assert result.item == "first"
                break
        # Leaving the block did not wait for the hung jobs, and no further result came.
        assert run.active == {}


async def test_run_jobs_validates_its_arguments(tmp_path: Path) -> None:
    async with launch_cluster(fast_mock(tmp_path), 1) as cluster:
        with pytest.raises(ValueError, match="retries must be >= 0, got -1"):
            run_jobs(cluster, [], retries=-1)
        with pytest.raises(ValueError, match="timeout must be > 0, got 0"):
            run_jobs(cluster, [], timeout=0)
        with pytest.raises(TypeError, match=r"jobs must be aimcluster\.Job objects, got 'x'"):
            run_jobs(cluster, ["x"])  # type: ignore[list-item]
        assert [r async for r in run_jobs(cluster, [])] == []


def test_job_needs_steps_as_a_sequence_of_strings() -> None:
    with pytest.raises(ValueError, match="a job needs at least one step"):
        Job(item="x", steps=[])
    with pytest.raises(TypeError, match="expected a sequence of strings, got the string"):
        Job(item="x", steps="/add x")
    job = Job(item="x", steps=["a"], key="k", resources=["r1", "r2"])
    assert job.steps == ("a",)
    assert job.resources == ("r1", "r2")
    assert job.key == "k"


class _FullDisk:
    """A workspace that fails as no workspace means to: with an error that is not aimcluster's."""

    async def prepare(self, job: Job, instance: int) -> None:
        raise OSError(28, "No space left on device")

    async def settle(self, job: Job, instance: int) -> str:
        raise AssertionError("settle runs only after prepare succeeded")


async def test_an_unexpected_error_in_a_job_is_raised_as_itself_not_in_a_group(
    tmp_path: Path,
) -> None:
    jobs = [Job(item="a", steps=["/echo hi"])]
    async with launch_cluster(fast_mock(tmp_path), 1) as cluster:
        with pytest.raises(OSError, match="No space left on device"):
            async for _result in run_jobs(cluster, jobs, workspace=_FullDisk()):
                pass
        # The cluster outlives the run that failed.
        assert (await cluster.send("/echo still here", timeout=STEP_TIMEOUT)).text == "still here"


# -- success checks ---------------------------------------------------------------------------


async def test_a_reply_the_tool_reports_as_a_failure_fails_the_job_at_that_step(
    tmp_path: Path,
) -> None:
    (tmp_path / "real.py").write_text("x = 1\n")
    jobs = [
        Job(item="ghost", steps=["/add ghost.py", "Add a DOC_ID header to ghost.py"]),
        Job(item="real", steps=["/add real.py", "/drop real.py"]),
    ]
    async with launch_cluster(fast_mock(tmp_path), 2) as cluster:
        results = {r.item: r async for r in run_jobs(cluster, jobs, timeout=STEP_TIMEOUT)}

    ghost = results["ghost"]
    assert ghost.status == "failed"
    assert ghost.error_type == "ReplyFailedError"
    assert ghost.failed_check == "fail_on"
    assert ghost.error == (
        "the reply to step 1 reports a failure (it matches '(?m)^No such file: '): "
        "'No such file: ghost.py'"
    )
    # The step after the failed one was not sent.
    assert ghost.replies == ("No such file: ghost.py",)
    assert ghost.output == "No such file: ghost.py"
    assert len(ghost.timings) == 1
    assert ghost.cwd == str(tmp_path)
    assert results["real"].status == "ok"
    assert results["real"].failed_check is None


async def test_fail_on_replaces_the_tools_own_failure_replies(tmp_path: Path) -> None:
    jobs = [
        Job(item="ghost", steps=["/add ghost.py"]),
        Job(item="parse", steps=["/echo Parse error near 'x'"]),
    ]
    async with launch_cluster(fast_mock(tmp_path), 1) as cluster:
        results = {r.item: r async for r in run_jobs(cluster, jobs, fail_on=["Parse error"])}

    assert results["ghost"].status == "ok"
    assert results["parse"].status == "failed"
    assert results["parse"].error_type == "ReplyFailedError"
    with pytest.raises(ValueError, match=r"fail_on: not a valid regex: '\('"):
        async with launch_cluster(fast_mock(tmp_path), 1) as cluster:
            run_jobs(cluster, jobs, fail_on=["("])


async def test_verify_runs_in_the_instance_directory_and_a_non_zero_exit_fails_the_job(
    tmp_path: Path,
) -> None:
    for index in (0, 1):
        (tmp_path / f"instance-{index}").mkdir()
    spec = attrs.evolve(fast_mock(tmp_path), cwd=str(tmp_path / "instance-{instance}"))
    check = "import os, sys; print('in', os.getcwd()); sys.exit(int(sys.argv[1]))"
    jobs = [
        Job(item="good", steps=["/echo hi"], verify=[sys.executable, "-c", check, "0"]),
        Job(item="bad", steps=["/echo hi"], verify=[sys.executable, "-c", check, "3"]),
    ]
    async with launch_cluster(spec, 2) as cluster:
        results = {r.item: r async for r in run_jobs(cluster, jobs, timeout=STEP_TIMEOUT)}

    good, bad = results["good"], results["bad"]
    assert good.status == "ok"
    assert good.verify is not None
    assert good.verify.exit_code == 0
    assert good.verify.output == f"in {good.cwd}\n"
    assert bad.status == "failed"
    assert bad.error_type == "VerifyFailedError"
    assert bad.failed_check == "verify"
    assert bad.error is not None
    assert bad.error.endswith("exited with code 3")
    assert bad.cwd == str(tmp_path / f"instance-{bad.instance}")
    assert bad.output == f"in {bad.cwd}\n"
    assert bad.replies == ("hi",)


async def test_a_verify_command_that_overruns_is_killed_with_what_it_started(
    tmp_path: Path,
) -> None:
    # The shell leaves a grandchild behind it; the autouse fixture fails the test if it lives.
    jobs = [Job(item="slow", steps=["/echo hi"], verify=["sh", "-c", "sleep 60 & sleep 60"])]
    async with launch_cluster(fast_mock(tmp_path), 1) as cluster:
        results = [r async for r in run_jobs(cluster, jobs, timeout=0.5)]

    (slow,) = results
    assert slow.status == "failed"
    # The command as a shell would take it back: the argument with spaces stays one.
    assert slow.error == (
        "the verify command \"sh -c 'sleep 60 & sleep 60'\": it did not finish within 0.5 s"
    )
    assert slow.verify is not None
    assert slow.verify.exit_code is None


async def test_a_verify_command_that_cannot_start_fails_the_job(tmp_path: Path) -> None:
    jobs = [Job(item="x", steps=["/echo hi"], verify=[str(tmp_path / "missing")])]
    async with launch_cluster(fast_mock(tmp_path), 1) as cluster:
        (result,) = [r async for r in run_jobs(cluster, jobs)]

    assert result.status == "failed"
    assert result.error == (
        f"the verify command {str(tmp_path / 'missing')!r}: it could not be started: "
        "No such file or directory"
    )


async def test_a_verify_command_is_done_when_it_exits_not_when_its_output_closes(
    tmp_path: Path,
) -> None:
    # The shell exits 0 at once but leaves a child holding its output open: the verify is
    # over when the shell exits, and the child is killed with the group.
    verify = ["sh", "-c", "echo checked; sleep 60 & exit 0"]
    jobs = [Job(item="x", steps=["/echo hi"], verify=verify)]
    async with launch_cluster(fast_mock(tmp_path), 1) as cluster:
        (result,) = [r async for r in run_jobs(cluster, jobs, timeout=STEP_TIMEOUT)]

    assert result.status == "ok", result.error
    assert result.verify is not None
    assert result.verify.exit_code == 0
    assert result.verify.output == "checked\n"


async def test_a_job_stopped_half_way_leaves_nothing_in_the_tool_for_the_next_job(
    tmp_path: Path,
) -> None:
    # The first job fails at its second step, so its /drop is never sent. Before, its file
    # stayed in the agent's chat, and the next job on that instance edited it too.
    (tmp_path / "a.txt").write_text("a\n")
    jobs = [
        Job(item="a.txt", steps=["/add a.txt", "fail now", "/drop a.txt"]),
        Job(item="b", steps=["/ls"]),
    ]
    async with launch_cluster(fast_mock(tmp_path), 1) as cluster:
        results = [r async for r in run_jobs(cluster, jobs, fail_on=[r"^echo: fail"])]
        restarts = cluster.metrics().restarts
    assert [r.status for r in results] == ["failed", "ok"]
    assert results[1].replies == ("No files in the chat",)
    assert restarts == 1
