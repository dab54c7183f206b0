"""The command line against hostile input: markup, escape sequences and odd bytes in item and
file names, and steps the tool cannot take. Whatever the names hold, the output is inert, each
item runs or fails on its own, and the journal and report keep the real names."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from rich.console import Console

from aimcluster import tools
from aimcluster._cli.journal import read_journal
from aimcluster._cli.main import cli
from aimcluster._cli.report import FailureSummary, RunSummary
from aimcluster._cli.summary_render import render_summary
from aimcluster._cli.terminal import shown
from aimcluster._core.jobs import Job

from .test_cli import run_live

backends = pytest.mark.parametrize("backend", ["asyncio", "trio"])

#: Names that act on a terminal, or on rich, if they are printed as they are.
HOSTILE = [
    "[bold red]FAKE: All items done.[/bold red]",
    "x[/]",
    "[link=https://evil.example/]click me[/link]",
    "clip\x1b]52;c;aGFja2Vk\x07board",
    "clear\x1b[2Jscreen",
    "c1\x9b31mred",
    "rtl\u202eyp.exe",
    ":warning: emoji",
    "tab\tbell\x07",
]

# What a terminal may receive from us: text, newlines, colours (SGR) and, from the live
# display, the few cursor moves rich uses to redraw. Anything else came from the data.
_OURS = re.compile(r"\x1b\[(?:[0-9;]*[mKAG]|\?25[lh])|\r")
_ACTIVE = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def assert_inert(output: str) -> None:
    """*output* holds nothing a terminal would act on but our own colours and cursor moves."""
    leftover = _OURS.sub("", output)
    found = sorted({match.group() for match in _ACTIVE.finditer(leftover)})
    assert found == [], f"raw control characters reached the terminal: {found!r}"
    assert "\x1b]8;" not in output  # no hyperlink


def invoke(*args: str, backend: str = "asyncio", env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, ["--backend", backend, *args], catch_exceptions=False, env=env)


def journal_records(path: Path) -> list[dict[str, Any]]:
    return list(read_journal(path).records)


# -- the helper -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("src/café 日本.py", "src/café 日本.py"),
        ("[bold]x[/]", "[bold]x[/]"),
        ("clip\x1b]52;c;aGk=\x07", "clip\\x1b]52;c;aGk=\\x07"),
        ("two\nlines\r", "two\\nlines\\r"),
        ("tab\there", "tab\\there"),
        ("rtl\u202ecod.exe", "rtl\\u202ecod.exe"),
        ("c1\x9bm del\x7f", "c1\\x9bm del\\x7f"),
        ("line\u2028sep", "line\\u2028sep"),
        (os.fsdecode(b"bad\xff.py"), "bad\\xff.py"),
        ("lone\ud800", "lone\\ud800"),
    ],
)
def test_shown_writes_what_a_terminal_would_act_on_as_visible_escapes(
    text: str, expected: str
) -> None:
    assert shown(text) == expected


def test_shown_keeps_the_lines_of_a_block_and_escapes_the_rest() -> None:
    output = "first\r\nsecond\tcolumn\n\x1b[2Jthird\x07"

    assert shown(output, block=True) == "first\nsecond\tcolumn\n\\x1b[2Jthird\\x07"


# -- the summary ------------------------------------------------------------------------------


def test_the_summary_shows_hostile_names_and_errors_as_text() -> None:
    failures = tuple(
        FailureSummary(
            item=name,
            status="failed",
            attempts=1,
            instance=0,
            error_type="ToolError",
            error=f"tool said: {name}",
        )
        for name in HOSTILE
    )
    summary = RunSummary(
        tool="[blink]tool\x1b[5m",
        count=1,
        total=len(HOSTILE),
        skipped=0,
        ok=0,
        failed=len(HOSTILE),
        cancelled=0,
        not_started=0,
        startup_time=0.1,
        wall_time=1.0,
        job_p50=None,
        job_p95=None,
        instances=(),
        failures=failures,
        journal="/tmp/[red]journal\x1b[2J.jsonl",
    )
    console = Console(file=io.StringIO(), force_terminal=True, width=300, color_system="standard")

    console.print(render_summary(summary))

    screen = console.file.getvalue()  # type: ignore[attr-defined]
    assert_inert(screen)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", screen)
    for name in HOSTILE:
        assert shown(name) in plain
        assert f"ToolError: tool said: {shown(name)}" in plain
    assert "[blink]tool\\x1b[5m x 1" in plain
    assert "/tmp/[red]journal\\x1b[2J.jsonl" in plain


# -- run, end to end --------------------------------------------------------------------------


@backends
def test_hostile_item_names_are_printed_inert_and_kept_exactly_in_the_journal_and_report(
    tmp_path: Path, backend: str
) -> None:
    tasks = tmp_path / "tasks.jsonl"
    names = [*HOSTILE, "two\nlines"]
    tasks.write_text("".join(json.dumps({"item": name}) + "\n" for name in names))
    journal, report = tmp_path / "j.jsonl", tmp_path / "report.json"

    # The names are never in a prompt (a newline is not a prompt's), only on the screen.
    result = invoke(
        "run",
        "-t",
        "mock",
        "-n",
        "2",
        "--jsonl",
        str(tasks),
        "-s",
        "/echo hello",
        "-s",
        "/crash 3",
        "--journal",
        str(journal),
        "--report",
        str(report),
        "--progress",
        "plain",
        backend=backend,
        env={"FORCE_COLOR": "1", "COLUMNS": "300"},
    )

    assert result.exit_code == 1, result.output
    assert_inert(result.stdout)
    assert_inert(result.stderr)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    for name in names:
        assert shown(name) in plain
    assert "Some items failed." in plain
    # The journal and the report are data: they hold the names exactly.
    assert sorted(r["item"] for r in journal_records(journal)) == sorted(names)
    data = json.loads(report.read_text())
    assert sorted(f["item"] for f in data["summary"]["failures"]) == sorted(names)


@pytest.mark.anyio
async def test_the_live_display_shows_hostile_names_inert(tmp_path: Path) -> None:
    jobs = [Job(item=name, steps=["/sleep 0.1"]) for name in HOSTILE]
    console = Console(
        file=io.StringIO(), force_terminal=True, width=200, height=40, color_system="standard"
    )

    outcome = await run_live(tools.mock(cwd=tmp_path), jobs, count=3, console=console)

    assert outcome.exit_code == 0
    screen = console.file.getvalue()  # type: ignore[attr-defined]
    assert_inert(screen)
    # Each job held its instance for 0.1 s, over many frames: its name was drawn.
    plain = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", screen)
    for name in HOSTILE:
        assert shown(name) in plain


# -- odd file names ---------------------------------------------------------------------------


@backends
def test_a_file_name_that_is_not_utf8_fails_alone_and_the_others_run(
    tmp_path: Path, backend: str
) -> None:
    root = tmp_path / "project"
    root.mkdir()
    good = ["-rf.py", "a.py", "with space.py", "[red]x.py", "esc\x1b[2J.py"]
    for name in good:
        (root / name).write_text("x\n")
    bad = os.fsencode(root) + b"/bad\xff.py"
    os.close(os.open(bad, os.O_CREAT | os.O_WRONLY, 0o644))
    journal, report = tmp_path / "j.jsonl", tmp_path / "report.json"
    args = ["run", "-t", "mock", "-n", "1", "--cwd", str(root), "*.py", "-s", "/echo <{item}>"]
    args += ["--journal", str(journal), "--report", str(report)]

    result = invoke(*args, backend=backend)

    assert result.exit_code == 1, result.output
    assert_inert(result.stdout)
    assert "bad\\xff.py" in result.stdout
    records = {r["item"]: r for r in journal_records(journal)}
    bad_name = "bad\udcff.py"  # os.fsdecode's name for it
    assert sorted(records) == sorted([*good, bad_name])
    for name in good:
        assert (records[name]["status"], records[name]["replies"]) == ("ok", [f"<{name}>"])
    assert records[bad_name]["status"] == "failed"
    assert records[bad_name]["error"] == {
        "type": "ValueError",
        "message": "the prompt cannot be written in the tool's encoding (utf-8): "
        "'\\udcff' at position 10",
    }
    # Only that record needed JSON's \u escapes; the others stay readable as they are.
    lines = journal.read_bytes().splitlines()
    assert sum(b'"bad\\udcff.py"' in line for line in lines) == 1
    assert json.loads(report.read_text())["summary"]["failed"] == 1

    # The journal gives the name back exactly: a resume knows the five are done.
    again = invoke(*args, backend=backend)

    assert again.exit_code == 1
    assert "1 job (5 already done)" in again.stdout
    assert [r["item"] for r in journal_records(journal)[6:]] == [bad_name]


def mock_spec_file(path: Path, extra: str = "") -> Path:
    """A spec file for the mock agent's command line, with a plain prompt framing (no blocks)
    and *extra* TOML lines."""
    argv = json.dumps(list(tools.mock().argv))
    path.write_text(f'argv = {argv}\nready = "> "\nexit_command = "/exit"\n{extra}')
    return path


# -- steps the tool cannot take ---------------------------------------------------------------


@backends
def test_a_step_the_tool_cannot_encode_fails_its_item_and_releases_the_instance(
    tmp_path: Path, backend: str
) -> None:
    spec = mock_spec_file(tmp_path / "ascii-mock.toml", 'encoding = "ascii"\n')
    items = tmp_path / "items.txt"
    items.write_text("first\ncafé\nlast\n")
    journal = tmp_path / "j.jsonl"

    result = invoke(
        "run",
        "-t",
        str(spec),
        "-n",
        "1",
        "--items-file",
        str(items),
        "-s",
        "/echo one {item}",
        "-s",
        "/echo two {item}",
        "--journal",
        str(journal),
        "--retries",
        "2",
        backend=backend,
    )

    assert result.exit_code == 1, result.output
    records = journal_records(journal)
    assert [(r["item"], r["status"], r["replies"]) for r in records] == [
        ("first", "ok", ["one first", "two first"]),
        ("café", "failed", []),
        # The one instance was handed back and serves the next item, in step.
        ("last", "ok", ["one last", "two last"]),
    ]
    assert records[1]["attempts"] == 1  # refused prompts are not retried
    assert records[1]["error"] == {
        "type": "ValueError",
        "message": "the prompt cannot be written in the tool's encoding (ascii): "
        "'é' at position 13",
    }
    assert "ValueError: the prompt cannot be" in result.stdout
    assert "Traceback" not in result.output


@backends
def test_a_file_name_with_a_newline_is_one_item_with_its_own_replies(
    tmp_path: Path, backend: str
) -> None:
    # Before, the name's second line reached the tool as a command of its own, and the next
    # item was journaled "ok" with the previous item's replies.
    root = tmp_path / "project"
    root.mkdir()
    names = ["a.py", "two\nlines.py", "z.py"]
    for name in names:
        (root / name).write_text("x\n")
    journal = tmp_path / "j.jsonl"
    args = ["run", "-t", "mock --delay 0.05", "-n", "1", "--cwd", str(root), "*.py"]
    args += ["-s", "/echo <{item}>", "-s", "about {item}", "--journal", str(journal)]

    result = invoke(*args, backend=backend)

    assert result.exit_code == 0, result.output
    records = sorted(journal_records(journal), key=lambda r: r["item"])
    assert [(r["item"], r["status"], r["replies"]) for r in records] == [
        (name, "ok", [f"<{name}>", f"echo: about {name}"]) for name in sorted(names)
    ]


@backends
def test_a_step_with_a_newline_fails_its_item_for_a_tool_that_reads_lines(
    tmp_path: Path, backend: str
) -> None:
    # The mock without the profile's {...} blocks: it reads one line per prompt.
    spec = mock_spec_file(tmp_path / "line-mock.toml")
    items = tmp_path / "items.jsonl"
    items.write_text(
        json.dumps({"item": "a", "note": "fine"})
        + "\n"
        + json.dumps({"item": "b", "note": "two\nlines"})
        + "\n"
        + json.dumps({"item": "c", "note": "fine"})
        + "\n"
    )
    journal = tmp_path / "j.jsonl"

    result = invoke(
        "run",
        "-t",
        str(spec),
        "-n",
        "1",
        "--jsonl",
        str(items),
        "-s",
        "/echo {item}: {note}",
        "--journal",
        str(journal),
        backend=backend,
    )

    assert result.exit_code == 1, result.output
    records = journal_records(journal)
    assert [(r["item"], r["status"], r["replies"]) for r in records] == [
        ("a", "ok", ["a: fine"]),
        ("b", "failed", []),
        ("c", "ok", ["c: fine"]),
    ]
    assert records[1]["error"]["type"] == "ValueError"
    assert "line break at position 12" in records[1]["error"]["message"]
