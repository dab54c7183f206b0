"""The registry of tool names: what ``launch_cluster("mock")`` and ``--tool mock`` look up.

It starts with the built-in profiles, each called with its defaults; :func:`register` adds
or replaces a name for the rest of the process.
"""

from __future__ import annotations

from collections.abc import Callable

from .._base.spec import ToolSpec
from .aider import aider, aider_oneshot
from .claude import claude
from .codex import codex
from .gemini import gemini
from .jules import jules
from .mock import mock
from .repl import bash, python

__all__ = ["get", "names", "register"]

_REGISTRY: dict[str, Callable[[], ToolSpec]] = {
    "mock": mock,
    "python": python,
    "bash": bash,
    "aider": aider,
    "aider_oneshot": aider_oneshot,
    "claude": claude,
    "codex": codex,
    "gemini": gemini,
    "jules": jules,
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
