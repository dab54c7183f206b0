"""The Codex CLI (:func:`codex`): ``codex exec --json``, one process per prompt.

The protocol facts: the ``turn.completed``/``turn.failed`` events that end a run and the
``agent_message`` item that is the answer (:data:`CODEX_EVENTS`), the message of a 429 that
outlasted codex's retries (:data:`CODEX_RATE_LIMIT`), the ``Reconnecting... n/N`` events of
its own retries, the tokens of ``turn.completed``, and the per-instance ``config.toml``
(:func:`codex_config`) that names the provider and turns analytics and history off.
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
    "CODEX_EVENTS",
    "CODEX_PROVIDER",
    "CODEX_RATE_LIMIT",
    "codex",
    "codex_config",
]


def _codex_answer(events: Sequence[Event]) -> str:
    text = ""
    for event in events:
        item = event.get("item")
        if (
            event.get("type") == "item.completed"
            and isinstance(item, dict)
            and item.get("type") == "agent_message"
        ):
            text = str(item.get("text", ""))
    return text


def _codex_failure(events: Sequence[Event]) -> str | None:
    # Only the terminal event decides: codex 0.171 also emits an `item.completed` of type
    # "error" before every turn whose model it has no metadata for ("Model metadata for `m`
    # not found. Defaulting to fallback metadata; ..."), and an `error` event for each of its
    # own retries ("Reconnecting... 1/5 (...)"); neither means the turn failed.
    last = events[-1]
    if last.get("type") != "turn.failed":
        return None
    error: Any = last.get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return "turn failed"


#: ``codex exec --json``: ``turn.completed`` or ``turn.failed`` ends the run.
CODEX_EVENTS = JsonlFraming(
    terminal=lambda event: event.get("type") in ("turn.completed", "turn.failed"),
    answer=_codex_answer,
    failure=_codex_failure,
)

#: What codex 0.171 ends a turn with once a 429 outlasts its own retries:
#: ``exceeded retry limit, last status: 429 Too Many Requests[, request id: ...]``. Its quota
#: and plan-limit failures ("Quota exceeded. Check your plan and billing details.", "You've
#: hit your usage limit. Try again later.") do not clear within a pause and stay ToolErrors.
CODEX_RATE_LIMIT = r"(?i)\blast status: 429\b|\b429 Too Many Requests\b"

#: The provider the codex profile configures in each instance's own ``config.toml``.
CODEX_PROVIDER = "aimcluster"

_OPENAI_API_BASE = "https://api.openai.com/v1"


def _codex_retried(event: Mapping[str, Any]) -> bool:
    """Whether *event* is codex retrying a request on its own: an ``error`` event whose
    message starts ``Reconnecting... n/N`` (one per retry, before the final outcome)."""
    return event.get("type") == "error" and str(event.get("message", "")).startswith(
        "Reconnecting..."
    )


def _codex_usage(text: str, events: Sequence[Mapping[str, Any]]) -> Usage | None:
    """The tokens ``turn.completed`` reports (``input_tokens``, which include
    ``cached_input_tokens``, and ``output_tokens``); codex reports no cost."""
    for event in reversed(events):
        usage: Any = event.get("usage")
        if event.get("type") == "turn.completed" and isinstance(usage, dict):
            counts = {
                key: value if isinstance(value, int) else None
                for key in ("input_tokens", "output_tokens", "cached_input_tokens")
                for value in [usage.get(key)]
            }
            return Usage(
                input_tokens=counts["input_tokens"],
                output_tokens=counts["output_tokens"],
                cached_tokens=counts["cached_input_tokens"],
            )
    return None


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes), for what URLs and names hold.
    return json.dumps(value)


def codex_config(*, api_base: str | None = None, max_retries: int = 0) -> str:
    """The ``config.toml`` the :func:`codex` profile writes into each instance's own
    ``CODEX_HOME``: a Responses API provider at *api_base* whose key is ``CODEX_API_KEY``,
    *max_retries* as its ``stream_max_retries``, and analytics, feedback, OpenTelemetry,
    update checks and history off. Without *api_base*: ``OPENAI_BASE_URL`` from the
    environment, as the OpenAI SDK takes it, else the OpenAI API."""
    base = api_base or os.environ.get("OPENAI_BASE_URL") or _OPENAI_API_BASE
    return f"""\
