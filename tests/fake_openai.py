"""A fake OpenAI-compatible chat server for driving real aider in tests, offline.

It listens on 127.0.0.1 on an ephemeral port, in a background thread::

    with FakeOpenAI() as server:
        run_aider("--openai-api-base", server.base_url, "--model", "openai/fake", ...)
        assert server.completions[-1].last_user_text.startswith("Add a DOC_ID header")

Endpoints: ``POST /v1/chat/completions`` (plain JSON, or server-sent events when the body says
``"stream": true``) and ``GET /v1/models``. Every request, known or not, is recorded in
:attr:`FakeOpenAI.requests`, so a test can also assert that nothing unexpected was called.

The default replies speak aider's *whole* edit format (aider/coders/wholefile_prompts.py): a
*file listing* is the file's path on its own line, then an opening fence, the entire new content
and a closing fence. aider sends the chat's files the same way, after the text of
``CoderPrompts.files_content_prefix`` (aider/coders/base_prompts.py), as
``"\\n{relative path}\\n{fence open}\\n{content}{fence close}\\n"`` per file
(``Coder.get_files_content`` in aider/coders/base_coder.py); the fence is the first of
``all_fences`` that no line of any file starts with. The reply reuses that fence, since aider
parses the reply with the fence it chose.

What the default responder does with the last user message:

- it mentions ``DOC_ID``: every file in the chat is returned with ``# DOC_ID: <id>`` as its first
  line, where ``<id>`` is :func:`doc_id` of the path exactly as aider showed it (a header already
  there is replaced, so the edit is idempotent);
- anything else: the reply is ``echo: <first line of the message>`` and edits nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

import attrs

from . import _loopback_server
from ._loopback_server import LoopbackHandler, LoopbackServer

__all__ = [
    "FILES_CONTENT_PREFIX",
    "FakeOpenAI",
    "RecordedRequest",
    "chat_files",
    "doc_id",
    "doc_id_reply",
    "message_text",
]

#: The first line of the message in which aider sends the files added to the chat
#: (aider/coders/base_prompts.py ``files_content_prefix``).
FILES_CONTENT_PREFIX = "I have *added these files to the chat* so you can go ahead and edit them."

#: aider's fences, in the order it tries them (aider/coders/base_coder.py ``all_fences``).
AIDER_FENCES: tuple[tuple[str, str], ...] = (
    ("```", "```"),
    ("````", "````"),
    *((f"<{tag}>", f"</{tag}>") for tag in ("source", "code", "pre", "codeblock", "sourcecode")),
)

Messages = Sequence[Mapping[str, Any]]
#: Makes the assistant's reply text from the request's messages and its whole JSON body.
Responder = Callable[[Messages, Mapping[str, Any]], str]


def doc_id(path: str) -> str:
    """The id the fake writes into a file's header: the first 12 hex digits of sha256(path)."""
    return hashlib.sha256(path.encode()).hexdigest()[:12]


