"""aider: the long-lived chat (:func:`aider`) and one instruction per process
(:func:`aider_oneshot`).

The protocol facts: a prompt of several lines goes as aider's ``{tag`` ... ``tag}`` block
(:func:`aider_block`, shared with the mock agent, its look-alike); aider's input prompt is a
fixed ``> `` with an optional edit-format prefix (:data:`AIDER_READY`), so a reply ends only
after a moment of quiet; its confirm questions (:data:`AIDER_CONFIRM`) and failure messages
(:data:`AIDER_FAILURE_REPLIES`); and the flags and environment that keep it off the network,
off the terminal and out of other instances' files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from .._base.framing import OneshotFraming, PromptFraming
from .._base.spec import ToolSpec
from .._base.usage import aider_usage

__all__ = [
    "AIDER_CONFIRM",
    "AIDER_FAILURE_REPLIES",
    "AIDER_READY",
    "aider",
    "aider_block",
    "aider_oneshot",
]


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


#: aider's own messages for an edit or a file it could not handle. At a line's start: a model's
#: prose that quotes them mid-line is not a failure.
AIDER_FAILURE_REPLIES = (
    r"(?m)^Can't edit ",
    r"(?m)^No such file",
    r"(?m) is not in the chat",
    r"(?m)^Could not edit ",
)


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
