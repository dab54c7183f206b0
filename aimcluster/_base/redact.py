"""Secrets never shown: redaction of secret-looking values wherever a spec is displayed.

A value is a secret when its *name* looks secret: the name contains, ignoring case, one of
:data:`SECRET_NAME_PARTS` (``KEY``, ``TOKEN``, ``SECRET``, ``PASSWORD``, ...). The rule is
deliberately broad: showing ``MAX_TOKENS=<redacted>`` costs a reader little, showing an API key
costs its owner a great deal. Names are environment variables (``ToolSpec.env``), mapping keys
(a Ray ``runtime_env``) and command-line options (``--api-key=...``, ``--token ...``). A URL's
password (``scheme://user:password@host``) is redacted whatever its name.

Only what is *shown* is redacted: the values themselves are passed to the tool unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

__all__ = [
    "REDACTED",
    "SECRET_NAME_PARTS",
    "Environment",
    "looks_secret",
    "redact_argv",
    "redacted_repr",
]

#: What a secret value is shown as.
REDACTED = "<redacted>"

#: A name that contains one of these (case-insensitive) holds a secret.
SECRET_NAME_PARTS = (
    "KEY",
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "PASSPHRASE",
    "AUTH",
    "CREDENTIAL",
    "COOKIE",
    "SESSION",
    "PRIVATE",
)

_SECRET_NAME = re.compile("|".join(SECRET_NAME_PARTS), re.IGNORECASE)
# scheme://user:password@host: the password part.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/:@\s]*:)[^/@\s]+(?=@)")


def looks_secret(name: str) -> bool:
    """Whether a variable, key or option called *name* holds a secret."""
    return _SECRET_NAME.search(name) is not None


def _redact_value(name: str, value: str) -> str:
    if looks_secret(name):
        return REDACTED
    return _URL_PASSWORD.sub(rf"\g<head>{REDACTED}", value)


#: An option whose last word is one of these holds a secret (``--api-key``, ``--token``,
#: ``--client-secret``); options are named more freely than variables, so the rule is
#: narrower: ``--map-tokens 0`` and ``--max-tokens 4096`` are counts, not secrets.
_SECRET_OPTION = re.compile(
    r"(?:^|[-_])(?:api[-_]?key|key|token|secret|password|passwd|passphrase|credentials?|"
    r"cookie|auth)$",
    re.IGNORECASE,
)


def looks_secret_option(option: str) -> bool:
    """Whether the command-line *option* (``--api-key``, ``-p``...) takes a secret."""
    return _SECRET_OPTION.search(option.lstrip("-")) is not None


def _redact_option_value(option: str, value: str) -> str:
    if looks_secret_option(option):
        return REDACTED
    return _URL_PASSWORD.sub(rf"\g<head>{REDACTED}", value)


def redact_argv(argv: Iterable[str]) -> list[str]:
    """*argv* as it may be shown: the value of a secret-looking option replaced, in both
    ``--api-key=VALUE`` and ``--api-key VALUE`` forms (a following argument that starts with
    ``-`` is taken for an option of its own, not for the value)."""
    shown: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next and not arg.startswith("-"):
            shown.append(REDACTED)
            hide_next = False
            continue
        hide_next = False
        if arg.startswith("-"):
            name, equals, value = arg.partition("=")
            if equals:
                shown.append(f"{name}={_redact_option_value(name, value)}")
                continue
            hide_next = looks_secret_option(arg)
            shown.append(arg)
            continue
        shown.append(_URL_PASSWORD.sub(rf"\g<head>{REDACTED}", arg))
    return shown


def redacted_repr(value: object) -> str:
    """``repr(value)`` with the values of secret-looking keys redacted, in nested mappings,
    lists and tuples too (for example a Ray ``runtime_env`` with ``env_vars``)."""
    return repr(_redacted(value))


class _Shown:
    """Reprs as the given text: a redacted value inside a container's repr."""

    __slots__ = ("_text",)

    def __init__(self, text: str) -> None:
        self._text = text

    def __repr__(self) -> str:
        return self._text


def _redacted(value: object) -> object:
    if isinstance(value, Environment):
        return value
    if isinstance(value, Mapping):
        return {
            key: _Shown(repr(REDACTED))
            if isinstance(key, str) and looks_secret(key)
            else _redacted(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        items = [_redacted(item) for item in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, str):
        return _URL_PASSWORD.sub(rf"\g<head>{REDACTED}", value)
    return value


class Environment(Mapping[str, str]):
    """Environment variables for a tool: a read-only mapping whose repr hides secrets.

    It compares equal to a ``dict`` with the same items, and gives the real values to whoever
    reads them (the transport that starts the tool); only its ``repr`` and ``str`` redact, so
    that a spec printed, logged, or shown among a traceback's locals gives no key away.
    """

    __slots__ = ("_variables",)

    def __init__(self, variables: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        checked: dict[str, str] = {}
        for name, value in dict(variables).items():
            if not isinstance(name, str) or not isinstance(value, str):
                # Neither value is shown: either may be the secret.
                shown = repr(name) if isinstance(name, str) else f"a {type(name).__name__} name"
                raise ValueError(
                    f"env must map str names to str values, got {type(value).__name__} for {shown}"
                )
            checked[name] = value
        self._variables = checked

    def __getitem__(self, name: str) -> str:
        return self._variables[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._variables)

    def __len__(self) -> int:
        return len(self._variables)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Environment):
            return self._variables == other._variables
        if isinstance(other, Mapping):
            return self._variables == dict(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._variables.items()))

    def __repr__(self) -> str:
        shown = {name: _redact_value(name, value) for name, value in self._variables.items()}
        return repr(shown)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (to a Ray node) with its real values: only display redacts.
        return (Environment, (self._variables,))
