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

# The profiles live in aimcluster/_tools/, a module per tool. Besides __all__, each tool's
# protocol constants (CLAUDE_EVENTS, CODEX_RATE_LIMIT, ...) and usage readers stay importable
# from here, as they always were.
from ._tools.aider import AIDER_CONFIRM as AIDER_CONFIRM
from ._tools.aider import AIDER_FAILURE_REPLIES as AIDER_FAILURE_REPLIES
from ._tools.aider import AIDER_READY as AIDER_READY
from ._tools.aider import aider as aider
from ._tools.aider import aider_block as aider_block
from ._tools.aider import aider_oneshot as aider_oneshot
from ._tools.claude import CLAUDE_EVENTS as CLAUDE_EVENTS
from ._tools.claude import CLAUDE_MAX_RETRIES as CLAUDE_MAX_RETRIES
from ._tools.claude import CLAUDE_QUIET_ENV as CLAUDE_QUIET_ENV
from ._tools.claude import CLAUDE_RATE_LIMIT as CLAUDE_RATE_LIMIT
from ._tools.claude import claude as claude
from ._tools.claude import claude_usage as claude_usage
from ._tools.codex import CODEX_EVENTS as CODEX_EVENTS
from ._tools.codex import CODEX_PROVIDER as CODEX_PROVIDER
from ._tools.codex import CODEX_RATE_LIMIT as CODEX_RATE_LIMIT
from ._tools.codex import codex as codex
from ._tools.codex import codex_config as codex_config
from ._tools.gemini import GEMINI_EVENTS as GEMINI_EVENTS
from ._tools.gemini import GEMINI_MAX_RETRIES as GEMINI_MAX_RETRIES
from ._tools.gemini import GEMINI_RATE_LIMIT as GEMINI_RATE_LIMIT
from ._tools.gemini import gemini as gemini
from ._tools.jules import jules as jules
from ._tools.mock import MOCK_FAILURE_REPLIES as MOCK_FAILURE_REPLIES
from ._tools.mock import mock as mock
from ._tools.registry import get as get
from ._tools.registry import names as names
from ._tools.registry import register as register
from ._tools.repl import bash as bash
from ._tools.repl import python as python

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
