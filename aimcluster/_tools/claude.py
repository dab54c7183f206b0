"""Claude Code (:func:`claude`): one long-lived process per instance, stream-json in and out.

The protocol facts: the user-message event each prompt is written as, the ``result`` event
that ends a turn and what it says of errors (:data:`CLAUDE_EVENTS`), the statuses that are
rate limits (:data:`CLAUDE_RATE_LIMIT`), the ``api_retry`` events of the CLI's own retries,
where a turn's tokens and cost are reported (:func:`claude_usage`), and the environment that
keeps each instance's state apart and its traffic quiet (:data:`CLAUDE_QUIET_ENV`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._base.framing import Event, JsonlFraming
from .._base.spec import ToolSpec
from .._base.usage import Usage

__all__ = [
    "CLAUDE_EVENTS",
    "CLAUDE_MAX_RETRIES",
    "CLAUDE_QUIET_ENV",
    "CLAUDE_RATE_LIMIT",
    "claude",
    "claude_usage",
]


def _claude_encode(prompt: str) -> str:
    return json.dumps({"type": "user", "message": {"role": "user", "content": prompt}})


def _claude_answer(events: Sequence[Event]) -> str:
    result = events[-1].get("result")
    return result if isinstance(result, str) else ""


def _claude_failure(events: Sequence[Event]) -> str | None:
    result = events[-1]
    if not result.get("is_error"):
        return None
    errors = result.get("errors")
    if isinstance(errors, list) and errors:
        message = "; ".join(str(error) for error in errors)
    else:
        text = result.get("result")
        message = str(text) if text else str(result.get("subtype", "error"))
    # The HTTP status of an API error the CLI gave up on is a field of its own, and its text
    # does not always repeat it ("Invalid API key · Fix external API key" for a 401): put it
    # at the end, where CLAUDE_RATE_LIMIT looks for it.
    status = result.get("api_error_status")
    if isinstance(status, int) and not isinstance(status, bool):
        message = f"{message} (api_error_status {status})"
    return message


#: Claude Code's stream-json: a ``result`` event ends each turn.
CLAUDE_EVENTS = JsonlFraming(
    terminal=lambda event: event.get("type") == "result",
    answer=_claude_answer,
    encode=_claude_encode,
    failure=_claude_failure,
)

#: A failed turn that is a rate limit: Claude Code ends a turn whose model request it gave up
#: on with ``is_error`` and ``api_error_status`` (2.1.332, a 429: ``API Error: Request
#: rejected (429) · <the server's message>``; an overload, 529: ``API Error: 529 Overloaded.
#: ...``), which the failure message ends with. Both clear with time: the cluster pauses and
#: sends the prompt again. Other statuses (401, 403, 400, 500, ...) are ToolErrors.
CLAUDE_RATE_LIMIT = r"\(api_error_status (?:429|529)\)$"

#: The fleet default of the :func:`claude` profile's ``max_retries`` (see there).
CLAUDE_MAX_RETRIES = 2

#: What the :func:`claude` profile turns off. ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC``
#: alone implies the others in 2.1.332 (telemetry, error reporting, update checks, feature
#: flags, the ``HEAD /api/hello`` connectivity check); they are set too in case a version
#: stops treating them as one.
CLAUDE_QUIET_ENV: Mapping[str, str] = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
}


def _claude_retried(event: Mapping[str, Any]) -> bool:
    """Whether *event* is Claude Code retrying a model request on its own: a ``system``
    event of subtype ``api_retry`` (``attempt``, ``max_retries``, ``retry_delay_ms``,
    ``error_status``, ``error``), one per retry."""
    return event.get("type") == "system" and event.get("subtype") == "api_retry"


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def claude_usage(text: str, events: Sequence[Mapping[str, Any]]) -> Usage | None:
    """The tokens and cost of one Claude Code turn, from its ``result`` event.

    A long-lived process reports ``total_cost_usd`` and ``modelUsage`` for the whole session
    so far; 2.1.332 adds ``model_usage_since_last_result`` (per model: ``inputTokens``,
    ``outputTokens``, ``cacheReadInputTokens``, ``cacheCreationInputTokens``, ``costUSD``),
    which is this turn's, subagents included, and is what is summed here. Without it (older
    versions) the turn's ``usage`` and ``total_cost_usd`` are taken, which is exact for the
    first turn of a process. ``input_tokens`` counts cache reads and writes too;
    ``requests`` is the number of model answers (distinct assistant message ids) in the turn.
    """
    result = next((e for e in reversed(events) if e.get("type") == "result"), None)
    if result is None:
        return None
    answers = {
        message.get("id")
        for event in events
        if event.get("type") == "assistant"
        and isinstance(message := event.get("message"), dict)
        and message.get("model") != "<synthetic>"
    }
    per_model = result.get("model_usage_since_last_result")
    if isinstance(per_model, dict):
        models = [m for m in per_model.values() if isinstance(m, dict)]
        fresh = sum(_int(m.get("inputTokens")) for m in models)
        read = sum(_int(m.get("cacheReadInputTokens")) for m in models)
        written = sum(_int(m.get("cacheCreationInputTokens")) for m in models)
        costs = [m.get("costUSD") for m in models]
        return Usage(
            input_tokens=fresh + read + written,
            output_tokens=sum(_int(m.get("outputTokens")) for m in models),
            cached_tokens=read,
            cost_usd=float(sum(c for c in costs if isinstance(c, int | float))),
            requests=len(answers),
        )
    usage = result.get("usage")
    if not isinstance(usage, dict):
        return None
    read = _int(usage.get("cache_read_input_tokens"))
    cost = result.get("total_cost_usd")
    return Usage(
        input_tokens=_int(usage.get("input_tokens"))
        + read
        + _int(usage.get("cache_creation_input_tokens")),
        output_tokens=_int(usage.get("output_tokens")),
        cached_tokens=read,
        cost_usd=float(cost) if isinstance(cost, int | float) else None,
        requests=len(answers),
    )


def claude(
    *,
    executable: str | os.PathLike[str] = "claude",
    model: str | None = None,
    api_key: str | None = None,
    api_base: str | None = None,
    max_retries: int | None = CLAUDE_MAX_RETRIES,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> ToolSpec:
    """Claude Code as one long-lived process per instance, JSON lines in and out::

        claude -p --input-format stream-json --output-format stream-json --verbose
               [--model MODEL] [EXTRA_ARGS...]

    Each prompt is written as ``{"type":"user","message":{"role":"user","content":PROMPT}}``;
    the reply is the events up to the turn's ``result`` event, ``Reply.text`` its ``result``
    field. ``is_error: true`` raises :class:`~aimcluster.ToolError`, except a rate limit the
    CLI gave up on (:data:`CLAUDE_RATE_LIMIT`), which pauses the cluster and sends the prompt
    again. ``Reply.usage`` is the turn's tokens and cost (:func:`claude_usage`); each
    ``system``/``api_retry`` event counts as one of the tool's own retries.

    Set up for unattended fleets: each instance keeps Claude Code's configuration and state
    (``.claude.json``, settings, sessions) in a directory of its own, ``CLAUDE_CONFIG_DIR=
    {state}/claude``, so instances never write one file concurrently and the user's
    ``~/.claude.json`` and ``~/.claude`` are neither read nor written. ``HOME`` stays the
    user's: the commands the agent runs (git, ssh, package managers) keep their
    configuration. Telemetry, error reporting, update checks and other non-essential traffic
    are off (:data:`CLAUDE_QUIET_ENV`). Print mode has no onboarding or trust dialog.

    :param api_key: put in the child's ``ANTHROPIC_API_KEY``
    :param api_base: put in ``ANTHROPIC_BASE_URL``: the server's root, as the Anthropic SDK
        takes it (``https://gateway.example``, not ``.../v1``); the CLI posts to
        ``{api_base}/v1/messages``
    :param max_retries: the CLI's own retries of a failed model request
        (``CLAUDE_CODE_MAX_RETRIES``; 429, 5xx, dropped connections), with its own exponential
        backoff (0.5 s, 1 s, 2 s, ... with jitter). The CLI's default, 10, keeps a throttled
        instance retrying on its own for minutes while the rest of the fleet keeps sending;
        the fleet default, 2, rides out a blip in about 2 s and leaves a rate limit that lasts
        to the cluster, which pauses every instance at once (one layer of backoff, not two).
        ``None`` leaves the CLI's default.
    :param env: added last: overrides any variable above
    """
    if max_retries is not None and max_retries < 0:
        raise ValueError(f"max_retries must be >= 0 or None, got {max_retries!r}")
    argv = [
        os.fspath(executable),
        "-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose",
    ]  # fmt: skip
    if model is not None:
        argv += ["--model", model]
    argv += extra_args
    child_env = {"CLAUDE_CONFIG_DIR": "{state}/claude", **CLAUDE_QUIET_ENV}
    if max_retries is not None:
        child_env["CLAUDE_CODE_MAX_RETRIES"] = str(max_retries)
    if api_base is not None:
        child_env["ANTHROPIC_BASE_URL"] = api_base
    if api_key is not None:
        child_env["ANTHROPIC_API_KEY"] = api_key
    child_env.update(env or {})
    return ToolSpec(
        name="claude",
        argv=argv,
        # stdout carries only events; stderr (warnings, "Reading ... from stdin") is logged.
        merge_stderr=False,
        framing=CLAUDE_EVENTS,
        env=child_env,
        cwd=cwd,
        rate_limit=CLAUDE_RATE_LIMIT,
        usage=claude_usage,
        retry_event=_claude_retried,
    )
