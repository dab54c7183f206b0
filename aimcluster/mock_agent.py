"""A stand-in for an interactive AI coding CLI (in the style of aider).

It exists so aimcluster's supervisor can be tested and benchmarked against
hundreds of realistic, scriptable children without calling a real model.

Running it
----------
``python -m aimcluster.mock_agent [flags]`` or
``python path/to/aimcluster/mock_agent.py [flags]``.  Only the standard
library is used and every module beyond ``os``/``sys``/``time`` is imported
lazily, because benchmarks start hundreds of these at once.  The script form
skips ``aimcluster/__init__.py`` entirely and is therefore the fastest. That
is also why it is one self-contained module, past the project's 500-line
guide: the script form must run without the package.

Protocol
--------
All output goes to stdout as UTF-8 and is flushed whenever a prompt is shown.

1. Sleep ``--startup-delay`` seconds.
2. Unless ``--no-banner``: print ``mock-agent 1.0 (seed=S, delay=D)`` plus a
   newline (S is ``none`` when no seed was given).
3. Print the prompt (``--prompt``, default ``"> "``) without a newline.
4. Read one line from stdin (trailing ``\\n`` / ``\\r\\n`` removed, invalid
   UTF-8 replaced by U+FFFD).  On EOF exit 0 silently.
5. Handle the line.  A non-empty reply is printed followed by ``\\n``; then
   the prompt is printed again and we return to step 4.  Blank (empty or
   whitespace-only) lines produce no reply.

Several lines are read as one input the way aider reads them: a line ``{``
(or ``{tag``, tag being letters and digits) opens a block, which the line
``}`` (or ``tag}``) closes; the prompt is shown again before each line of the
block is read. The block's lines, joined with ``\\n``, are handled as one line.

Commands (a line starting with ``/``; arguments are whitespace-separated):

``/add PATH...``       ``Added PATH to the chat`` or ``No such file: PATH``
                       (one line per argument)
``/drop [PATH...]``    ``Removed PATH from the chat`` or
                       ``PATH is not in the chat``; without arguments
                       ``Dropped all files from the chat``
``/ls``                chat files, one per line, or ``No files in the chat``
``/exit``, ``/quit``   exit 0 without printing anything more
``/sleep SECONDS``     sleep, then ``slept SECONDS``
``/crash [CODE]``      print ``crashing``, exit immediately with CODE (3)
``/hang``              never answer again (SIGTERM still kills the process)
``/big N``             exactly N bytes of ``x`` lines (79 ``x`` + ``\\n``;
                       the last line shorter, always ending in ``\\n``),
                       then the prompt
``/flood N``           exactly N bytes of ``y`` lines, then hang with no
                       prompt
``/echo TEXT``         TEXT verbatim
``/env NAME``          the value of environment variable NAME or ``<unset>``
``/pid``               our own pid
``/spawn``             start a ``sleep 1000`` grandchild that shares our
                       stdout and process group; reply its pid
``/ignore-term``       ignore SIGTERM from now on; ``ignoring SIGTERM``

Chat paths are shown relative to the working directory, in POSIX form.
Malformed arguments get a ``usage: ...`` reply.

Every other line (including unknown ``/words``) is free text: after
``--delay`` seconds (+/- uniform ``--jitter``, never below zero) the reply is
``echo: TEXT``.  If TEXT contains ``DOC_ID`` the agent instead "edits" every
chat file, in sorted order, inserting ``# DOC_ID: <id>`` as the first line
(after a ``#!`` line if present), where <id> is the first 12 hex digits of
the SHA-256 of the file's relative POSIX path.  It replies per file
``Added DOC_ID header to PATH`` or ``PATH already has a DOC_ID header``, or
``No files in the chat to edit``.

Faults for chaos tests, rolled only for free text (``--seed`` makes them
reproducible): ``--crash-rate P`` prints ``partial...`` (no newline) and
exits 1; ``--hang-rate P`` hangs silently forever.
"""

from __future__ import annotations

import os
import sys
import time

# Evaluated as False at run time (so ``typing`` and friends are never
# imported, which costs milliseconds per process) but treated as True by
# mypy, which recognises any name called TYPE_CHECKING.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import random
    import subprocess
    from typing import BinaryIO, NoReturn

VERSION = "1.0"
DOC_ID_MARKER = "DOC_ID"
DOC_ID_PREFIX = b"# DOC_ID: "
DEFAULT_PROMPT = "> "
DEFAULT_CRASH_CODE = 3

# /big and /flood emit lines of this many bytes including the newline.
LINE_BYTES = 80
# ~64 KiB of whole lines per write: large enough to be fast, small enough that
# a 100 MB reply never has to exist in memory at once.
CHUNK_LINES = 819


