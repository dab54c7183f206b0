"""The REPLs: Python (:func:`python`, over pipes) and bash (:func:`bash`, in a pseudo-terminal).

The protocol facts: each REPL's prompt is rewritten to name the input it follows, with a
part drawn at random once per process (``[aimcluster-<nonce>:<seq>]``), so that no reply is
taken for another prompt's; and each prompt, of any number of lines, is encoded as one line
the REPL runs as if typed (``__aimcluster__(seq, source)`` for Python, ``eval $'...'`` for
bash).
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Mapping
from pathlib import Path

from .._base.framing import PromptFraming
from .._base.spec import ToolSpec

__all__ = ["bash", "python"]

#: Part of the prompts the ``python`` and ``bash`` profiles give their tools, drawn once per
#: process: no reply shows the prompt by chance, or by quoting another process's. (Code run
#: in the REPL can print its own: see the README's "One prompt, one reply".)
_NONCE = secrets.token_hex(4)


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
