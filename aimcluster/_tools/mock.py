"""The bundled mock agent (``aimcluster/mock_agent.py``), an aider look-alike: aider's input
framing and ``> `` prompt, ``/exit`` to leave, and the replies it gives for a failed step.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .._base.spec import ToolSpec
from .aider import _AIDER_INPUT

__all__ = ["MOCK_FAILURE_REPLIES", "mock"]

# The program is aimcluster/mock_agent.py, in the package above this one.
_MOCK_AGENT = Path(__file__).parents[1] / "mock_agent.py"


#: The mock agent's replies that report a failed step (see ``aimcluster/mock_agent.py``).
MOCK_FAILURE_REPLIES = (
    r"(?m)^No such file: ",
    r"(?m) is not in the chat$",
    r"(?m)^Could not edit ",
    r"(?m)^No files in the chat to edit$",
)


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
    """The bundled mock agent (``python -m aimcluster.mock_agent``), an aider look-alike: a
    prompt of several lines goes as aider's ``{``...``}`` block (:func:`aider_block`).

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
    return ToolSpec(
        name="mock",
        argv=argv,
        ready=r"> ",
        framing=_AIDER_INPUT,
        cwd=cwd,
        env=env,
        exit_command="/exit",
        failure_replies=MOCK_FAILURE_REPLIES,
    )
