"""``aimcluster run`` over 20 files with each real CLI (Claude Code, Codex CLI, Gemini CLI),
set up only as a user would from a shell (the CLI on ``PATH``, the endpoint and key in the
environment): every item done, and the summary and the report show each item's tokens, and
their total, as the CLI reported them to the stand-in of its vendor's API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from .clis import real_cli
from .vendor_claude import FakeAnthropic
from .vendor_codex import FakeResponses
from .vendor_gemini import FakeGemini

pytestmark = pytest.mark.integration

ITEMS = 20


def claude_env(server: Any) -> dict[str, str]:
    return {"ANTHROPIC_BASE_URL": server.base_url, "ANTHROPIC_API_KEY": "sk-ant-test"}


def codex_env(server: Any) -> dict[str, str]:
    return {"OPENAI_BASE_URL": server.base_url, "CODEX_API_KEY": "sk-test"}


def gemini_env(server: Any) -> dict[str, str]:
    return {"GOOGLE_GEMINI_BASE_URL": server.base_url, "GEMINI_API_KEY": "gemini-test"}


CLIS: dict[str, tuple[Callable[[], AbstractContextManager[Any]], Callable[[Any], dict[str, str]]]]
CLIS = {
    "claude": (
        lambda: FakeAnthropic(input_tokens=120, cache_read_input_tokens=30, output_tokens=7),
        claude_env,
    ),
    "codex": (lambda: FakeResponses(), codex_env),
    "gemini": (lambda: FakeGemini(), gemini_env),
}


@pytest.fixture(params=sorted(CLIS))
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The CLI's name and the environment that points it at its vendor's stand-in."""
    name = request.param
    executable = real_cli(name)
    make_server, env_for = CLIS[name]
    home = tmp_path / "home"
    home.mkdir()
    with make_server() as server:
        env = {
            **os.environ,
            **env_for(server),
            "PATH": f"{Path(executable).parent}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(home),
            "TMPDIR": str(tmp_path),
        }
        yield name, env


@pytest.mark.timeout(300)
def test_a_run_over_20_files_shows_each_items_tokens_and_the_total(
    cli: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    name, env = cli
    project = tmp_path / "project"
    project.mkdir()
    for n in range(ITEMS):
        (project / f"file_{n:02}.py").write_text(f"VALUE = {n}\n")
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "aimcluster", "run", "--tool", name, "--count", "4",
         "--cwd", str(project), "*.py", "--step", "Summarise {item} in one line",
         "--journal", str(tmp_path / "journal.jsonl"), "--report", str(report),
         "--progress", "plain", "--timeout", "120"],
        env=env, capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(report.read_text())["summary"]
    items = summary["items"]
    assert len(items) == ITEMS
    assert all(item["status"] == "ok" for item in items)
    per_item = [item["usage"] for item in items]
    assert all(usage["input_tokens"] > 0 and usage["output_tokens"] > 0 for usage in per_item)
    total = summary["usage"]
    assert total["input_tokens"] == sum(usage["input_tokens"] for usage in per_item)
    assert total["output_tokens"] == sum(usage["output_tokens"] for usage in per_item)
    usage_line = next(line for line in done.stdout.splitlines() if line.startswith("usage "))
    tokens = total["input_tokens"] + total["output_tokens"]
    assert f"{tokens:,} tokens" in usage_line
    if name == "claude":  # the one of the three that reports what a turn cost
        assert total["cost_usd"] > 0
        assert "$" in usage_line
        assert any(line.startswith("per item ") for line in done.stdout.splitlines())
