"""A stand-in for the Anthropic Messages API, for driving the real Claude Code CLI offline.

It listens on 127.0.0.1 on an ephemeral port, in a background thread::

    with FakeAnthropic() as server:
        spec = aimcluster.tools.claude(api_base=server.base_url, api_key="sk-test")
        ...
        assert server.messages[-1].last_user_text == "hello"

What Claude Code 2.1.332 calls (logged from real runs): ``HEAD /`` (a connectivity check; any
answer will do), then ``POST /v1/messages?beta=true`` with ``"stream": true`` for each model
request. The answer is the Messages API's server-sent events: ``message_start``,
``content_block_start``, ``content_block_delta`` (``text_delta``) per piece of text,
``content_block_stop``, ``message_delta`` (``stop_reason`` and the output ``usage``),
``message_stop``. Every request, known or not, is recorded in :attr:`FakeAnthropic.requests`.

Faults, for the next requests to ``/v1/messages`` (in the order they were asked for):
:meth:`~FakeAnthropic.fail_next` answers with an error status and the API's error body (429:
``rate_limit_error``); :meth:`~FakeAnthropic.stall_next` sends ``message_start`` and a first
piece of text, then holds the connection open, silent, until the server stops.
:meth:`~FakeAnthropic.fail_from` answers every request from the n-th on with an error status,
for good (a vendor that starts throttling partway through a run). :attr:`~FakeAnthropic.delay`
waits before each answer.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

import attrs

from . import _loopback_server
from ._loopback_server import LoopbackHandler, LoopbackServer

__all__ = ["FakeAnthropic", "RecordedRequest", "echo", "message_text"]

Messages = Sequence[Mapping[str, Any]]
#: Makes the assistant's reply text from the request's messages and its whole JSON body.
Responder = Callable[[Messages, Mapping[str, Any]], str]


def message_text(message: Mapping[str, Any]) -> str:
    """A message's text, whether its content is a string or a list of blocks.

    Claude Code sends the user's prompt as a list of ``text`` blocks, some of them
    ``<system-reminder>`` context it adds itself; only the last block is the prompt.
    """
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part.get("text", "")
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        ]
        return texts[-1] if texts else ""
    return ""


def _last_user_text(messages: Messages) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message)
    return ""


def echo(messages: Messages, body: Mapping[str, Any]) -> str:
    """The default responder: ``echo: <the last user message's text>``."""
    return f"echo: {_last_user_text(messages)}"


@attrs.frozen
class RecordedRequest(_loopback_server.RecordedRequest):
    """One HTTP request the server received."""

    @property
    def messages(self) -> Messages:
        """The messages of a ``/v1/messages`` request."""
        return self.json.get("messages", []) if isinstance(self.json, dict) else []

    @property
    def last_user_text(self) -> str:
        """The prompt: the last block of the last ``user`` message."""
        return _last_user_text(self.messages)


@attrs.frozen
class _Fault:
    kind: str  # "status" or "stall"
    status: int = 200
    message: str = ""


class FakeAnthropic(LoopbackServer[RecordedRequest, _Fault]):
    """An Anthropic Messages API server in a thread; a context manager that starts and stops it.

    :param responder: makes each reply's text (default :func:`echo`)
    :param input_tokens: the ``usage.input_tokens`` of every answer
    :param output_tokens: the ``usage.output_tokens`` of every answer
    :param cache_read_input_tokens: the ``usage.cache_read_input_tokens`` of every answer
    :param delay: seconds to wait before answering each ``/v1/messages`` request
    """

    def __init__(
        self,
        *,
        responder: Responder = echo,
        input_tokens: int = 120,
        output_tokens: int = 7,
        cache_read_input_tokens: int = 0,
        delay: float = 0.0,
    ) -> None:
        super().__init__(_Handler, "fake-anthropic")
        self.responder = responder
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.cache_read_input_tokens = cache_read_input_tokens
        self.delay = delay
        self._stalled = threading.Event()

    @property
    def base_url(self) -> str:
        """What to pass as ``ANTHROPIC_BASE_URL``: the server's root, as the SDK takes it."""
        return f"http://127.0.0.1:{self.port}"

    # -- what tests look at and steer -------------------------------------------------------

    @property
    def messages(self) -> list[RecordedRequest]:
        """The ``POST /v1/messages`` requests received so far."""
        return [r for r in self.requests if r.method == "POST" and _is_messages(r.path)]

    def fail_next(
        self,
        status: int = 429,
        count: int = 1,
        message: str = "",
    ) -> None:
        """Answer the next *count* message requests with an API error *status* (429:
        ``rate_limit_error``, 500: ``api_error``, 529: ``overloaded_error``, ...)."""
        message = message or _message_of(status)
        self._add_faults(*[_Fault("status", status, message)] * count)

    def fail_from(self, number: int, status: int = 429, message: str = "") -> None:
        """Answer every message request from the *number*-th on (counting from 1, those
        received so far included) with *status*, for good; :meth:`fail_next` faults come
        first."""
        self._fail_from(number, _Fault("status", status, message or _message_of(status)))

    def stall_next(self, count: int = 1) -> None:
        """Start the next *count* answers, then send nothing more until the server stops."""
        self._add_faults(*[_Fault("stall")] * count)

    def wait_stalled(self, timeout: float) -> bool:
        """Block until an answer has stalled (from a worker thread: ``anyio.to_thread``)."""
        return self._stalled.wait(timeout)


