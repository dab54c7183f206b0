"""The registry of built-in tool profiles."""

from __future__ import annotations

import re
import sys

import pytest

import aimcluster
from aimcluster import tools
from aimcluster._tools.registry import _REGISTRY
from aimcluster._tools.repl import _NONCE


def test_registered_names() -> None:
    assert {"mock", "python", "bash"} <= set(tools.names())


def test_get_unknown_lists_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown tool 'zzz'; known tools are: .*mock"):
        tools.get("zzz")


def test_register_adds_a_profile() -> None:
    spec = aimcluster.ToolSpec(name="mine", argv=["cat"], ready="x")
    tools.register("mine-test", lambda: spec)
    try:
        assert tools.get("mine-test") is spec
        assert "mine-test" in tools.names()
    finally:
        _REGISTRY.pop("mine-test")


def test_mock_profile_passes_its_options_as_flags() -> None:
    spec = tools.mock(delay=0.5, jitter=0.1, crash_rate=0.2, seed=4, extra_args=["--no-banner"])
    assert spec.argv[0] == sys.executable
    assert spec.argv[-9:] == (
        "--delay", "0.5", "--jitter", "0.1", "--crash-rate", "0.2", "--seed", "4", "--no-banner",
    )  # fmt: skip
    assert spec.ready == "> "
    assert spec.exit_command == "/exit"


def test_python_profile_is_the_plain_repl_over_pipes() -> None:
    spec = tools.python()
    assert spec.argv[:5] == (sys.executable, "-q", "-u", "-i", "-c")
    assert spec.pty is False
    # Every prompt is one line, and the ready prompt names it.
    wire = spec.input_for("def f():\n    return 1", 7)
    assert wire == "__aimcluster__(7, 'def f():\\n    return 1')"
    assert re.fullmatch(spec.ready or "", "[aimcluster-" + _NONCE + ":7]>>> ")


def test_bash_profile_runs_in_a_pty_without_echo_or_line_editing() -> None:
    spec = tools.bash()
    assert spec.argv == ("bash", "--norc", "--noprofile", "--noediting", "-i")
    assert (spec.pty, spec.echo) == (True, False)
    assert spec.env is not None
    assert spec.env["PS1"] == "$ "
    assert spec.input_for("echo 'a'\nb\\", 3) == "__aimcluster_seq=3; eval $'echo \\'a\\'\\nb\\\\'"


def test_profiles_compare_equal_when_built_twice() -> None:
    # The random part of the python and bash prompts is drawn once per process.
    assert tools.python() == tools.python()
    assert tools.bash() == tools.bash()


@pytest.mark.anyio
async def test_mock_runs_as_python_dash_m_too(cluster_factory) -> None:
    spec = aimcluster.ToolSpec(
        name="mock-m", argv=[sys.executable, "-m", "aimcluster.mock_agent"], ready="> "
    )
    cluster = await cluster_factory(spec)
    assert (await cluster.send("hello")).text == "echo: hello"