# Written by aimcluster for this instance only; rewritten before each process starts.
model_provider = {_toml_string(CODEX_PROVIDER)}
check_for_update_on_startup = false

[analytics]
enabled = false

[feedback]
enabled = false

[otel]
exporter = "none"
log_user_prompt = false

[history]
persistence = "none"

[model_providers.{CODEX_PROVIDER}]
name = {_toml_string(CODEX_PROVIDER)}
base_url = {_toml_string(base)}
wire_api = "responses"
env_key = "CODEX_API_KEY"
stream_max_retries = {max_retries}
"""


def codex(
    *,
    executable: str | os.PathLike[str] = "codex",
    model: str | None = None,
    api_key: str | None = None,
    api_base: str | None = None,
    max_retries: int = 0,
    sandbox: str | None = None,
    skip_git_repo_check: bool = True,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> ToolSpec:
    """The Codex CLI, one process per prompt, stdin closed (``codex exec`` reads an open stdin
    to EOF before it starts)::

        codex exec --json [--skip-git-repo-check] [-s SANDBOX] [-m MODEL] [EXTRA_ARGS...] -- PROMPT

    Each instance gets its own ``CODEX_HOME`` (``{state}/codex``) holding a ``config.toml``
    (:func:`codex_config`) written before each run: a ``wire_api = "responses"`` provider at
    *api_base*, keyed by ``CODEX_API_KEY``, with analytics, feedback, telemetry and history
    off. The user's ``~/.codex`` is never read or written, so a ``codex login`` session is not
    used either: give ``api_key`` (or ``CODEX_API_KEY`` in the environment).

    ``Reply.text`` is the last ``agent_message`` item's text; ``turn.failed`` raises
    :class:`~aimcluster.ToolError`, except a 429 that outlasted codex's own retries
    (:data:`CODEX_RATE_LIMIT`), which pauses the cluster and sends the prompt again.
    ``Reply.usage`` has the tokens of ``turn.completed``; each ``Reconnecting... n/N`` event
    counts as one of the tool's own retries.

    :param api_base: an OpenAI-style base URL ending in ``/v1`` (default ``OPENAI_BASE_URL``
        from the environment, else the OpenAI API)
    :param api_key: put in the child's ``CODEX_API_KEY``
    :param max_retries: codex's own ``stream_max_retries``: how often it retries a 429 that
        carries ``Retry-After`` (waiting as told) or a dropped stream. The default 0 leaves
        rate limits to the cluster, which pauses every instance, not just this one (one layer
        of backoff, not two). A 5xx or a refused connection is still retried by codex itself
        (``request_max_retries``, its default 4, quick and silent).
    :param sandbox: ``read-only`` (codex's default), ``workspace-write`` or
        ``danger-full-access``
    :param skip_git_repo_check: allow running outside a git repository (codex refuses
        otherwise: "Not inside a trusted directory ..."); on by default for unattended use
    """
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries!r}")
    argv = [os.fspath(executable), "exec", "--json"]
    if skip_git_repo_check:
        argv.append("--skip-git-repo-check")
    if sandbox is not None:
        argv += ["-s", sandbox]
    if model is not None:
        argv += ["-m", model]
    # After "--" a prompt that starts with "-" is still the prompt, not an option.
    argv += [*extra_args, "--", "{prompt}"]
    child_env = {"CODEX_HOME": "{state}/codex"}
    if api_key is not None:
        child_env["CODEX_API_KEY"] = api_key
    child_env.update(env or {})
    return ToolSpec(
        name="codex",
        argv=argv,
        # stdout carries only events; stderr (warnings, "Reading ... from stdin") is logged.
        merge_stderr=False,
        framing=OneshotFraming(events=CODEX_EVENTS),
        env=child_env,
        cwd=cwd,
        files={
            "{state}/codex/config.toml": codex_config(api_base=api_base, max_retries=max_retries)
        },
        rate_limit=CODEX_RATE_LIMIT,
        usage=_codex_usage,
        retry_event=_codex_retried,
    )