def message_text(message: Mapping[str, Any]) -> str:
    """A chat message's text, whether its content is a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return ""


def _last_user_text(messages: Messages) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message)
    return ""


def chat_files(messages: Messages) -> tuple[dict[str, str], tuple[str, str]]:
    """The files aider sent as editable, ``{path: content}``, and the fence it wrapped them in.

    Taken from the last message that starts with :data:`FILES_CONTENT_PREFIX`; aider resends
    all files with every request, so older copies are stale.
    """
    for message in reversed(messages):
        text = message_text(message)
        if message.get("role") == "user" and text.startswith(FILES_CONTENT_PREFIX):
            return _parse_file_listings(text)
    return {}, AIDER_FENCES[0]


def _parse_file_listings(text: str) -> tuple[dict[str, str], tuple[str, str]]:
    # aider wraps every file in the same fence; the first listing shows which one.
    first = _FIRST_LISTING.search(text)
    if first is None:
        return {}, AIDER_FENCES[0]
    fence_open = first["fence"]
    fence_close = dict(AIDER_FENCES)[fence_open]
    # "\n{path}\n{open}\n{content}{close}\n", then the next listing's "\n" or the end. A file
    # without a final newline has the close fence glued to its last line.
    listing = re.compile(
        rf"\n(?P<path>[^\n]+)\n{re.escape(fence_open)}\n(?P<body>.*?){re.escape(fence_close)}\n"
        r"(?=\n|\Z)",
        re.DOTALL,
    )
    files = {m["path"]: m["body"] for m in listing.finditer(text, first.start())}
    return files, (fence_open, fence_close)


_FIRST_LISTING = re.compile(
    r"\n\n[^\n]+\n(?P<fence>"
    + "|".join(re.escape(fence_open) for fence_open, _ in reversed(AIDER_FENCES))
    + r")\n"
)


_HEADER = re.compile(r"# DOC_ID: [0-9a-f]{12}\n")


def doc_id_reply(messages: Messages, body: Mapping[str, Any]) -> str:
    """The default responder (see the module docstring)."""
    instruction = _last_user_text(messages)
    if "DOC_ID" not in instruction:
        first_line = instruction.strip().splitlines()[0] if instruction.strip() else ""
        return f"echo: {first_line}"
    files, (fence_open, fence_close) = chat_files(messages)
    if not files:
        return "There are no files in the chat to add a DOC_ID header to."
    parts = [f"I will add a DOC_ID header to {', '.join(sorted(files))}.\n"]
    for path in sorted(files):
        content = (
            _HEADER.sub("", files[path], count=1) if _HEADER.match(files[path]) else files[path]
        )
        if content and not content.endswith("\n"):
            content += "\n"
        parts.append(f"\n{path}\n{fence_open}\n# DOC_ID: {doc_id(path)}\n{content}{fence_close}\n")
    return "".join(parts)


@attrs.frozen
class RecordedRequest(_loopback_server.RecordedRequest):
    """One HTTP request the server received."""

    @property
    def messages(self) -> Messages:
        """The chat messages of a completion request."""
        return self.json.get("messages", []) if isinstance(self.json, dict) else []

    @property
    def last_user_text(self) -> str:
        """The text of the last ``user`` message of a completion request."""
        return _last_user_text(self.messages)


class FakeOpenAI(LoopbackServer[RecordedRequest, tuple[int, str]]):
    """An OpenAI-compatible server in a thread; a context manager that starts and stops it.

    :param model: the model id listed by ``GET /v1/models`` (any id is accepted in requests)
    :param responder: makes each reply's text (default :func:`doc_id_reply`)
    :param delay: seconds to wait before answering each completion
    """

    def __init__(
        self,
        *,
        model: str = "fake",
        responder: Responder = doc_id_reply,
        delay: float = 0.0,
    ) -> None:
        super().__init__(_Handler, "fake-openai")
        self.model = model
        self.responder = responder
        self.delay = delay

    @property
    def base_url(self) -> str:
        """What to pass as ``--openai-api-base`` / ``OPENAI_API_BASE``: ends in ``/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    # -- what tests look at -----------------------------------------------------------------

    @property
    def completions(self) -> list[RecordedRequest]:
        """The ``POST /v1/chat/completions`` requests received so far."""
        return [r for r in self.requests if r.method == "POST" and _is_completions(r.path)]

    def fail_next(self, status: int = 429, count: int = 1, message: str = "") -> None:
        """Answer the next *count* completion requests with an OpenAI-style error *status*."""
        message = message or {
            429: "Rate limit reached for requests. Please try again in 1s.",
        }.get(status, HTTPStatus(status).phrase)
        self._add_faults(*[(status, message)] * count)


def _is_completions(path: str) -> bool:
    return path.split("?")[0].rstrip("/") in ("/v1/chat/completions", "/chat/completions")


class _Handler(LoopbackHandler):
    fake: FakeOpenAI
    server_version = "FakeOpenAI/1.0"

    def _record(self, body: Any, status: int) -> None:
        headers = self._lowered_headers()
        self.fake._record(RecordedRequest(self.command, self.path, headers, body, status))

    def do_GET(self) -> None:
        if self.path.split("?")[0].rstrip("/") in ("/v1/models", "/models"):
            self._record(None, 200)
            model = {"id": self.fake.model, "object": "model", "created": 0, "owned_by": "fake"}
            self._send_json(200, {"object": "list", "data": [model]})
        else:
            self._not_found(None)

    def do_POST(self) -> None:
        body = self._read_json()
        if not _is_completions(self.path):
            self._not_found(body)
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self._record(body, 400)
            self._send_json(400, _error("'messages' is required", "invalid_request_error"))
            return
        error = self.fake._next_fault()
        if error is not None:
            status, message = error
            self._record(body, status)
            kind = "rate_limit_exceeded" if status == 429 else "server_error"
            self._send_json(status, _error(message, kind))
            return
        self._record(body, 200)
        if self.fake.delay:
            time.sleep(self.fake.delay)
        text = self.fake.responder(body["messages"], body)
        model = str(body.get("model") or self.fake.model)
        usage = _usage(body["messages"], text)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._send_stream(model, text, usage if include_usage else None)
        else:
            self._send_json(200, _completion(model, text, usage))

    def _not_found(self, body: Any) -> None:
        self._record(body, 404)
        self._send_json(404, _error(f"unknown path {self.path}", "invalid_request_error"))

    def _send_stream(self, model: str, text: str, usage: dict[str, int] | None) -> None:
        self._start_event_stream()
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def event(delta: dict[str, Any], finish: str | None, **extra: Any) -> None:
            chunk = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        event({"role": "assistant", "content": ""}, None)
        for piece in re.findall(r".{1,40}", text, re.DOTALL):
            event({"content": piece}, None)
        event({}, "stop")
        if usage is not None:
            chunk = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def _usage(messages: Messages, text: str) -> dict[str, int]:
    # A rough count (4 characters a token) is enough for aider's cost line.
    prompt = sum(len(message_text(m)) for m in messages) // 4 + 1
    completion = len(text) // 4 + 1
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion(model: str, text: str, usage: dict[str, int]) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": kind}}
