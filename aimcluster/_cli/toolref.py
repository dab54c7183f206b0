"""What ``--tool`` names: a built-in profile (with extra arguments) or a TOML/JSON spec file."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import attrs

from aimcluster import Probe, ToolSpec, tools

from .items import InputError

__all__ = ["resolve_tool", "spec_fields", "split_count"]

_SPEC_SUFFIXES = (".toml", ".json")
# ``REF=COUNT`` at the end of a --tool value: the last word's '=' whose left side is not an
# option of the tool's own ('mock --delay=5' is one argument, not mock times 5).
_COUNT_SUFFIX = re.compile(r"(?:^|\s)(?!-)[^\s=]*=(?P<count>[^\s=]*)\s*\Z")


def spec_fields() -> list[str]:
    """The ToolSpec fields a spec file may set."""
    return [field.name for field in attrs.fields(ToolSpec)]


def split_count(value: str, default: int) -> tuple[str, int]:
    """``aider=4`` -> ``("aider", 4)``; ``aider`` -> ``("aider", default)``.

    The count is what follows the last ``=`` of the last word, unless that word is an option
    of the tool's own (``'mock --delay=5'`` stays one reference). ``'mock --delay 5'=2`` is
    the profile with its arguments, twice.

    :raises InputError: for a count that is not an integer >= 1, or a reference left empty
    """
    match = _COUNT_SUFFIX.search(value)
    if match is None or ("/" in value and Path(value).expanduser().is_file()):
        return value, default
    reference = value[: match.start("count") - 1]
    text = match.group("count")
    if not reference.strip():
        raise InputError(f"--tool {value!r}: name a tool before '={text}'")
    if not text.isdecimal() or int(text) < 1:
        raise InputError(
            f"--tool {value!r}: the count after '=' must be a whole number >= 1, got {text!r}"
        )
    return reference, int(text)


def resolve_tool(reference: str) -> ToolSpec:
    """The ToolSpec that *reference* names.

    * ``mock``, ``python``, ``bash``: a built-in profile (:func:`aimcluster.tools.names`);
    * ``"mock --delay 0.05"``: a built-in profile with arguments appended to its command line;
    * ``path/to/tool.toml`` or ``.json``: a file holding ToolSpec fields
      (``name``, ``argv``, ``ready``, ``pty``, ``env``, ``cwd``, timeouts...; ``argv`` may be
      one string, split like a shell would; ``probe`` is a table of Probe fields).

    :raises InputError: for an unknown name, a missing file or invalid fields
    """
    path = Path(reference).expanduser()
    spec_like = path.suffix.lower() in _SPEC_SUFFIXES
    # A bare name ("mock") is a profile even where a file of that name exists.
    if ("/" in reference or spec_like) and path.is_file():
        return _load_spec_file(path, reference)
    try:
        words = shlex.split(reference)
    except ValueError as exc:
        raise InputError(f"--tool {reference!r}: {exc}") from None
    if len(words) == 1 and spec_like:
        return _load_spec_file(path, reference)  # names a spec file, which is missing
    if not words:
        raise InputError(f"--tool is empty; known tools are: {', '.join(tools.names())}")
    name, *extra = words
    try:
        spec = tools.get(name)
    except ValueError:
        raise InputError(
            f"unknown tool {name!r}; known tools are: {', '.join(tools.names())} "
            "(or a path to a .toml/.json tool spec)"
        ) from None
    if extra:
        spec = attrs.evolve(spec, argv=[*spec.argv, *extra])
    return spec


def _load_spec_file(path: Path, reference: str) -> ToolSpec:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"tool spec file not found: {reference!r}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the tool spec file {reference!r}: {exc}") from None
    load = json.loads if path.suffix.lower() == ".json" else tomllib.loads
    try:
        data: Any = load(text)
    except ValueError as exc:  # json.JSONDecodeError and tomllib.TOMLDecodeError
        raise InputError(f"tool spec file {reference!r} is not valid: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"tool spec file {reference!r} must hold a table/object of fields")
    known = spec_fields()
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InputError(
            f"tool spec file {reference!r}: unknown field(s) {', '.join(map(repr, unknown))}; "
            f"valid fields are: {', '.join(known)}"
        )
    fields = dict(data)
    fields.setdefault("name", path.stem)
    if isinstance(fields.get("argv"), str):
        fields["argv"] = shlex.split(fields["argv"])
    if isinstance(fields.get("probe"), dict):
        try:
            fields["probe"] = Probe(**fields["probe"])
        except (TypeError, ValueError) as exc:
            raise InputError(f"tool spec file {reference!r}: probe: {exc}") from None
    for required in ("argv", "ready"):
        if required not in fields:
            raise InputError(f"tool spec file {reference!r}: the field {required!r} is required")
    try:
        return ToolSpec(**fields)
    except (TypeError, ValueError) as exc:
        raise InputError(f"tool spec file {reference!r}: {exc}") from None
