"""Built-in tool profiles, and the registry that maps tool names to them.

Each profile is a function that takes the options a user needs and returns a
:class:`~aimcluster.ToolSpec`; ``launch_cluster("mock")`` calls the registered profile with its
defaults.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ._spec import ToolSpec

__all__ = ["bash", "get", "mock", "names", "python", "register"]

_MOCK_AGENT = Path(__file__).with_name("mock_agent.py")


def mock(
    *,
    delay: float = 0.0,
    jitter: float = 0.0,
    crash_rate: float = 0.0,
    hang_rate: float = 0.0,
    startup_delay: float = 0.0,
    seed: int | None = None,
    extra_args: Sequence[str] = (),
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> ToolSpec:
    """The bundled mock agent (``python -m aimcluster.mock_agent``), an aider look-alike.

    It runs the module's file directly rather than with ``-m``: ``-m`` would first import the
    ``aimcluster`` package (and anyio, structlog, attrs) in every child, which triples start-up
    time and memory when launching hundreds of them. The program is the same.
    """
    argv = [sys.executable, "-u", str(_MOCK_AGENT)]
    options = {
        "--delay": delay,
        "--jitter": jitter,
        "--crash-rate": crash_rate,
        "--hang-rate": hang_rate,
        "--startup-delay": startup_delay,
    }
    for flag, value in options.items():
        if value:
            argv += [flag, str(value)]
    if seed is not None:
        argv += ["--seed", str(seed)]
    argv += extra_args
    return ToolSpec(name="mock", argv=argv, ready=r"> ", cwd=cwd, env=env, exit_command="/exit")


def python(*, executable: str = sys.executable, cwd: str | Path | None = None) -> ToolSpec:
    """The Python REPL over pipes: ``python -i -q -u``. ``send("1+1")`` replies ``"2"``."""
    return ToolSpec(
        name="python",
        argv=[executable, "-i", "-q", "-u"],
        ready=r"^>>> ",
        cwd=cwd,
        # Keep the REPL plain: no colour codes or the 3.13+ fancy REPL escapes in replies.
        env={"PYTHON_BASIC_REPL": "1", "PYTHON_COLORS": "0", "TERM": "dumb"},
        exit_command="exit()",
    )


BASH_PROMPT = "[aimcluster]$ "


def bash(*, cwd: str | Path | None = None, env: Mapping[str, str] | None = None) -> ToolSpec:
    """Interactive bash in a pseudo-terminal: ``bash --norc --noprofile -i``.

    The prompt is set to ``[aimcluster]$ `` so that it is unlikely to appear in a reply, and
    ``TERM=dumb`` keeps readline from writing escape sequences.
    """
    return ToolSpec(
        name="bash",
        argv=["bash", "--norc", "--noprofile", "-i"],
        ready=r"\[aimcluster\]\$ ",
        pty=True,
        cwd=cwd,
        env={"PS1": BASH_PROMPT, "PS2": "", "TERM": "dumb", **(env or {})},
        exit_command="exit",
    )


_REGISTRY: dict[str, Callable[[], ToolSpec]] = {
    "mock": mock,
    "python": python,
    "bash": bash,
}


def register(name: str, profile: Callable[[], ToolSpec]) -> None:
    """Make ``launch_cluster(name)`` use ``profile()``. Replaces an earlier registration."""
    _REGISTRY[name] = profile


def names() -> list[str]:
    """The registered tool names, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> ToolSpec:
    """The ToolSpec registered as *name*.

    :raises ValueError: for an unknown name; the message lists the known names
    """
    try:
        profile = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown tool {name!r}; known tools are: {', '.join(names())} "
            "(or pass an aimcluster.ToolSpec)"
        ) from None
    return profile()
