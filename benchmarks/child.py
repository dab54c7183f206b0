"""The smallest interactive child the benchmarks drive: a prompt, a line in, a line out.

Protocol: write the prompt ``> `` (no newline), read one line from stdin, answer
``ok <line>`` on one line, write the prompt again; exit on EOF.

One option, looked for by hand (argparse would cost start-up time, which
``bench_launch`` measures 500 times at once):

``--stamp``
    append `` t=<CLOCK_MONOTONIC ns>`` to the reply, read just before the reply and
    the prompt are written, so the parent can measure how long it took to notice
    the prompt (CLOCK_MONOTONIC is one clock for every process on Linux).

Only the standard library, and output goes through ``os.write`` on fd 1: one
system call per answer, no Python-level buffering to flush.
"""

from __future__ import annotations

import os
import sys
import time

PROMPT = b"> "


def main() -> None:
    stamp = "--stamp" in sys.argv[1:]
    stdin = sys.stdin.buffer
    os.write(1, PROMPT)
    while line := stdin.readline():
        reply = b"ok " + line.rstrip(b"\r\n")
        if stamp:
            # Read the clock last, so the parent's measurement starts when the
            # prompt is on its way.
            now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            reply += b" t=%d" % now
        # Reply and prompt in one write: the parent sees the prompt as soon as
        # the reply, the way a well-behaved CLI flushes both together.
        os.write(1, reply + b"\n" + PROMPT)


if __name__ == "__main__":
    try:
        main()
    except (KeyboardInterrupt, OSError):
        # The parent went away (closed the pipe or hung up the PTY): just leave.
        # Not contextlib.suppress: importing contextlib costs ~3 ms of start-up.
        sys.exit(0)
