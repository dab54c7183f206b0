"""Where the integration tests find the real vendor CLIs (Claude Code, Codex CLI, Gemini CLI).

``.ci/install-clis`` installs them, at pinned versions, into ``./.npm-clis``. A test finds a CLI
through ``$AIMCLUSTER_CLAUDE`` / ``$AIMCLUSTER_CODEX`` / ``$AIMCLUSTER_GEMINI``, then
``./.npm-clis/node_modules/.bin/<name>``. Without it the test is skipped, unless
``AIMCLUSTER_REQUIRE_INTEGRATION=1`` (set by ``tests/run.sh`` in CI), which turns the skip into
a failure so that CI can never pass by skipping::

    @pytest.fixture(scope="module")
    def claude() -> str:
        return real_cli("claude")
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

__all__ = ["find_cli", "real_cli"]

_PREFIXES = (Path.cwd() / ".npm-clis", Path(__file__).parents[1] / ".npm-clis")


def find_cli(name: str) -> str | None:
    """The executable of the real CLI *name* (``claude``, ``codex``, ``gemini``), or None.

    A variable that names no executable file fails the test: it is a broken set-up, not a
    missing tool.
    """
    variable = f"AIMCLUSTER_{name.upper()}"
    configured = os.environ.get(variable)
    if configured:
        if not os.access(configured, os.X_OK):
            pytest.fail(f"{variable}={configured!r} is not an executable file")
        return configured
    for prefix in _PREFIXES:
        candidate = prefix / "node_modules" / ".bin" / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def real_cli(name: str) -> str:
    """The executable of the real CLI *name*; skips the test without it (fails it in CI)."""
    found = find_cli(name)
    if found is None:
        message = (
            f"{name} not found (set AIMCLUSTER_{name.upper()}, or run .ci/install-clis to "
            "install it into ./.npm-clis)"
        )
        if os.environ.get("AIMCLUSTER_REQUIRE_INTEGRATION") == "1":
            pytest.fail(f"{message}; AIMCLUSTER_REQUIRE_INTEGRATION=1 forbids skipping")
        pytest.skip(message)
    return found
