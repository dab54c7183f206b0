"""Where the library's log events go: nowhere, unless the application asked for them.

A library prints nothing of its own accord. Events reach the application's structlog
configuration if it made one, else its standard :mod:`logging` configuration (the
``aimcluster`` logger, at that logger's effective level) if that has a handler, else nowhere.
A ``logger=`` passed to :func:`~aimcluster.launch_cluster` always wins.
"""

from __future__ import annotations

import logging
import math
import time
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


#: How often a LazyLogger asks the configuration again (besides whenever structlog becomes
#: configured): a change the application makes later applies within this many seconds.
_RECHECK = 1.0


class LazyLogger:
    """A logger that follows :func:`default_logger` as the application configures logging,
    with the context bound to it: the application may configure logging after it imported
    aimcluster or started a cluster.

    What it stands for is asked again when structlog becomes configured, and otherwise at most
    once a second, not at each event: asking costs microseconds, and an instance logs events on
    every prompt. Once structlog is configured, :meth:`bind` hands out the configured logger
    itself.
    """

    __slots__ = ("_configured", "_context", "_level", "_logger", "_name", "_recheck_at")

    def __init__(self, name: str, context: dict[str, Any] | None = None) -> None:
        self._name = name
        self._context = context or {}
        self._logger: Any = None
        self._configured = False
        self._recheck_at = -math.inf
        # The level below which what it stands for drops events (NOTSET: unknown, none).
        self._level = logging.NOTSET

    def _current(self) -> Any:
        now = time.monotonic()
        configured = structlog.is_configured()
        if now >= self._recheck_at or configured is not self._configured:
            self._logger = default_logger(self._name).bind(**self._context)
            self._configured = configured
            self._recheck_at = now + _RECHECK
            level = getattr(self._logger, "get_effective_level", None)
            self._level = level() if callable(level) else logging.NOTSET
        return self._logger

    def bind(self, **values: Any) -> Any:
        """A logger with *values* added to the context. Once the application has configured
        structlog, that is what it configured, bound (as structlog's own loggers bind): the
        per-prompt events then cost what they cost without aimcluster in between."""
        context = {**self._context, **values}
        if structlog.is_configured():
            return default_logger(self._name).bind(**context)
        return LazyLogger(self._name, context)

    def new(self, **values: Any) -> LazyLogger:
        return LazyLogger(self._name, values)

    def unbind(self, *keys: str) -> LazyLogger:
        return LazyLogger(self._name, {k: v for k, v in self._context.items() if k not in keys})

    try_unbind = unbind

    def debug(self, event: str, *args: Any, **kw: Any) -> Any:
        # Dropped by what it stands for, known without asking the configuration again: an
        # instance logs two DEBUG events on every prompt, which then cost no call into
        # structlog for an application that logs at INFO or above, or not at all.
        if (
            self._level > logging.DEBUG
            and time.monotonic() < self._recheck_at
            and structlog.is_configured() is self._configured
        ):
            return None
        return self._current().debug(event, *args, **kw)

    def info(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._current().info(event, *args, **kw)

    def warning(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._current().warning(event, *args, **kw)

    def error(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._current().error(event, *args, **kw)

    def __getattr__(self, method: str) -> Any:
        # The rarer methods (exception, critical, log, msg...) of what it stands for now.
        return getattr(self._current(), method)


def library_logger(name: str = "aimcluster") -> structlog.typing.FilteringBoundLogger:
    """The library's default logger: :class:`LazyLogger`, typed as the structlog logger it
    stands for."""
    return cast("structlog.typing.FilteringBoundLogger", LazyLogger(name))
