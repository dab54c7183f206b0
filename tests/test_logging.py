"""The library prints nothing unless the application configured logging."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Run in a fresh interpreter: structlog's configuration is process-wide.
PROGRAM = """
import logging, sys
import anyio
backend, mode = sys.argv[1:3]
if mode == "logging":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
elif mode == "structlog":
    import structlog
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from aimcluster import launch_cluster, tools

async def main():
    async with launch_cluster(tools.mock(), 1) as cluster:
        print((await cluster.send("/echo hi")).text)

anyio.run(main, backend=backend)
"""


def run_program(tmp_path: Path, backend: str, mode: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    return subprocess.run(
        [sys.executable, str(script), backend, mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_library_prints_nothing_unless_logging_is_configured(
    tmp_path: Path, backend: str
) -> None:
    result = run_program(tmp_path, backend, "none")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "hi\n"
    assert result.stderr == ""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_events_go_to_the_standard_logging_the_app_configured(tmp_path: Path, backend: str) -> None:
    result = run_program(tmp_path, backend, "logging")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "hi\n"
    lines = result.stderr.splitlines()
    assert "aimcluster event='cluster_started' tool='mock' size=1 routing='least_busy'" in lines
    # INFO is the level asked for: the per-prompt DEBUG events stay out.
    assert not any("prompt_sent" in line for line in lines)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_events_go_to_the_structlog_the_app_configured(tmp_path: Path, backend: str) -> None:
    result = run_program(tmp_path, backend, "structlog")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "hi\n"
    assert "cluster_started" in result.stderr
