"""Work items for ``aimcluster run``: where they come from and how they become jobs.

Items come from file paths and globs, from a text file (one item per line) or from a JSONL
file (one object per line). Each item has fields; a step template names them as ``{field}``,
with Python's conversions and format specs if wanted (``{item!r}``, ``{name:>40}``).
``{{field}}`` is a literal ``{field}``, and no other brace is special, so JSON in a prompt
needs no escaping (a ``{word!x}`` or ``{word:...}`` whose word is no field stays as written).
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import attrs

from aimcluster import Job

__all__ = [
    "InputError",
    "WorkItem",
    "build_jobs",
    "exclude",
    "items_from_file",
    "items_from_jsonl",
    "items_from_paths",
    "render",
]

_GLOB_CHARS = re.compile(r"[*?\[]")
# ``{name}`` is a placeholder (``{name!r:>40}`` with a conversion and a format spec) and
# ``{{name}}`` a literal ``{name}``; no other brace is special.
_PLACEHOLDER = re.compile(
    r"\{\{([A-Za-z_][\w-]*)\}\}|\{([A-Za-z_][\w-]*)(?:!([rsa]))?(?::([^{}]*))?\}"
)
_CONVERSIONS: dict[str, Callable[[object], str]] = {"r": repr, "s": str, "a": ascii}


class InputError(Exception):
    """Bad input to ``aimcluster run``: the message is one line, fit for the user."""


@attrs.frozen(kw_only=True)
class WorkItem:
    """One unit of work before it is turned into a job."""

    #: The item's name: ``{item}`` in templates, and its identity in the journal.
    item: str
    #: Every field a template may use, ``item`` included.
    fields: Mapping[str, str]
    #: Where the item came from, for error messages (``items.jsonl:3``, ``'src/*.py'``).
    origin: str
    #: Resources the job touches besides anything added with ``--sticky-by``.
    resources: tuple[str, ...]


# -- sources ---------------------------------------------------------------------------------


def _path_fields(display: str, absolute: Path) -> dict[str, str]:
    parent = os.path.dirname(display)
    return {
        "item": display,
        "path": display,
        "abspath": str(absolute),
        "name": absolute.name,
        "stem": absolute.stem,
        "suffix": absolute.suffix,
        "dir": parent or ".",
    }


def _display(absolute: Path, root: Path, *, absolute_paths: bool) -> str:
    if absolute_paths:
        return str(absolute)
    try:
        return absolute.relative_to(root).as_posix()
    except ValueError:
        return str(absolute)


def items_from_paths(
    patterns: Sequence[str], *, root: Path, absolute_paths: bool = False
) -> list[WorkItem]:
    """Files named by *patterns* (paths or globs; ``**`` recurses), relative to *root*.

    Each glob's matches are sorted; directories are skipped; a file named twice is one item.

    :raises InputError: for a plain path that is missing or a directory
    """
    items: list[WorkItem] = []
    seen: set[Path] = set()
    for pattern in patterns:
        if _GLOB_CHARS.search(pattern):
            matches = sorted(glob.glob(pattern, root_dir=root, recursive=True))
            paths = [Path(os.path.normpath(root / match)) for match in matches]
            paths = [path for path in paths if path.is_file()]
        else:
            path = Path(os.path.normpath(root / os.path.expanduser(pattern)))
            if path.is_dir():
                raise InputError(
                    f"{pattern!r} is a directory; name files, or a glob such as "
                    f"'{pattern.rstrip('/')}/**/*.py'"
                )
            if not path.is_file():
                raise InputError(f"no such file: {pattern!r} (relative to {root})")
            paths = [path]
        for path in paths:
            if path in seen:
                continue
            seen.add(path)
            display = _display(path, root, absolute_paths=absolute_paths)
            items.append(
                WorkItem(
                    item=display,
                    fields=_path_fields(display, path),
                    origin=repr(pattern),
                    resources=(str(path),),
                )
            )
    return items


def _read_text(path: str, what: str) -> list[str]:
    try:
        if path == "-":
            return sys.stdin.read().splitlines()
        with open(path, encoding="utf-8") as file:
            return file.read().splitlines()
    except OSError as exc:
        raise InputError(f"cannot read the {what} {path!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"the {what} {path!r} is not UTF-8 text ({exc.reason})") from None


def items_from_file(path: str) -> list[WorkItem]:
    """One item per line of *path* (``-``: stdin); blank lines and ``#`` comments are skipped."""
    items = []
    for number, line in enumerate(_read_text(path, "items file"), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        items.append(
            WorkItem(
                item=text,
                fields={"item": text},
                origin=f"{path}:{number}",
                resources=(text,),
            )
        )
    return items


def _field_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def items_from_jsonl(path: str, *, item_field: str) -> list[WorkItem]:
    """One item per JSON object line of *path*; its fields are the object's keys.

    The item's name is the value of *item_field*. Non-string values are given to templates as
    JSON. Blank lines are skipped.

    :raises InputError: naming the line of the first line that is not a JSON object with
        *item_field*
    """
    items = []
    for number, line in enumerate(_read_text(path, "JSONL file"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            value = json.loads(line)
        except ValueError as exc:
            reason = getattr(exc, "msg", str(exc))
            raise InputError(f"{where}: not valid JSON ({reason})") from None
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(value).__name__}")
        if item_field not in value:
            raise InputError(
                f"{where}: the object has no {item_field!r} field to name the item "
                "(choose the field with --item-field)"
            )
        name = _field_text(value[item_field])
        fields = {str(key): _field_text(field) for key, field in value.items()}
        fields["item"] = name
        items.append(WorkItem(item=name, fields=fields, origin=where, resources=(name,)))
    return items


# -- templates --------------------------------------------------------------------------------


class MissingFieldError(KeyError):
    """A template names a field the item does not have."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class FormatSpecError(ValueError):
    """A placeholder's format spec does not apply to its field's text."""


def render(template: str, fields: Mapping[str, str]) -> str:
    """Fill *template*'s ``{field}`` placeholders from *fields*, applying a conversion
    (``!r``, ``!s``, ``!a``) and a format spec (``:>40``) as :meth:`str.format` would.

    :raises MissingFieldError: for a plain ``{name}`` with no field
    :raises FormatSpecError: for a format spec that does not apply to text
    """

    def substitute(match: re.Match[str]) -> str:
        if match.group(1) is not None:
            return "{" + match.group(1) + "}"
        name, conversion, spec = match.group(2, 3, 4)
        if name not in fields:
            if conversion is None and spec is None:
                raise MissingFieldError(name)
            return match.group(0)  # '{key: value}' in a prompt's text, not a placeholder
        value: str = fields[name]
        if conversion is not None:
            value = _CONVERSIONS[conversion](value)
        if spec is None:
            return value
        try:
            return format(value, spec)
        except ValueError as exc:
            raise FormatSpecError(f"{match.group(0)}: {exc}") from None

    return _PLACEHOLDER.sub(substitute, template)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """*pattern* as a regex over a whole path: ``**`` spans directories, ``*`` and ``?`` do
    not cross a ``/``, ``[...]`` is a set (``[!...]`` its complement)."""
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**/", index):
            parts.append("(?:.*/)?")
            index += 3
            continue
        if pattern.startswith("**", index):
            parts.append(".*")
            index += 2
            continue
        if char == "*":
            parts.append("[^/]*")
        elif char == "?":
            parts.append("[^/]")
        elif char == "[" and (end := pattern.find("]", index + 2)) != -1:
            body = pattern[index + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            parts.append("[" + body.replace("\\", "\\\\") + "]")
            index = end + 1
            continue
        else:
            parts.append(re.escape(char))
        index += 1
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


def exclude(items: Sequence[WorkItem], patterns: Sequence[str]) -> tuple[list[WorkItem], int]:
    """*items* without those whose name matches one of the glob *patterns*; and how many
    were left out. A pattern without a ``/`` is also tried on the item's last component, so
    ``'*_test.py'`` leaves out tests at any depth."""
    compiled = [(_glob_regex(pattern), "/" not in pattern) for pattern in patterns]
    kept = []
    for item in items:
        base = item.item.rpartition("/")[2]
        if any(
            regex.match(item.item) or (anywhere and regex.match(base))
            for regex, anywhere in compiled
        ):
            continue
        kept.append(item)
    return kept, len(items) - len(kept)


def _render_field(template: str, item: WorkItem, where: str) -> str:
    try:
        return render(template, item.fields)
    except MissingFieldError as exc:
        raise InputError(
            f"{where} uses {{{exc.name}}}, but item {item.item!r} ({item.origin}) "
            f"has no field {exc.name!r}; it has: {', '.join(sorted(item.fields))}"
        ) from None
    except FormatSpecError as exc:
        raise InputError(f"{where}, item {item.item!r} ({item.origin}): {exc}") from None


def build_jobs(
    items: Iterable[WorkItem],
    steps: Sequence[str],
    *,
    sticky_by: str | None = None,
    verify: Sequence[str] | None = None,
) -> tuple[list[Job], int]:
    """Turn *items* into jobs; return them and the number of duplicates dropped.

    An item seen again with the same rendered steps is a duplicate and is dropped. Seen again
    with different steps (two JSONL tasks on one file) it becomes a job of its own, named
    ``item#2``, ``item#3``..., that shares the first one's resources and so runs after it.

    *verify* is a command line (a list of arguments) whose arguments are templates too.

    :raises InputError: naming the step, the field and the item, for a missing field
    """
    if not steps:
        raise InputError("no steps given: pass at least one --step, e.g. --step '/add {item}'")
    jobs: list[Job] = []
    seen: dict[str, list[tuple[tuple[str, ...], tuple[str, ...] | None]]] = {}
    duplicates = 0
    for item in items:
        rendered = [
            _render_field(step, item, f"step {number}")
            for number, step in enumerate(steps, start=1)
        ]
        command = None
        if verify is not None:
            command = tuple(_render_field(arg, item, "--verify") for arg in verify)
        resources = item.resources
        key = None
        if sticky_by is not None:
            if sticky_by not in item.fields:
                raise InputError(
                    f"--sticky-by {sticky_by}: item {item.item!r} ({item.origin}) has no field "
                    f"{sticky_by!r}; it has: {', '.join(sorted(item.fields))}"
                )
            key = item.fields[sticky_by]
            resources = (*resources, f"{sticky_by}={key}")
        variants = seen.setdefault(item.item, [])
        script = (tuple(rendered), command)
        if script in variants:
            duplicates += 1
            continue
        variants.append(script)
        name = item.item if len(variants) == 1 else f"{item.item}#{len(variants)}"
        jobs.append(Job(item=name, steps=rendered, key=key, resources=resources, verify=command))
    return jobs, duplicates
