"""``aimcluster run``: tokens and cost per item and in total (summary, report, journal, show),
and the --max-cost / --max-tokens budget."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest

from aimcluster import ToolSpec, Usage
from aimcluster._base.framing import Event
from aimcluster._tools.registry import _REGISTRY
from tests.test_cli import backends, invoke, records
from tests.test_usage import billed, billing_agent


def counted(text: str, events: Sequence[Event]) -> Usage | None:
    """Tokens, but no cost: what codex and gemini report."""
    usage = billed(text, events)
    return None if usage is None else attrs.evolve(usage, cost_usd=None)


def counting_agent(**options: object) -> ToolSpec:
    return attrs.evolve(billing_agent(usage=counted, **options), name="counting")


@pytest.fixture(autouse=True)
def billing_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    # A registered profile, as a plug-in would add one: the agent reports usage as claude does.
    monkeypatch.setitem(_REGISTRY, "billing", billing_agent)
    monkeypatch.setitem(_REGISTRY, "counting", counting_agent)


def billing_run(tmp_path: Path, *extra: str, items: int = 3, count: int = 1) -> list[str]:
    # Item n costs $0.n: 100 tokens in, 10 out.
    (tmp_path / "items.txt").write_text("".join(f"{n}\n" for n in range(1, items + 1)))
    return [
        "run",
        "--tool",
        "billing",
        "-n",
        str(count),
        "--items-file",
        str(tmp_path / "items.txt"),
        "--step",
        "in=100 out=10 cost=0.{item}",
        "--journal",
        str(tmp_path / "j.jsonl"),
        "--report",
        str(tmp_path / "report.json"),
        "--progress",
        "none",
        *extra,
    ]


@backends
def test_the_summary_and_report_show_tokens_and_cost_per_item_and_in_total(
    tmp_path: Path, backend: str
) -> None:
    result = invoke(*billing_run(tmp_path, count=2), backend=backend)

    assert result.exit_code == 0, result.output
    lines = [line.rstrip() for line in result.output.splitlines()]
    assert "usage      330 tokens (300 in, 30 out), $0.6000" in lines
    assert "per item   mean $0.2000, most $0.3000 (3)" in lines
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["summary"]["usage"] == {
        "input_tokens": 300,
        "output_tokens": 30,
        "cached_tokens": None,
        "cost_usd": pytest.approx(0.6),
        "requests": 3,
    }
    per_item = {i["item"]: i["usage"]["cost_usd"] for i in report["summary"]["items"]}
    assert per_item == {"1": 0.1, "2": 0.2, "3": 0.3}
    assert report["metrics"]["usage"]["input_tokens"] == 300
    per_instance = [i["usage"]["input_tokens"] for i in report["summary"]["instances"]]
    assert sorted(per_instance) == [100, 200]
    journal = {r["item"]: r["usage"] for r in records(tmp_path / "j.jsonl")}
    assert journal["2"] == {
        "input_tokens": 100,
        "output_tokens": 10,
        "cached_tokens": None,
        "cost_usd": 0.2,
        "requests": 1,
    }

    shown = invoke("show", "2", "--journal", str(tmp_path / "j.jsonl"))
    assert "usage    110 tokens (100 in, 10 out), $0.2000" in shown.output


@backends
def test_max_cost_starts_no_new_job_once_spent_and_exits_4(tmp_path: Path, backend: str) -> None:
    # One instance: jobs run one by one; $0.1 + $0.2 reaches $0.3, so 3 to 5 never start.
    result = invoke(*billing_run(tmp_path, "--max-cost", "0.3", items=5), backend=backend)

    assert result.exit_code == 4, result.output
    assert [r["item"] for r in records(tmp_path / "j.jsonl")] == ["1", "2"]
    assert "3 not started" in result.output
    assert "budget spent ($0.3000 spent of max_cost $0.3): no new job started" in result.output
    assert "Stopped before every item was done." in result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["exit_code"] == 4
    assert report["summary"]["budget_spent"] == "$0.3000 spent of max_cost $0.3"

    # The next run resumes with a budget of its own.
    again = invoke(*billing_run(tmp_path, "--max-cost", "10", items=5), backend=backend)
    assert again.exit_code == 0, again.output
    assert [r["item"] for r in records(tmp_path / "j.jsonl")] == ["1", "2", "3", "4", "5"]


@backends
def test_max_tokens_starts_no_new_job_once_spent(tmp_path: Path, backend: str) -> None:
    result = invoke(*billing_run(tmp_path, "--max-tokens", "200", items=4), backend=backend)

    assert result.exit_code == 4, result.output
    assert [r["item"] for r in records(tmp_path / "j.jsonl")] == ["1", "2"]
    assert "220 tokens spent of max_tokens 200" in result.output


def test_a_budget_not_reached_changes_nothing(tmp_path: Path) -> None:
    result = invoke(*billing_run(tmp_path, "--max-cost", "5", "--max-tokens", "100000"))

    assert result.exit_code == 0, result.output
    assert "budget spent" not in result.output
    assert len(records(tmp_path / "j.jsonl")) == 3


def test_a_tool_that_reports_no_usage_shows_no_usage(tmp_path: Path) -> None:
    result = invoke(
        *[
            "mock" if arg == "billing" else "/echo {item}" if arg.startswith("in=") else arg
            for arg in billing_run(tmp_path, "--max-cost", "0.01")
        ]
    )

    assert result.exit_code == 0, result.output
    assert "usage" not in result.output
    assert "tokens" not in result.output


@pytest.mark.parametrize("option", ["--max-cost=0", "--max-tokens=0", "--max-cost=-1"])
def test_a_budget_must_be_positive(tmp_path: Path, option: str) -> None:
    result = invoke(*billing_run(tmp_path, option))

    assert result.exit_code == 2
    assert "Invalid value for '--max-" in result.output


@backends
def test_max_cost_with_a_tool_that_reports_no_cost_says_it_had_no_effect(
    tmp_path: Path, backend: str
) -> None:
    # codex and gemini report tokens but no cost: the budget can never be reached.
    args = [
        "counting" if arg == "billing" else arg
        for arg in billing_run(tmp_path, "--max-cost", "0.01")
    ]
    result = invoke(*args, backend=backend)

    assert result.exit_code == 0, result.output
    assert len(records(tmp_path / "j.jsonl")) == 3
    assert (
        "aimcluster: note: --max-cost 0.01 had no effect: no reply of counting reported a cost"
        in result.stderr
    )


def test_max_cost_with_a_tool_that_reports_a_cost_adds_no_note(tmp_path: Path) -> None:
    result = invoke(*billing_run(tmp_path, "--max-cost", "5"))

    assert result.exit_code == 0, result.output
    assert "no effect" not in result.output


def test_max_tokens_with_a_tool_that_reports_no_usage_is_refused_before_any_work(
    tmp_path: Path,
) -> None:
    args = ["mock" if arg == "billing" else arg for arg in billing_run(tmp_path)]
    result = invoke(*args, "--max-tokens", "1000")

    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "aimcluster: error: --max-tokens needs a tool that reports the tokens it used; "
        "mock does not\n"
    )
    assert not (tmp_path / "j.jsonl").exists()
