"""Compare: the same jobs on several tools, side by side, each tool in working places of its own.

Three tools that differ, all real processes: the bundled mock agent (edits every file right),
and a throwaway aider look-alike written here in two modes: ``sloppy`` writes a wrong DOC_ID
into odd-numbered files (the item's verify command fails them), ``picky`` refuses every third
file with a reply that the tool's failure patterns catch. Both report a cost per edit, as aider
does, and log each edit they make, so that a job that ran twice is seen.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

from aimcluster import Job, Pool, ToolSpec, compare_jobs, launch_cluster, tools
from aimcluster._base.usage import aider_usage
from aimcluster._cli.demo import DEMO_STEPS, expected_content, make_project
from tests.test_cli import (
    CliProcess,
    backends,
    cli_process,  # noqa: F401 (a fixture)
    descendants,
    invoke,
    wait_gone,
)

FILES = 20

FAKE_AGENT = r"""
import hashlib, re, sys

mode, log = sys.argv[1], sys.argv[2]
chat = []

def write(text):
    sys.stdout.write(text)
    sys.stdout.flush()

def header(path, number):
    right = hashlib.sha256(path.encode()).hexdigest()[:12]
    if mode == "sloppy" and number % 2:
        return "000000000000"
    return right

write("fake-agent ready\n> ")
for line in sys.stdin:
    line = line.rstrip("\n")
    if line.startswith("/add "):
        # A job that failed never sent its /drop: the chat holds this job's file alone.
        chat = [line[5:]]
        reply = f"Added {line[5:]} to the chat"
    elif line.startswith("/drop "):
        chat = [path for path in chat if path != line[6:]]
        reply = f"Removed {line[6:]} from the chat"
    elif line == "/exit":
        break
    elif "DOC_ID" in line:
        replies = []
        for path in chat:
            number = int(re.search(r"(\d+)\.py$", path).group(1))
            with open(log, "a") as file:
                file.write(f"{path}\n")
            if mode == "picky" and number % 3 == 0:
                replies.append(f"Could not edit {path}: refused")
                continue
            with open(path, "rb") as file:
                data = file.read()
            eol = b"\r\n" if b"\r\n" in data else b"\n"
            line = f"# DOC_ID: {header(path, number)}".encode() + eol
            if data.startswith(b"#!"):
                first, rest = data.split(b"\n", 1)
                data = first + b"\n" + line + rest
            else:
                data = line + data
            with open(path, "wb") as file:
                file.write(data)
            replies.append(f"Added DOC_ID header to {path}")
        cost = "0.02" if mode == "sloppy" else "0.01"
        replies.append(f"Tokens: 1.2k sent, 150 received. Cost: ${cost} message, ${cost} session.")
        reply = "\n".join(replies)
    else:
        reply = f"echo: {line}"
    write(reply + "\n> ")
"""

CHECK = r"""
import hashlib, sys

path = sys.argv[1]
want = "# DOC_ID: " + hashlib.sha256(path.encode()).hexdigest()[:12]
with open(path, encoding="utf-8", newline="") as file:
    head = [file.readline().rstrip("\r\n") for _ in range(2)]
