"""Jules Tools (:func:`jules`): ``jules remote new``, which starts a remote session per
prompt and returns at once; its reply is what it prints, its failure a non-zero exit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .._base.framing import OneshotFraming
from .._base.spec import ToolSpec

__all__ = ["jules"]


def jules(
    *,
    executable: str | os.PathLike[str] = "jules",
    repo: str = ".",
    parallel: int | None = None,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> ToolSpec:
    """Jules Tools, which starts a remote session per prompt and returns at once::

        jules remote new --repo REPO [--parallel N] [EXTRA_ARGS...] --session=PROMPT

    ``Reply.text`` is what it prints (``Session is created.`` and the session's id and URL);
    a non-zero exit raises :class:`~aimcluster.ToolError`.

    :param repo: ``OWNER/REPO``, or ``.`` for the ``origin`` of the git repository at *cwd*
    """
    argv = [os.fspath(executable), "remote", "new", "--repo", repo]
    if parallel is not None:
        argv += ["--parallel", str(parallel)]
    argv += [*extra_args, "--session={prompt}"]
    return ToolSpec(
        name="jules",
        argv=argv,
        framing=OneshotFraming(),
        env=env,
        cwd=cwd,
        rate_limit=r"(?i)\b429\b|rate limit",
    )