def _message_of(status: int) -> str:
    """The error message the API gives with *status*."""
    default = {
        429: "Number of request tokens has exceeded your per-minute rate limit",
        529: "Overloaded",
    }
    return default.get(status) or HTTPStatus(status).phrase


def _is_messages(path: str) -> bool:
    return path.split("?")[0].rstrip("/") == "/v1/messages"


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class _Handler(LoopbackHandler):
    fake: FakeAnthropic
    server_version = "FakeAnthropic/1.0"

    def _record(self, body: Any, status: int) -> None:
        headers = self._lowered_headers()
        self.fake._record(RecordedRequest(self.command, self.path, headers, body, status))

    def _send_json(self, status: int, payload: Any, headers: Mapping[str, str] = {}) -> None:
        request_id = {"request-id": f"req_{uuid.uuid4().hex[:24]}"}
        super()._send_json(status, payload, {**request_id, **headers})

    def do_HEAD(self) -> None:
        self._record(None, 200)
        self._send_json(200, {})

    def do_GET(self) -> None:
        self._not_found(None)

    def do_POST(self) -> None:
        body = self._read_json()
        if not _is_messages(self.path):
            self._not_found(body)
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self._record(body, 400)
            self._send_error(400, "messages: Field required")
            return
        fault = self.fake._next_fault()
        if fault is not None and fault.kind == "status":
            self._record(body, fault.status)
            self._send_error(fault.status, fault.message)
            return
        self._record(body, 200)
        if self.fake.delay:
            time.sleep(self.fake.delay)
        text = self.fake.responder(body["messages"], body)
        model = str(body.get("model") or "claude-fake")
        if body.get("stream"):
            self._send_stream(model, text, stall=fault is not None)
        else:
            self._send_json(200, self._message(model, text, final=True))

    def _send_error(self, status: int, message: str, headers: Mapping[str, str] = {}) -> None:
        kind = _ERROR_TYPES.get(status, "api_error")
        self._send_json(
            status, {"type": "error", "error": {"type": kind, "message": message}}, headers
        )

    def _not_found(self, body: Any) -> None:
        self._record(body, 404)
        self._send_error(404, f"unknown path {self.path}")

    def _usage(self, *, final: bool) -> dict[str, Any]:
        fake = self.fake
        return {
            "input_tokens": fake.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": fake.cache_read_input_tokens,
            "output_tokens": fake.output_tokens if final else 1,
            "service_tier": "standard",
        }

    def _message(self, model: str, text: str, *, final: bool) -> dict[str, Any]:
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}] if final else [],
            "stop_reason": "end_turn" if final else None,
            "stop_sequence": None,
            "usage": self._usage(final=final),
        }

    def _send_stream(self, model: str, text: str, *, stall: bool) -> None:
        request_id = {"request-id": f"req_{uuid.uuid4().hex[:24]}"}
        self._start_event_stream("text/event-stream; charset=utf-8", request_id)

        def event(kind: str, data: dict[str, Any]) -> None:
            self.wfile.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()

        start = self._message(model, "", final=False)
        event("message_start", {"type": "message_start", "message": start})
        block = {"type": "text", "text": ""}
        event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        )
        pieces = [text[i : i + 16] for i in range(0, len(text), 16)] or [""]
        for number, piece in enumerate(pieces):
            delta = {"type": "text_delta", "text": piece}
            event(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
            if stall and number == 0:
                self.fake._stalled.set()
                self.fake._stopping.wait()
                return
        event("content_block_stop", {"type": "content_block_stop", "index": 0})
        usage = self._usage(final=True)
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {k: v for k, v in usage.items() if k != "service_tier"},
            },
        )
        event("message_stop", {"type": "message_stop"})
