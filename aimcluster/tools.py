"""Built-in tool profiles, and the registry that maps tool names to them.

Each profile is a function that takes the options a user needs and returns a
:class:`~aimcluster.ToolSpec`; ``launch_cluster("mock")`` calls the registered profile with its
defaults.

The AI coding agents: :func:`aider` (a long-lived chat, ready prompt), :func:`aider_oneshot`
(``aider --message``), :func:`claude` (one long-lived process, stream-json in and out),
:func:`codex` (``codex exec --json``, one process per prompt), :func:`gemini` (``gemini -p ...
-o stream-json``, one process per prompt) and :func:`jules` (``jules remote new``, one process
per prompt). Every profile's ``executable`` can point anywhere (the tests use stand-ins).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ._base.framing import Event, JsonlFraming, OneshotFraming, PromptFraming
from ._base.spec import ToolSpec
from ._base.usage import Usage, aider_usage

__all__ = [
    "AIDER_CONFIRM",
    "AIDER_READY",
    "aider",
    "aider_block",
    "aider_oneshot",
    "bash",
    "claude",
    "codex",
    "gemini",
    "get",
    "jules",
    "mock",
    "names",
    "python",
    "register",
]

_MOCK_AGENT = Path(__file__).with_name("mock_agent.py")


#: Part of the prompts the ``python`` and ``bash`` profiles give their tools, drawn once per
#: process: no reply shows the prompt by chance, or by quoting another process's. (Code run
#: in the REPL can print its own: see the README's "One prompt, one reply".)
_NONCE = secrets.token_hex(4)


def aider_block(prompt: str, seq: int) -> str:
    """*prompt* as aider reads several lines as one input: a ``{tag`` ... ``tag}`` block, with
    a tag that no line of the prompt closes. One line that aider would take for the start of a
    block (``{`` or ``{word``) is sent as a block too. *seq* is unused: aider's prompt is
    fixed."""
    if "\n" not in prompt and not prompt.startswith("{"):
        return prompt
    lines = prompt.replace("\r\n", "\n").split("\n")
    tag = "aimcluster"
    while f"{tag}}}" in lines:
        tag += "x"
    return "\n".join([f"{{{tag}", *lines, f"{tag}}}"])


#: How aider (and the mock agent, its look-alike) reads a prompt of several lines.
_AIDER_INPUT = PromptFraming(encode=aider_block, prompt_per_line=True)


#: The mock agent's replies that report a failed step (see ``aimcluster/mock_agent.py``).
MOCK_FAILURE_REPLIES = (
    r"(?m)^No such file: ",
    r"(?m) is not in the chat$",
    r"(?m)^Could not edit ",
    r"(?m)^No files in the chat to edit$",
)
#: aider's own messages for an edit or a file it could not handle. At a line's start: a model's
#: prose that quotes them mid-line is not a failure.
AIDER_FAILURE_REPLIES = (
    r"(?m)^Can't edit ",
    r"(?m)^No such file",
    r"(?m) is not in the chat",
    r"(?m)^Could not edit ",
)


def mock(
    *,
    delay: float = 0.0,
    jitter: float = 0.0,
    crash_rate: float = 0.0,
    hang_rate: float = 0.0,
    startup_delay: float = 0.0,
    seed: int | None = None,
    extra_args: Sequence[str] = (),
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> ToolSpec:
    """The bundled mock agent (``python -m aimcluster.mock_agent``), an aider look-alike: a
    prompt of several lines goes as aider's ``{``...``}`` block (:func:`aider_block`).

    It runs the module's file directly rather than with ``-m``: ``-m`` would first import the
    ``aimcluster`` package (and anyio, structlog, attrs) in every child, which triples start-up
    time and memory when launching hundreds of them. The program is the same.
    """
    argv = [sys.executable, "-u", str(_MOCK_AGENT)]
    options = {
        "--delay": delay,
        "--jitter": jitter,
        "--crash-rate": crash_rate,
        "--hang-rate": hang_rate,
        "--startup-delay": startup_delay,
    }
    for flag, value in options.items():
        if value:
            argv += [flag, str(value)]
    if seed is not None:
        argv += ["--seed", str(seed)]
    argv += extra_args
    return ToolSpec(
        name="mock",
        argv=argv,
        ready=r"> ",
        framing=_AIDER_INPUT,
        cwd=cwd,
        env=env,
        exit_command="/exit",
        failure_replies=MOCK_FAILURE_REPLIES,
    )


# Run by ``python -i -c`` before the first prompt. sys.ps1 shows the number of the input it
# follows, and __aimcluster__(seq, source) runs one prompt as the REPL would run its lines
# (expression values echoed, tracebacks printed), whatever its number of lines: the REPL
# reads one line per prompt, and shows its ps1 exactly once after it.
_PYTHON_BOOT = f"""\
def _aimcluster_boot():
    import ast, builtins, sys, traceback, __main__
    class Prompt:
        seq = 0
        def __str__(self):
            return '[aimcluster-{_NONCE}:%d]>>> ' % Prompt.seq
    sys.ps1, sys.ps2 = Prompt(), '[aimcluster-{_NONCE}]... '
    def run(seq, source):
        Prompt.seq = seq
        try:
            tree = ast.parse(source, '<stdin>')
        except (SyntaxError, ValueError) as exc:
            traceback.print_exception(type(exc), exc, None)
            return
        for node in tree.body:
            try:
                exec(compile(ast.Interactive([node]), '<stdin>', 'single'), __main__.__dict__)
            except SystemExit:
                raise
            except BaseException as exc:
                sys.last_type, sys.last_value = type(exc), exc
                sys.last_traceback = exc.__traceback__
                traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
                return
    builtins.__aimcluster__ = run
_aimcluster_boot()
del _aimcluster_boot
"""


def _python_input(prompt: str, seq: int) -> str:
    return f"__aimcluster__({seq}, {prompt!r})"


def python(*, executable: str = sys.executable, cwd: str | Path | None = None) -> ToolSpec:
    """The Python REPL over pipes: ``python -i -q -u``. ``send("1+1")`` replies ``"2"``.

    A prompt may be any Python source, of any number of lines (``def``, loops, several
    statements): it runs as the REPL runs what is typed at it, values of expressions echoed
    and errors shown as tracebacks, and its reply is everything it printed (also output that
    does not end its line). The REPL's prompt names the input it follows, so a reply can
    never be taken for another prompt's.
    """
    return ToolSpec(
        name="python",
        argv=[executable, "-q", "-u", "-i", "-c", _PYTHON_BOOT],
        ready=rf"\[aimcluster-{_NONCE}:(?P<seq>\d+)\]>>> ",
        framing=PromptFraming(encode=_python_input),
        cwd=cwd,
        # Keep the REPL plain: no colour codes or the 3.13+ fancy REPL escapes in replies.
        env={"PYTHON_BASIC_REPL": "1", "PYTHON_COLORS": "0", "TERM": "dumb"},
        exit_command="exit()",
    )


_BASH_ESCAPES = {
    **{code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F]},
    ord("\\"): "\\\\",
    ord("'"): "\\'",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


def _bash_input(prompt: str, seq: int) -> str:
    # One line whatever the script: ANSI-C quoting ($'...') escapes line breaks and quotes,
    # and eval runs the script as if it had been typed.
    if "\x00" in prompt:
        raise ValueError(
            f"bash cannot take a NUL character (at position {prompt.index(chr(0))}): "
            "its strings end there, so the rest of the script would be lost"
        )
    return f"__aimcluster_seq={seq}; eval $'{prompt.translate(_BASH_ESCAPES)}'"


def bash(*, cwd: str | Path | None = None, env: Mapping[str, str] | None = None) -> ToolSpec:
    """Interactive bash in a pseudo-terminal: ``bash --norc --noprofile --noediting -i``.

    A prompt may be a script of any number of lines; it runs as if typed (through ``eval``).
    The prompt (``PS1``) names the input it follows, with a part drawn at random, so that no
    reply can be taken for another prompt's. Line editing and the terminal's echo are off, so
    replies hold only what the commands printed; ``TERM=dumb`` keeps programs plain.
    """
    return ToolSpec(
        name="bash",
        argv=["bash", "--norc", "--noprofile", "--noediting", "-i"],
        ready=rf"\[aimcluster-{_NONCE}:(?P<seq>\d+)\]\$ ",
        framing=PromptFraming(encode=_bash_input),
        pty=True,
        echo=False,
        cwd=cwd,
        env={
            # Not in PS1: after a syntax error in eval, bash shows the PS1 it expanded before.
            "PROMPT_COMMAND": f"printf '[aimcluster-{_NONCE}:%s]' \"${{__aimcluster_seq:-0}}\"",
            "PS1": "$ ",
            "PS2": "",
            "TERM": "dumb",
            **(env or {}),
        },
        exit_command="exit",
    )


# -- aider ------------------------------------------------------------------------------------

#: aider's input prompt: ``> ``, prefixed with the edit format when it is not the model's default
#: (``diff> ``, ``ask> ``) and with ``multi`` in multiline mode (``ask multi> ``, ``multi> ``).
#: aider/io.py ``InputOutput.get_input``. Before it, aider lists the files in the chat, one a line.
AIDER_READY = r"^(?:[a-z][a-z-]*(?: multi)?|multi)?> "

#: aider's ``confirm_ask()`` question, for :attr:`ToolSpec.responders` when aider runs without
#: ``--yes-always``: ``Create new file? (Y)es/(N)o [Yes]: ``, optionally with ``(A)ll``,
#: ``(S)kip all`` and ``(D)on't ask again`` (aider/io.py).
AIDER_CONFIRM = r"\(Y\)es/\(N\)o(?:/\(A\)ll)?(?:/\(S\)kip all)?(?:/\(D\)on't ask again)? \[\w+\]: "


def _aider_argv(
    executable: str | os.PathLike[str],
    *,
    model: str | None,
    api_base: str | None,
    model_metadata_file: str | os.PathLike[str] | None,
    edit_format: str | None,
    git: bool,
    extra_args: Sequence[str],
) -> list[str]:
    argv = [os.fspath(executable)]
    if model is not None:
        argv += ["--model", model]
    if edit_format is not None:
        argv += ["--edit-format", edit_format]
    argv += [
        # Plain input() and print(): no prompt_toolkit (it needs a terminal) and no ANSI codes.
        "--no-fancy-input",
        "--no-pretty",
        # The whole reply at once: fewer chunk boundaries inside a reply for the framer to see.
        "--no-stream",
        # Every confirm_ask() answered at once without printing it, so no question can leave
        # the pipe waiting; questions needing an explicit yes (shell commands) get "no".
        "--yes-always",
        # Start-up network calls and questions: the PyPI version check, the analytics opt-in,
        # and the release notes offered on a version's first run (webbrowser.open under
        # --yes-always).
        "--no-check-update",
        "--no-analytics",
        "--no-show-release-notes",
        # Model warnings offer a docs URL (webbrowser.open under --yes-always) and, for some
        # providers, pip-install missing packages.
        "--no-show-model-warnings",
        # No repo map: no tree-sitter scan of the project and no .aider.tags.cache directory.
        "--map-tokens", "0",
        # No flake8 after each edit: with --yes-always, lint errors go back to the model for
        # another, unrequested round.
        "--no-auto-lint",
        # No shell-command suggestions (they would be declined anyway) and no URL scraping.
        "--no-suggest-shell-commands",
        "--no-detect-urls",
        # Instances sharing a directory would interleave .aider.chat.history.md and
        # .aider.input.history in it; the cluster keeps the replies itself.
        "--chat-history-file", os.devnull,
        "--input-history-file", os.devnull,
    ]  # fmt: skip
    if git:
        # No commits (no index.lock fights between instances) and no offer to edit .gitignore.
        argv += ["--no-auto-commits", "--no-dirty-commits", "--no-gitignore"]
    else:
        # Without a repo aider would offer to `git init` the directory (yes, under --yes-always).
        argv += ["--no-git"]
    if api_base is not None:
        argv += ["--openai-api-base", api_base]
    if model_metadata_file is not None:
        argv += ["--model-metadata-file", os.fspath(model_metadata_file)]
    argv += extra_args
    return argv


def _aider_env(api_key: str | None, env: Mapping[str, str] | None) -> dict[str, str]:
    child_env = {
        # prompt_toolkit's is_dumb_terminal(): belt and braces for the two flags above.
        "TERM": "dumb",
        # litellm downloads its model price list from GitHub on import unless told not to.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        # Off a terminal, aider's rich console hard-wraps every line at 80 columns, replies
        # included; rich takes the width from COLUMNS.
        "COLUMNS": "10000",
    }
    if api_key is not None:
        child_env["OPENAI_API_KEY"] = api_key
    child_env.update(env or {})
    return child_env


def aider(
    *,
    executable: str | os.PathLike[str] = "aider",
    model: str | None = None,
    api_base: str | None = None,
    api_key: str | None = None,
    model_metadata_file: str | os.PathLike[str] | None = None,
    edit_format: str | None = "whole",
    git: bool = False,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    settle: float | None = 0.1,
) -> ToolSpec:
    """aider as a long-lived chat over pipes that never asks a question and never goes online
    on its own. It runs::

        aider [--model MODEL] --edit-format whole --no-fancy-input --no-pretty --no-stream
              --yes-always --no-check-update --no-analytics --no-show-release-notes
              --no-show-model-warnings --map-tokens 0 --no-auto-lint
              --no-suggest-shell-commands --no-detect-urls
              --chat-history-file /dev/null --input-history-file /dev/null
              --no-git | --no-auto-commits --no-dirty-commits --no-gitignore
              [--openai-api-base URL] [--model-metadata-file FILE] [EXTRA_ARGS...]

    with ``TERM=dumb``, ``LITELLM_LOCAL_MODEL_COST_MAP=True`` and ``COLUMNS=10000``; a reply
    ends at aider's ``> `` prompt (:data:`AIDER_READY`) once aider has printed nothing more for
    *settle* seconds. A prompt of several lines goes as aider's ``{``...``}`` block
    (:func:`aider_block`).

    :param model: a litellm model name; ``openai/<name>`` talks to any OpenAI-compatible server
    :param api_base: the server's base URL, ending in ``/v1`` (``--openai-api-base``)
    :param api_key: put in the child's ``OPENAI_API_KEY`` (not on the command line, where ``ps``
        would show it)
    :param model_metadata_file: a litellm-style JSON file with the model's context window and
        costs; without one aider downloads litellm's price list from GitHub at every start
    :param git: run in the git repository at *cwd* without committing; by default aider runs
        with ``--no-git``
    :param settle: seconds of quiet after aider's prompt before the reply counts as complete
        (``None``: at once); see :attr:`~aimcluster.PromptFraming.settle`
    """
    return ToolSpec(
        name="aider",
        argv=_aider_argv(
            executable,
            model=model,
            api_base=api_base,
            model_metadata_file=model_metadata_file,
            edit_format=edit_format,
            git=git,
            extra_args=extra_args,
        ),
        ready=AIDER_READY,
        # aider's prompt is fixed, and a reply may hold a line that looks like it (a quoted
        # "> " line): the reply ends only once aider has been quiet for a moment after it.
        framing=attrs.evolve(_AIDER_INPUT, settle=settle),
        env=_aider_env(api_key, env),
        cwd=cwd,
        # A cold start imports litellm and friends: seconds, more on a busy machine.
        startup_timeout=120,
        exit_command="/exit",
        shutdown_grace=10,
        failure_replies=AIDER_FAILURE_REPLIES,
        usage=aider_usage,
    )


def aider_oneshot(
    *,
    executable: str | os.PathLike[str] = "aider",
    model: str | None = None,
    api_base: str | None = None,
    api_key: str | None = None,
    model_metadata_file: str | os.PathLike[str] | None = None,
    edit_format: str | None = "whole",
    git: bool = False,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> ToolSpec:
    """aider for one instruction per process: the :func:`aider` command line plus
    ``--message PROMPT``, stdin closed; the reply is everything aider prints until it exits.
    """
    argv = _aider_argv(
        executable,
        model=model,
        api_base=api_base,
        model_metadata_file=model_metadata_file,
        edit_format=edit_format,
        git=git,
        extra_args=extra_args,
    )
    return ToolSpec(
        name="aider_oneshot",
        argv=[*argv, "--message", "{prompt}"],
        framing=OneshotFraming(),
        env=_aider_env(api_key, env),
        cwd=cwd,
        shutdown_grace=10,
        usage=aider_usage,
    )


# -- Claude Code ----------------------------------------------------------------------------


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


# -- Codex CLI ------------------------------------------------------------------------------


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


# -- Gemini CLI -----------------------------------------------------------------------------


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


# -- Jules ----------------------------------------------------------------------------------


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


_REGISTRY: dict[str, Callable[[], ToolSpec]] = {
    "mock": mock,
    "python": python,
    "bash": bash,
    "aider": aider,
    "aider_oneshot": aider_oneshot,
    "claude": claude,
    "codex": codex,
    "gemini": gemini,
    "jules": jules,
}


def register(name: str, profile: Callable[[], ToolSpec]) -> None:
    """Make ``launch_cluster(name)`` use ``profile()``. Replaces an earlier registration."""
    _REGISTRY[name] = profile


def names() -> list[str]:
    """The registered tool names, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> ToolSpec:
    """The ToolSpec registered as *name*.

    :raises ValueError: for an unknown name; the message lists the known names
    """
    try:
        profile = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown tool {name!r}; known tools are: {', '.join(names())} "
            "(or pass an aimcluster.ToolSpec)"
        ) from None
    return profile()
