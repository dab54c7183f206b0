"""Each instance's private state directory, ``{state}``, and the files written into it.

A tool that keeps configuration and session state under ``HOME`` (Claude Code's
``~/.claude.json``, Codex's ``~/.codex``, Gemini's ``~/.gemini``) must not share it between
instances: concurrent writers corrupt it, and a user's own must never be touched. A spec says
``env={"HOME": "{state}/home"}`` and ``files={"{state}/home/.gemini/settings.json": "..."}``:
the cluster creates one directory (mode 0700) per instance when it starts, puts its path in
place of ``{state}`` in that instance's spec (``argv``, ``env`` values, ``cwd``, ``files``),
and removes the directories once every process has stopped. The transport writes ``files``
before each process of the instance starts, so a restart finds them as configured, whatever
the tool did to them. Resolved once per instance, before any prompt is put into an argv: a
prompt containing ``{state}`` is sent as written.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

import attrs

from .spec import ToolSpec

__all__ = ["StateDirectory", "resolve", "uses_state"]

PLACEHOLDER = "{state}"


def uses_state(spec: ToolSpec) -> bool:
    """Whether *spec* mentions ``{state}`` anywhere it is replaced."""
    texts: list[str] = [*spec.argv, *(spec.env or {}).values()]
    if spec.cwd is not None:
        texts.append(os.fspath(spec.cwd))
    for path, content in (spec.files or {}).items():
        texts += (path, content)
    return any(PLACEHOLDER in text for text in texts)


def resolve(spec: ToolSpec, state: str) -> ToolSpec:
    """*spec* with ``{state}`` replaced by the directory *state* (``{instance}`` is left to
    the transport, which replaces it in ``env``, ``cwd`` and ``files``)."""

    def sub(text: str) -> str:
        return text.replace(PLACEHOLDER, state)

    return attrs.evolve(
        spec,
        argv=[sub(arg) for arg in spec.argv],
        env=None if spec.env is None else {name: sub(v) for name, v in spec.env.items()},
        cwd=None if spec.cwd is None else sub(os.fspath(spec.cwd)),
        files=None
        if spec.files is None
        else {sub(path): sub(content) for path, content in spec.files.items()},
    )


@attrs.define
class StateDirectory:
    """The directories of one cluster's instances: ``<tmp>/aimcluster-<name>-XXXX/<index>``."""

    root: str

    @classmethod
    def create(cls, name: str) -> StateDirectory:
        # mkdtemp makes it mode 0700: the tools' credentials and transcripts are the user's.
        label = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40]
        return cls(tempfile.mkdtemp(prefix=f"aimcluster-{label}-"))

    def for_instance(self, index: int) -> str:
        """Instance *index*'s directory, created (0700) if it is not there yet."""
        path = os.path.join(self.root, str(index))
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