class Config:
    """Validated command-line options."""

    __slots__ = (
        "banner",
        "crash_rate",
        "delay",
        "hang_rate",
        "jitter",
        "prompt",
        "seed",
        "startup_delay",
    )

    def __init__(
        self,
        *,
        prompt: str = DEFAULT_PROMPT,
        banner: bool = True,
        startup_delay: float = 0.0,
        delay: float = 0.0,
        jitter: float = 0.0,
        crash_rate: float = 0.0,
        hang_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.prompt = prompt
        self.banner = banner
        self.startup_delay = startup_delay
        self.delay = delay
        self.jitter = jitter
        self.crash_rate = crash_rate
        self.hang_rate = hang_rate
        self.seed = seed

    @property
    def needs_rng(self) -> bool:
        return self.jitter > 0 or self.crash_rate > 0 or self.hang_rate > 0


# --------------------------------------------------------------------------
# Argument parsing
# --------------------------------------------------------------------------


def parse_seconds(text: str) -> float | None:
    """Return a finite, non-negative number of seconds, or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    # The chained comparison also rejects NaN; time.sleep() rejects inf.
    return value if 0.0 <= value < float("inf") else None


# argparse reports "invalid <function name> value: ..." when a type function
# raises ValueError, so these names double as user-facing wording.
def seconds(text: str) -> float:
    value = parse_seconds(text)
    if value is None:
        raise ValueError(text)
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(text)
    return value


def help_width() -> int:
    """Terminal width for --help, computed as shutil would but cheaper."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        try:
            columns = os.get_terminal_size(1).columns
        except (ValueError, OSError):
            columns = 80
    return columns - 2  # argparse's own margin


def parse_config(argv: list[str] | None = None) -> Config:
    """Parse flags; argparse exits 2 with usage on stderr for bad input."""
    import argparse

    width = help_width()
    parser = argparse.ArgumentParser(
        prog="mock_agent",
        description="Mock interactive AI coding CLI for aimcluster tests.",
        # With no explicit width, argparse imports shutil (and through it
        # bz2/lzma) on every add_argument call: ~1.5 ms per start-up.
        formatter_class=lambda prog: argparse.HelpFormatter(prog, width=width),
    )
    add = parser.add_argument
    add("--prompt", default=DEFAULT_PROMPT, help="prompt text (default: %(default)r)")
    add("--no-banner", action="store_true", help="do not print the start-up banner")
    add("--startup-delay", type=seconds, default=0.0, help="seconds to wait before the banner")
    add("--delay", type=seconds, default=0.0, help="seconds before each free-text reply")
    add("--jitter", type=seconds, default=0.0, help="uniform +/- jitter added to --delay")
    add("--crash-rate", type=probability, default=0.0, help="chance a free-text reply crashes")
    add("--hang-rate", type=probability, default=0.0, help="chance a free-text reply hangs")
    add("--seed", type=int, default=None, help="seed for the fault/jitter random generator")
    ns = parser.parse_args(argv)
    return Config(
        prompt=ns.prompt,
        banner=not ns.no_banner,
        startup_delay=ns.startup_delay,
        delay=ns.delay,
        jitter=ns.jitter,
        crash_rate=ns.crash_rate,
        hang_rate=ns.hang_rate,
        seed=ns.seed,
    )


# --------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------


def write(text: str) -> None:
    # surrogateescape round-trips undecodable bytes from argv/env/cwd.
    sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))


def flush() -> None:
    sys.stdout.buffer.flush()


def write_filler_lines(char: bytes, total: int) -> None:
    """Write exactly ``total`` bytes of ``char`` lines, each ending in \\n."""
    line = char * (LINE_BYTES - 1) + b"\n"
    chunk = line * CHUNK_LINES
    out = sys.stdout.buffer
    chunks, rest = divmod(total, len(chunk))
    for _ in range(chunks):
        out.write(chunk)
    lines, tail = divmod(rest, LINE_BYTES)
    out.write(line * lines)
    if tail:
        out.write(char * (tail - 1) + b"\n")


def hang_forever() -> NoReturn:
    # A plain sleep keeps the default SIGTERM/SIGINT behaviour intact.
    while True:
        time.sleep(3600)


def decode_line(raw: bytes) -> str:
    line = raw.decode("utf-8", "replace")
    if line.endswith("\n"):
        line = line[:-1]
    if line.endswith("\r"):
        line = line[:-1]
    return line


# --------------------------------------------------------------------------
# DOC_ID editing
# --------------------------------------------------------------------------