sys.exit(0 if want in head else 1)
"""


def number_of(item: str) -> int:
    match = re.search(r"(\d+)\.py$", item)
    assert match is not None
    return int(match.group(1))


def expected_pass(tool: str, item: str) -> bool:
    """The verdict each tool must get on each item."""
    number = number_of(item)
    if tool == "sloppy":
        return number % 2 == 0
    if tool == "picky":
        return number % 3 != 0
    return True


def expected_check(tool: str, item: str) -> str | None:
    if expected_pass(tool, item):
        return None
    return "verify" if tool == "sloppy" else "fail_on"


@attrs.frozen
class Fakes:
    script: Path
    check: Path
    logs: Path

    def argv(self, mode: str) -> list[str]:
        return [sys.executable, "-u", str(self.script), mode, str(self.logs / f"{mode}.log")]

    def spec_file(self, mode: str) -> str:
        path = self.logs.parent / f"{mode}.toml"
        lines = [
            f"name = {json.dumps(mode)}",
            f"argv = {json.dumps(self.argv(mode))}",
            'ready = "> "',
            f"failure_replies = {json.dumps(list(tools.mock().failure_replies))}",
        ]
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    def edits(self, mode: str) -> list[str]:
        """Each edit *mode* made, in order: the paths it logged."""
        path = self.logs / f"{mode}.log"
        return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def fakes(tmp_path: Path) -> Fakes:
    script = tmp_path / "fake_agent.py"
    script.write_text(FAKE_AGENT)
    check = tmp_path / "check.py"
    check.write_text(CHECK)
    logs = tmp_path / "logs"
    logs.mkdir()
    return Fakes(script, check, logs)


def fake_spec(fakes: Fakes, mode: str, cwd: Path) -> ToolSpec:
    return attrs.evolve(
        tools.mock(cwd=str(cwd)), name=mode, argv=fakes.argv(mode), usage=aider_usage
    )


def demo_jobs(items: list[str], check: Path) -> list[Job]:
    return [
        Job(
            item=item,
            steps=tuple(step.format(item=item) for step in DEMO_STEPS),
            verify=(sys.executable, str(check), item),
        )
        for item in items
    ]


# -- the library ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_compare_jobs_runs_each_job_once_on_each_tool_and_puts_them_side_by_side(
    tmp_path: Path, fakes: Fakes
) -> None:
    # Each tool edits a copy of its own: the tools' edits of one file would collide.
    places = {name: tmp_path / name for name in ("mock", "sloppy", "picky")}
    originals = {name: make_project(place, FILES) for name, place in places.items()}
    items = sorted(originals["mock"])
    pools = [
        Pool(tools.mock(cwd=str(places["mock"])), 2),
        Pool(fake_spec(fakes, "sloppy", places["sloppy"]), 1),
        Pool(fake_spec(fakes, "picky", places["picky"]), 2),
    ]

    async with launch_cluster(pools) as cluster:
        seen = []
        async with compare_jobs(cluster, demo_jobs(items, fakes.check)) as run:
            assert run.total == 3 * FILES
            async for result in run:
                seen.append((result.item, result.tool))
        comparison = run.comparison

    # Each job ran once on each tool, on that tool's instances only, never moved.
    assert sorted(seen) == sorted((item, tool) for item in items for tool in places)
    assert sorted(fakes.edits("sloppy")) == items
    assert sorted(fakes.edits("picky")) == items
    assert comparison.tools == ("mock", "sloppy", "picky")
    assert [job.item for job in comparison.jobs] == items
    for item in items:
        for tool in comparison.tools:
            result = comparison.result(item, tool)
            assert result is not None
            assert (result.tool, result.failovers, result.attempts) == (tool, (), 1)
            assert result.ok is expected_pass(tool, item), (item, tool, result.error)
            assert cell_check(comparison.as_dict(), item, tool) == expected_check(tool, item)
    totals = comparison.totals()
    assert [totals[t].passed for t in comparison.tools] == [20, 10, 13]
    assert [totals[t].failed for t in comparison.tools] == [0, 10, 7]
    assert [totals[t].attempts for t in comparison.tools] == [20, 20, 20]
    assert totals["mock"].usage is None
    assert totals["sloppy"].usage is not None
    assert totals["picky"].usage is not None
    assert totals["sloppy"].usage.cost_usd == pytest.approx(0.40)
    assert totals["picky"].usage.cost_usd == pytest.approx(0.20)
    assert all(totals[t].median_elapsed is not None for t in comparison.tools)
    # The tools worked in their own places: the mock's copy is all right, sloppy's half.
    for item in items:
        assert (places["mock"] / item).read_bytes() != originals["mock"][item]


def cell_check(report: dict[str, object], item: str, tool: str) -> object:
    rows = report["items"]
    assert isinstance(rows, list)
    row = next(row for row in rows if row["item"] == item)
    return row["results"][tool]["failed_check"]


@pytest.mark.anyio
async def test_compare_refuses_pools_that_would_move_a_job_to_another_tool() -> None:
    job = Job(item="a", steps=("/echo a",))
    pools = [Pool("mock", 1), Pool("mock", 1, name="other"), Pool("mock", 1, name="third")]
    async with launch_cluster(pools, fallback=["other", "third"]) as cluster:
        with pytest.raises(ValueError, match=r"failover order.*: other, third$"):
            compare_jobs(cluster, [job])
        with pytest.raises(ValueError, match="no pool 'any'"):
            compare_jobs(cluster, [job], ["mock", "any"])
        with pytest.raises(ValueError, match="names the tool 'mock'"):
            compare_jobs(cluster, [attrs.evolve(job, tool="mock")], ["mock"])
        # A pool outside the failover order is compared.
        results = [result async for result in compare_jobs(cluster, [job], ["mock"])]
    assert [(r.tool, r.replies, r.failovers) for r in results] == [("mock", ("a",), ())]


@pytest.mark.anyio
async def test_on_each_tool_the_jobs_on_one_item_keep_their_order() -> None:
    jobs = [Job(item="x", steps=(f"/echo {n}",)) for n in range(3)]
    async with launch_cluster([Pool("mock", 2), Pool("mock", 2, name="other")]) as cluster:
        ended = [(result.tool, result.replies) async for result in compare_jobs(cluster, jobs)]
    for tool in ("mock", "other"):
        assert [replies for t, replies in ended if t == tool] == [("0",), ("1",), ("2",)]


# -- the command line: worktrees, a branch per tool, the table and the report -----------------


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        capture_output=True,
        check=True,
    )
    return os.fsdecode(done.stdout)


def repo_with_project(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "repo"
    originals = make_project(root, FILES)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "start")
    return root, originals


@backends
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_run_compare_runs_20_items_on_3_tools_in_worktrees_with_a_side_by_side_report(
    tmp_path: Path, fakes: Fakes, backend: str
) -> None:
    root, originals = repo_with_project(tmp_path)
    head = git(root, "rev-parse", "HEAD").strip()
    current = git(root, "rev-parse", "--abbrev-ref", "HEAD").strip()
    report = tmp_path / "report.json"
    steps = [arg for step in DEMO_STEPS for arg in ("--step", step)]

    result = invoke(
        "run",
        "--compare",
        "--tool",
        "mock=2",
        "--tool",
        f"{fakes.spec_file('sloppy')}=1",
        "--tool",
        f"{fakes.spec_file('picky')}=2",
        "--cwd",
        str(root),
        "pkg/*.py",
        *steps,
        "--verify",
        f"{sys.executable} {fakes.check} {{item}}",
        "--report",
        str(report),
        "--progress",
        "none",
        backend=backend,
    )

    # Some tools failed some items: the comparison ran, and says so.
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    data = json.loads(report.read_text())
    compare = data["compare"]
    items = sorted(originals)
    assert compare["tools"] == ["mock", "sloppy", "picky"]
    assert [row["item"] for row in compare["items"]] == items
    for row in compare["items"]:
        for tool in compare["tools"]:
            cell = row["results"][tool]
            assert cell["passed"] is expected_pass(tool, row["item"]), (row["item"], tool, cell)
            assert cell["failed_check"] == expected_check(tool, row["item"])
            assert cell["attempts"] == 1
            assert (cell["commit"] is not None and cell["commit"] != "") is cell["passed"]
    totals = compare["totals"]
    assert {t: totals[t]["passed"] for t in totals} == {"mock": 20, "sloppy": 10, "picky": 13}
    # Nothing ran twice: each fake edited each file once.
    assert sorted(fakes.edits("sloppy")) == items
    assert sorted(fakes.edits("picky")) == items

    # Each tool's results on a branch of its own, from the commit the run started at, with
    # one commit per item that passed there; the user's tree untouched.
    run_id = data["run"]
    branches = compare["branches"]
    for tool in compare["tools"]:
        branch = f"aimcluster/run-{run_id}-{tool}"
        assert branches[tool] == branch
        log = git(root, "log", "--format=%s", f"{head}..{branch}").splitlines()
        passed = [item for item in items if expected_pass(tool, item)]
        assert sorted(log) == sorted(f"aimcluster: {item}" for item in passed)
        for item in items:
            content = subprocess.run(
                ["git", "show", f"{branch}:{item}"], cwd=root, capture_output=True, check=True
            ).stdout
            original = originals[item]
            wanted = expected_content(item, original) if expected_pass(tool, item) else original
            assert content == wanted, (tool, item)
    assert git(root, "status", "--porcelain") == ""
    # The worktrees are gone, and the instance branches with them (all they held landed).
    assert git(root, "worktree", "list", "--porcelain").count("worktree ") == 1
    left = git(root, "branch", "--format=%(refname:short)").split()
    assert sorted(left) == sorted([current, *branches.values()])

    # The side-by-side table: a row per item, a column per tool, the totals below.
    out = result.stdout
    for tool, branch in branches.items():
        assert f"{tool}: results on {branch}\n" in out
    header = next(line for line in out.splitlines() if " item " in line)
    assert header.index("mock") < header.index("sloppy") < header.index("picky")
    row = next(line for line in out.splitlines() if "pkg/module_003.py" in line)
    assert re.search(r"pass .*FAIL verify .*FAIL fail_on", row), row
    passed = next(line for line in out.splitlines() if "passed" in line)
    assert re.search(r"20/20 .*10/20 .*13/20", passed), passed


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_run_compare_refuses_the_options_it_cannot_honour_before_any_work(
    tmp_path: Path,
) -> None:
    root, _ = repo_with_project(tmp_path)

    result = invoke(
        "run",
        "--compare",
        "--tool",
        "mock",
        "--tool",
        "python",
        "--cwd",
        str(root),
        "pkg/*.py",
        "--step",
        "x",
        "--limit",
        "2",
        "--fallback",
        "python,mock",
    )

    assert result.exit_code == 2
    assert (
        "--compare runs every job once on each tool, in worktrees, and keeps no journal: "
        "--fallback, --limit cannot be used with it"
    ) in result.stderr
    assert git(root, "branch", "--format=%(refname:short)").split() == [
        git(root, "rev-parse", "--abbrev-ref", "HEAD").strip()
    ]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_ctrl_c_stops_a_compare_run_gracefully_and_says_so(
    tmp_path: Path,
    fakes: Fakes,
    cli_process: Callable[..., CliProcess],  # noqa: F811 (the fixture imported above)
) -> None:
    root, _originals = repo_with_project(tmp_path)
    steps = [arg for step in DEMO_STEPS for arg in ("--step", step)]
    cli_run = cli_process(
        *("run", "--compare", "--tool", "mock --delay 0.3=1"),
        *("--tool", f"{fakes.spec_file('sloppy')}=1", "--grace", "30", *steps, "pkg/**/*.py"),
        cwd=root,
    )
    cli_run.wait_for_line(lambda line: line.startswith("[1/"))
    agents = descendants(cli_run.process.pid)

    cli_run.process.send_signal(signal.SIGINT)
    code = cli_run.finish()

    errors = "".join(cli_run.stderr)
    assert code == 130, cli_run.output + errors
    assert "[stop] SIGINT: starting no new jobs; waiting up to 30 s" in errors
    assert "Traceback" not in errors
    assert wait_gone(agents) == []


def test_an_item_name_with_control_characters_is_shown_inert_in_the_table() -> None:
    from rich.console import Console

    from aimcluster import Comparison
    from aimcluster._cli.compare import render_comparison

    # A file name may hold a newline or an escape sequence: printed raw, it would move the
    # cursor or recolour the terminal, and split one row into two.
    item = "evil\n\x1b[31mred.py"
    comparison = Comparison(tools=("mock",), jobs=(Job(item=item, steps=["x"]),), rows=({},))
    with open(os.devnull, "w") as devnull:
        console = Console(record=True, width=120, file=devnull)
        console.print(render_comparison(comparison))
    text = console.export_text()
    assert "\x1b" not in text
    assert "evil\\n\\x1b[31mred.py" in text
