"""``aimcluster show``: an item's last transcript from the journal, or the failed items."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from aimcluster import Usage

from .common import EXIT_OK, _console, _fail, _plural, _read_contents
from .report import last_lines
from .summary_render import seconds
from .terminal import shown


def _reason(record: dict[str, Any]) -> str:
    error = record.get("error") or {}
    message = str(error.get("message") or "").split("\n", 1)[0]
    return f"{error.get('type') or record.get('status')}: {message}"


def _indented(console: Console, text: str) -> None:
    for line in shown(text, block=True).split("\n"):
        console.print(f"    {line}", markup=False)


def _show_record(console: Console, record: dict[str, Any], earlier: int) -> None:
    def row(label: str, value: object) -> None:
        console.print(f"{label:<9}{shown(str(value))}", markup=False)

    row("item", record.get("item"))
    row("status", f"{record.get('status')} (attempts: {record.get('attempts')})")
    row("run", f"{record.get('run')}, job {record.get('job') or '- (no fingerprint)'}")
    row("instance", f"{record.get('instance')}, in {record.get('cwd') or '-'}")
    if record.get("tool") is not None:
        moved = record.get("failovers") or []
        row("tool", record["tool"] + (f" (moved from {', '.join(moved)})" if moved else ""))
    row("time", f"{record.get('started_at')} to {record.get('ended_at')}")
    if record.get("error"):
        row("error", _reason(record))
    usage = Usage.from_dict(record.get("usage"))
    if usage is not None and usage.known:
        row("usage", usage.describe())
    steps = record.get("steps") or []
    replies = record.get("replies") or []
    timings = record.get("timings") or []
    for number, step in enumerate(steps, start=1):
        took = f" ({seconds(timings[number - 1])})" if number <= len(timings) else ""
        console.print(f"step {number}{took}: {shown(str(step))}", markup=False)
        if number <= len(replies):
            _indented(console, str(replies[number - 1]))
        else:
            console.print("    (no reply)", markup=False)
    verify = record.get("verify")
    if isinstance(verify, dict):
        command = shlex.join(str(arg) for arg in verify.get("argv") or [])
        console.print(
            f"verify: {shown(command)} -> exit code {verify.get('exit_code')}", markup=False
        )
        if verify.get("output"):
            _indented(console, str(verify["output"]))
    if record.get("output") and (record.get("error") or {}).get("type") not in (
        "ReplyFailedError",
        "VerifyFailedError",
    ):
        console.print("the tool's last output:", markup=False)
        _indented(console, str(record["output"]))
    if earlier:
        console.print(f"({_plural(earlier, 'earlier record')} for this item)", markup=False)


@click.command(epilog="Exit codes: 0 shown, 2 no such journal or item.")
@click.argument("item", required=False)
@click.option(
    "--journal",
    default="aimcluster-journal.jsonl",
    show_default=True,
    metavar="PATH",
    help="The journal to read.",
)
@click.option("--failed", is_flag=True, help="List the items whose last job did not succeed.")
def show(item: str | None, journal: str, failed: bool) -> int:
    """Print ITEM's last transcript from the journal: each prompt, its reply and timing,
    the instance and working directory, and for a failure the error and the tool's last
    output. --failed lists the failed items with the reason."""
    console = _console()
    if item is None and not failed:
        _fail("name an ITEM to show, or pass --failed")
    if not Path(journal).exists():
        _fail(f"no journal at {journal} (pass --journal PATH)")
    contents = _read_contents(journal)
    if failed:
        latest = [record for record in contents.latest() if record.get("status") != "ok"]
        for record in latest:
            console.print(
                f"{shown(str(record.get('item')))}  {shown(_reason(record))}", markup=False
            )
            output = record.get("output") or (record.get("verify") or {}).get("output")
            last = last_lines(str(output), 1) if output else None
            if last:
                console.print(f"    | {shown(last)}", markup=False)
        console.print(
            f"{_plural(len(latest), 'item')} failed in {shown(journal)}"
            + (" ('aimcluster show ITEM' prints one)" if latest else ""),
            markup=False,
        )
        return EXIT_OK
    assert item is not None
    records = [record for record in contents.records if record.get("item") == item]
    if not records:
        _fail(f"the journal {journal} has no record of {item!r}")
    _show_record(console, records[-1], len(records) - 1)
    return EXIT_OK