def doc_id_for(relative_path: str) -> str:
    import hashlib

    return hashlib.sha256(relative_path.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def insert_doc_id_header(data: bytes, doc_id: str) -> bytes | None:
    """Return ``data`` with a DOC_ID header, or None if it already has one."""
    offset = 0
    if data.startswith(b"#!"):
        # The shebang must stay on line 1 for the file to remain executable.
        newline_at = data.find(b"\n")
        if newline_at == -1:
            data += b"\n"
            offset = len(data)
        else:
            offset = newline_at + 1
    if data.startswith(DOC_ID_PREFIX, offset):
        return None
    # Match the file's existing line endings so the edit is a one-line diff.
    first_newline = data.find(b"\n")
    crlf = first_newline > 0 and data[first_newline - 1 : first_newline] == b"\r"
    eol = b"\r\n" if crlf else b"\n"
    header = DOC_ID_PREFIX + doc_id.encode("ascii") + eol
    return data[:offset] + header + data[offset:]


def replace_file(path: str, data: bytes) -> None:
    """Replace ``path``'s content so readers never see a half-written file."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.mock-agent-{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        # A fresh file gets default permissions; keep e.g. the executable bit.
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        import contextlib  # only needed on this rare path

        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------
# The agent
# --------------------------------------------------------------------------


def block_closing(line: str) -> str | None:
    """The line that closes the block *line* opens, or None if it opens none.

    As aider reads several lines as one input: ``{`` up to ``}``, or ``{tag`` up to
    ``tag}``, where tag is letters and digits.
    """
    if not line.startswith("{"):
        return None
    tag = line[1:]
    if tag and not tag.isalnum():
        return None
    return tag + "}"


def usage(text: str) -> str:
    return f"usage: {text}"


class Agent:
    """Interactive loop state: options, chat files and fault generator."""

    def __init__(self, config: Config, cwd: str) -> None:
        self.config = config
        self.cwd = cwd
        self.chat: set[str] = set()  # absolute paths
        self.children: list[subprocess.Popen[bytes]] = []
        self.rng: random.Random | None = None
        if config.needs_rng:
            import random

            self.rng = random.Random(config.seed)

    # -- main loop ---------------------------------------------------------

    def run(self) -> int:
        config = self.config
        if config.startup_delay:
            time.sleep(config.startup_delay)
        if config.banner:
            seed = "none" if config.seed is None else str(config.seed)
            write(f"mock-agent {VERSION} (seed={seed}, delay={config.delay:g})\n")
        self.prompt()
        stdin = sys.stdin.buffer
        while True:
            raw = stdin.readline()
            if not raw:
                return 0
            line = decode_line(raw)
            closing = block_closing(line)
            block = None if closing is None else self.read_block(stdin, closing)
            if closing is not None and block is None:
                return 0
            reply = self.handle(line if block is None else block)
            if reply is None:
                return 0
            if reply:
                write(reply + "\n")
            self.prompt()

    def prompt(self) -> None:
        write(self.config.prompt)
        flush()

    def read_block(self, stdin: BinaryIO, closing: str) -> str | None:
        """The lines of a block up to *closing*, joined; the prompt is shown before each,
        as aider does. None at EOF."""
        lines: list[str] = []
        while True:
            self.prompt()
            raw = stdin.readline()
            if not raw:
                return None
            line = decode_line(raw)
            if line == closing:
                return "\n".join(lines)
            lines.append(line)

    def handle(self, line: str) -> str | None:
        """Return the reply for one input line, or None to exit."""
        if not line.strip():
            return ""
        if not line.startswith("/"):
            return self.free_text(line)
        name = line.split(maxsplit=1)[0]
        rest = line[len(name) :]
        args = rest.split()
        match name:
            case "/add":
                return self.add(args)
            case "/drop":
                return self.drop(args)
            case "/ls":
                return self.ls()
            case "/exit" | "/quit":
                return None
            case "/sleep":
                return self.sleep(args)
            case "/crash":
                return self.crash(args)
            case "/hang":
                hang_forever()
            case "/big":
                return self.big(args)
            case "/flood":
                return self.flood(args)
            case "/echo":
                # Drop only the separator so the text really is verbatim.
                return rest[1:]
            case "/env":
                return os.environ.get(args[0], "<unset>") if len(args) == 1 else usage("/env NAME")
            case "/pid":
                return str(os.getpid())
            case "/spawn":
                return self.spawn()
            case "/ignore-term":
                return self.ignore_term()
        return self.free_text(line)

    # -- chat management ---------------------------------------------------

    def absolute(self, path: str) -> str:
        return os.path.normpath(os.path.join(self.cwd, path))

    def display(self, absolute: str) -> str:
        try:
            relative = os.path.relpath(absolute, self.cwd)
        except ValueError:  # different drive on Windows
            relative = absolute
        return relative.replace(os.sep, "/")

    def add(self, paths: list[str]) -> str:
        if not paths:
            return usage("/add PATH [PATH...]")
        replies = []
        for path in paths:
            absolute = self.absolute(path)
            if os.path.isfile(absolute):
                self.chat.add(absolute)
                replies.append(f"Added {self.display(absolute)} to the chat")
            else:
                replies.append(f"No such file: {path}")
        return "\n".join(replies)

    def drop(self, paths: list[str]) -> str:
        if not paths:
            self.chat.clear()
            return "Dropped all files from the chat"
        replies = []
        for path in paths:
            absolute = self.absolute(path)
            if absolute in self.chat:
                self.chat.remove(absolute)
                replies.append(f"Removed {self.display(absolute)} from the chat")
            else:
                replies.append(f"{path} is not in the chat")
        return "\n".join(replies)

    def sorted_chat(self) -> list[str]:
        return sorted(self.display(path) for path in self.chat)

    def ls(self) -> str:
        return "\n".join(self.sorted_chat()) or "No files in the chat"

    # -- test helpers ------------------------------------------------------

    def sleep(self, args: list[str]) -> str:
        duration = parse_seconds(args[0]) if len(args) == 1 else None
        if duration is None:
            return usage("/sleep SECONDS")
        time.sleep(duration)
        return f"slept {args[0]}"

    def crash(self, args: list[str]) -> str:
        code = DEFAULT_CRASH_CODE
        if args:
            if len(args) > 1 or not args[0].isdigit() or int(args[0]) > 255:
                return usage("/crash [CODE]")
            code = int(args[0])
        write("crashing\n")
        flush()
        # _exit skips cleanup, like a real crash would.
        os._exit(code)

    def big(self, args: list[str]) -> str:
        if len(args) != 1 or not args[0].isdigit():
            return usage("/big N")
        write_filler_lines(b"x", int(args[0]))
        return ""  # the filler already ends with a newline

    def flood(self, args: list[str]) -> str:
        if len(args) != 1 or not args[0].isdigit():
            return usage("/flood N")
        write_filler_lines(b"y", int(args[0]))
        flush()
        hang_forever()

    def spawn(self) -> str:
        import subprocess

        # stdout is inherited on purpose: the grandchild holds the pipe open,
        # which is exactly what supervisor clean-up tests need to see.
        try:
            child = subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL)
        except OSError:  # no sleep(1) on this system
            child = subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(1000)"],
                stdin=subprocess.DEVNULL,
            )
        self.children.append(child)  # keep it referenced, never reaped early
        return str(child.pid)

    def ignore_term(self) -> str:
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return "ignoring SIGTERM"

    # -- free text ---------------------------------------------------------

    def free_text(self, text: str) -> str:
        config = self.config
        delay = config.delay
        crash = hang = False
        if self.rng is not None:
            # Always draw all three values so a given seed yields the same
            # sequence of outcomes regardless of which rates are non-zero.
            crash = self.rng.random() < config.crash_rate
            hang = self.rng.random() < config.hang_rate
            delay = max(0.0, delay + self.rng.uniform(-config.jitter, config.jitter))
        if delay:
            time.sleep(delay)
        if crash:
            write("partial...")
            flush()
            os._exit(1)
        if hang:
            hang_forever()
        if DOC_ID_MARKER in text:
            return self.add_doc_ids()
        return f"echo: {text}"

    def add_doc_ids(self) -> str:
        names = self.sorted_chat()
        if not names:
            return "No files in the chat to edit"
        return "\n".join(self.add_doc_id(name) for name in names)

    def add_doc_id(self, name: str) -> str:
        path = self.absolute(name)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            updated = insert_doc_id_header(data, doc_id_for(name))
            if updated is None:
                return f"{name} already has a DOC_ID header"
            replace_file(path, updated)
        except OSError as exc:
            return f"Could not edit {name}: {exc.strerror or exc}"
        return f"Added DOC_ID header to {name}"


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    try:
        return Agent(config, os.getcwd()).run()
    except BrokenPipeError:
        # The reader is gone.  A normal exit would flush stdout again and
        # print a traceback, so leave without any clean-up.
        os._exit(0)
    except KeyboardInterrupt:
        os._exit(130)


def forget_script_directory() -> None:
    """Stop sibling modules shadowing the stdlib when run as a script.

    ``python aimcluster/mock_agent.py`` puts ``aimcluster/`` first on
    sys.path, so a sibling named like a stdlib module (``signal.py``,
    ``random.py``...) would be picked up by our lazy imports.
    """
    here = os.path.dirname(os.path.realpath(__file__))
    if sys.path and os.path.realpath(sys.path[0] or os.curdir) == here:
        del sys.path[0]


if __name__ == "__main__":
    forget_script_directory()
    raise SystemExit(main())
