"""Where the library's log events go: nowhere, unless the application asked for them.

A library prints nothing of its own accord. Events reach the application's structlog
configuration if it made one, else its standard :mod:`logging` configuration (the
``aimcluster`` logger, at that logger's effective level) if that has a handler, else nowhere.
A ``logger=`` passed to :func:`~aimcluster.launch_cluster` always wins.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import structlog

__all__ = ["LazyLogger", "default_logger", "library_logger"]

_LEVELS = (logging.NOTSET, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)


class _Nowhere:
    """A logger that drops what it is given."""

    def msg(self, *args: Any, **kwargs: Any) -> None:
        pass

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _level(logger: logging.Logger) -> int:
    # structlog filters at the standard levels only: round a custom one down to one of them.
    effective = logger.getEffectiveLevel()
    return max(level for level in (*_LEVELS, logging.CRITICAL) if level <= effective)


def default_logger(name: str = "aimcluster") -> structlog.typing.FilteringBoundLogger:
    """The logger the library uses when it was given none, as the application configured it
    now (see the module's docstring)."""
    if structlog.is_configured():
        configured: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
        return configured
    standard = logging.getLogger(name)
    if standard.hasHandlers():
        logger: structlog.typing.FilteringBoundLogger = structlog.wrap_logger(
            standard,
            wrapper_class=structlog.make_filtering_bound_logger(_level(standard)),
            processors=[structlog.processors.KeyValueRenderer(key_order=["event"])],
        )
        return logger
    silent: structlog.typing.FilteringBoundLogger = structlog.wrap_logger(
        _Nowhere(), wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL)
    )
    return silent


class LazyLogger:
    """A logger that asks :func:`default_logger` at each event, with the context bound to it:
    the application may configure logging after it imported aimcluster or started a cluster.
    """

    def __init__(self, name: str, context: dict[str, Any] | None = None) -> None:
        self._name = name
        self._context = context or {}

    def bind(self, **values: Any) -> LazyLogger:
        return LazyLogger(self._name, {**self._context, **values})

    def new(self, **values: Any) -> LazyLogger:
        return LazyLogger(self._name, values)

    def unbind(self, *keys: str) -> LazyLogger:
        return LazyLogger(self._name, {k: v for k, v in self._context.items() if k not in keys})

    try_unbind = unbind

    def __getattr__(self, method: str) -> Any:
        # debug, info, warning, error... of the logger the application's configuration
        # gives now.
        return getattr(default_logger(self._name).bind(**self._context), method)


def library_logger(name: str = "aimcluster") -> structlog.typing.FilteringBoundLogger:
    """The library's default logger: :class:`LazyLogger`, typed as the structlog logger it
    stands for."""
    return cast("structlog.typing.FilteringBoundLogger", LazyLogger(name))
