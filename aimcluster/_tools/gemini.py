"""Gemini CLI (:func:`gemini`): ``gemini -o stream-json --prompt=...``, one process per prompt.

The protocol facts: the ``result`` event that ends a run, its ``status`` and ``stats``, and
the assistant ``message`` events that make the answer (:data:`GEMINI_EVENTS`); what the CLI
prints for a 429 its retries did not clear (:data:`GEMINI_RATE_LIMIT`); and the
per-instance home and ``settings.json`` (auth method, retries, telemetry off) it needs to
run unattended.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._base.framing import Event, JsonlFraming, OneshotFraming
from .._base.spec import ToolSpec
from .._base.usage import Usage

__all__ = [
    "GEMINI_EVENTS",
    "GEMINI_MAX_RETRIES",
    "GEMINI_RATE_LIMIT",
    "gemini",
]


def _gemini_answer(events: Sequence[Event]) -> str:
    return "".join(
        str(event.get("content", ""))
        for event in events
        if event.get("type") == "message" and event.get("role") == "assistant"
    )


def _gemini_failure(events: Sequence[Event]) -> str | None:
    last = events[-1]
    if last.get("status") == "success":
        return None
    error: Any = last.get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return f"status {last.get('status')!r}"


def _gemini_usage(text: str, events: Sequence[Mapping[str, Any]]) -> Usage | None:
    """The run's tokens from its ``result`` event's ``stats``: ``input_tokens`` (cached ones
    included), ``output_tokens`` and ``cached``, summed by the CLI over every model request of
    the run (the router's too, in auto mode). It reports no cost and no request count."""
    stats: Any = events[-1].get("stats") if events else None
    if not isinstance(stats, dict):
        return None

    def count(key: str) -> int | None:
        value = stats.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return Usage(
        input_tokens=count("input_tokens"),
        output_tokens=count("output_tokens"),
        cached_tokens=count("cached"),
    )


#: Gemini CLI's stream-json: the ``result`` event ends the run.
GEMINI_EVENTS = JsonlFraming(
    terminal=lambda event: event.get("type") == "result",
    answer=_gemini_answer,
    failure=_gemini_failure,
)

#: What Gemini CLI 0.61 prints when the API answered 429 and its own retries are spent
#: (packages/core/src/utils/errorParsing.ts): ``[API Error: <the server's message>]`` and, by
#: auth method, "Please wait and try again later. To increase your limits, ..." (API key,
#: Vertex) or "Possible quota limitations in place ..." (others). The server's message varies
#: ("Resource has been exhausted (e.g. check quota).", "You exceeded your current quota, ...");
#: the CLI's suffix does not.
GEMINI_RATE_LIMIT = (
    r"Please wait and try again later\. To increase your limits"
    r"|Possible quota limitations in place"
    r"|(?i:\b429\b|rate limit|exceeded your current quota|resource has been exhausted)"
)

#: The most ``max_retries`` Gemini CLI takes: its ``general.maxAttempts`` "cannot exceed 10".
GEMINI_MAX_RETRIES = 9


def _gemini_settings(auth_type: str, max_retries: int) -> str:
    """The per-instance ``~/.gemini/settings.json`` (setting names as in 0.61's schema,
    packages/cli/src/config/settingsSchema.ts)."""
    settings = {
        # Without a selected auth method a headless run fails: "Invalid auth method selected."
        "security": {"auth": {"selectedType": auth_type}},
        # Attempts per model request, retries included: 429s and 5xx, 5 s to 30 s apart.
        "general": {
            "maxAttempts": max_retries + 1,
            "enableAutoUpdate": False,
            "enableAutoUpdateNotification": False,
        },
        "privacy": {"usageStatisticsEnabled": False},
        "telemetry": {"enabled": False},
    }
    return json.dumps(settings, indent=2) + "\n"


def gemini(
    *,
    executable: str | os.PathLike[str] = "gemini",
    model: str | None = "flash",
    api_base: str | None = None,
    api_key: str | None = None,
    max_retries: int = 0,
    auth_type: str = "gemini-api-key",
    approval_mode: str | None = None,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> ToolSpec:
    """Gemini CLI, one headless process per prompt, stdin closed::

        gemini -o stream-json [-m MODEL] [--approval-mode MODE] [EXTRA_ARGS...] --prompt=PROMPT

    (``--prompt=PROMPT`` is ``-p PROMPT`` in one argument, so that a prompt starting with ``-``
    is not taken for an option.) ``Reply.text`` is the assistant ``message`` contents joined;
    a ``result`` with ``status: "error"`` raises :class:`~aimcluster.ToolError`, except a rate
    limit (:data:`GEMINI_RATE_LIMIT`), for which the cluster pauses and sends the prompt again.
    ``Reply.usage`` has the tokens of the ``result`` event's ``stats`` (no cost: the CLI
    reports none). The CLI's own retries show only on its stderr, so they are not counted in
    ``tool_retries``.

    Set up to run unattended: each instance has a home of its own (``HOME={state}/home``, and
    ``TMPDIR`` there too, where the CLI writes its error reports), with a
    ``~/.gemini/settings.json`` that selects *auth_type*, sets the CLI's own retries to
    *max_retries*, and turns off telemetry, usage statistics and update checks;
    ``GEMINI_CLI_TRUST_WORKSPACE=true`` passes the trusted-folder gate (a fresh home trusts no
    folder: exit 55). A user's own ``~/.gemini`` is never read or changed.

    :param model: ``-m``; the default ``flash`` is the CLI's alias for its current Flash
        model. ``None`` leaves the CLI in its ``auto`` mode, where a router request precedes
        every prompt: two model requests a prompt instead of one.
    :param api_base: the server's root (``GOOGLE_GEMINI_BASE_URL``), without ``/v1beta``:
        ``http://127.0.0.1:8080`` for a proxy or a stand-in
    :param api_key: put in the child's ``GEMINI_API_KEY``
    :param max_retries: how often the CLI itself retries a failed model request (a 429, a 5xx)
        before it reports the failure, waiting 5 s, 10 s, ... up to 30 s each time. The default,
        0, leaves the waiting to the cluster: a 429 reaches it at once, and it pauses every
        instance (one layer of backoff, not two); a 5xx then fails the prompt
        (:class:`~aimcluster.ToolError`). At most 9.
    :param auth_type: the settings' ``security.auth.selectedType``: ``gemini-api-key``, or
        ``vertex-ai`` (with ``GOOGLE_GENAI_USE_VERTEXAI`` etc. in *env*)
    """
    if not 0 <= max_retries <= GEMINI_MAX_RETRIES:
        raise ValueError(
            f"gemini: max_retries must be between 0 and {GEMINI_MAX_RETRIES}, got {max_retries!r}"
        )
    argv = [os.fspath(executable), "-o", "stream-json"]
    if model is not None:
        argv += ["-m", model]
    if approval_mode is not None:
        argv += ["--approval-mode", approval_mode]
    argv += [*extra_args, "--prompt={prompt}"]
    child_env = {
        "HOME": "{state}/home",
        "TMPDIR": "{state}/home",
        "GEMINI_CLI_TRUST_WORKSPACE": "true",
    }
    if api_base is not None:
        child_env["GOOGLE_GEMINI_BASE_URL"] = api_base.rstrip("/")
    if api_key is not None:
        child_env["GEMINI_API_KEY"] = api_key
    child_env.update(env or {})
    return ToolSpec(
        name="gemini",
        argv=argv,
        # stdout carries only events; stderr (warnings, retries, stack traces) is logged.
        merge_stderr=False,
        framing=OneshotFraming(events=GEMINI_EVENTS),
        env=child_env,
        cwd=cwd,
        files={"{state}/home/.gemini/settings.json": _gemini_settings(auth_type, max_retries)},
        rate_limit=GEMINI_RATE_LIMIT,
        # Its own retries show only on stderr ("Attempt 1 failed ... Retrying after 5838ms..."),
        # not as events: there is no retry_event to count.
        usage=_gemini_usage,
    )
