"""The library prints nothing unless the application configured logging."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from aimcluster._base import logs
from aimcluster._base.logs import LazyLogger

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


# -- LazyLogger, in this process (it does no I/O of its own) ---------------------------------


@pytest.fixture
def standard_logger(caplog: pytest.LogCaptureFixture) -> Iterator[logging.Logger]:
    """A standard logger with a handler (caplog's, on the root), and structlog unconfigured
    for the test; afterwards structlog is put back as it was (the command line's tests
    configure it)."""
    saved = structlog.get_config() if structlog.is_configured() else None
    structlog.reset_defaults()
    logger = logging.getLogger("aimcluster.lazy-test")
    try:
        yield logger
    finally:
        logger.setLevel(logging.NOTSET)
        if saved is None:
            structlog.reset_defaults()
        else:
            structlog.configure(**saved)


def events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage().split()[0] for record in caplog.records]


def test_a_lazy_logger_drops_debug_events_below_the_level_and_passes_the_rest(
    standard_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    standard_logger.setLevel(logging.INFO)
    log = LazyLogger("aimcluster.lazy-test")
    log.debug("dropped")
    log.info("kept")
    log.debug("dropped again")  # known dropped now, without asking the configuration
    log.warning("also_kept")
    assert events(caplog) == ["event='kept'", "event='also_kept'"]


def test_a_lazy_logger_follows_a_level_lowered_later_within_a_recheck(
    standard_logger: logging.Logger,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    standard_logger.setLevel(logging.INFO)
    log = LazyLogger("aimcluster.lazy-test")
    log.info("first")
    standard_logger.setLevel(logging.DEBUG)
    log.debug("dropped")  # within the recheck interval: still the INFO logger
    now[0] += logs._RECHECK
    log.debug("kept")
    assert events(caplog) == ["event='first'", "event='kept'"]


def test_a_lazy_logger_follows_structlog_configured_later_at_once(
    standard_logger: logging.Logger,
) -> None:
    standard_logger.setLevel(logging.INFO)
    log = LazyLogger("aimcluster.lazy-test")
    log.debug("dropped")
    seen: list[str] = []

    def capture(logger: object, method: str, event: MutableMapping[str, Any]) -> str:
        seen.append(event["event"])
        raise structlog.DropEvent

    structlog.configure(processors=[capture])
    try:
        log.debug("configured")  # no recheck interval to wait for
    finally:
        structlog.reset_defaults()
    assert seen == ["configured"]
