"""A stand-in for the OpenAI Responses API, for driving the real Codex CLI in tests, offline.

It listens on 127.0.0.1 on an ephemeral port, in a background thread::

    with FakeResponses() as server:
        spec = tools.codex(executable=..., api_base=server.base_url, api_key="sk-test")
        ...
        assert server.prompts == ["hello"]

``codex exec`` with a ``wire_api = "responses"`` provider calls only ``POST /v1/responses``
(``"stream": true``) and reads server-sent events; every request, known or not, is recorded in
:attr:`FakeResponses.requests`. A normal answer streams, in order::

    response.created, response.output_item.added, response.content_part.added,
    response.output_text.delta (one per word), response.output_text.done,
    response.content_part.done, response.output_item.done, response.completed (with usage)

Faults, taken one per request from :meth:`FakeResponses.queue` and then from
:attr:`FakeResponses.always` (``None``: answer normally):

- :class:`Status` -- an HTTP error status with an OpenAI-style error body (429, 500, ...);
- :class:`Stall` -- send ``response.created`` and the first delta, then hang until the server
  stops (a model server that stops mid-stream);
- :class:`Failed` -- a ``response.failed`` event with an error message;
- :class:`Slow` -- wait before answering normally.

The reply's text comes from ``responder`` (default ``echo: <last user text>``); its usage is
``input_tokens`` / ``output_tokens`` / ``cached_tokens`` as given, so a test can check what the
CLI reports.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from . import _loopback_server
from ._loopback_server import LoopbackHandler, LoopbackServer

__all__ = [
    "Failed",
    "FakeResponses",
    "Fault",
    "RecordedRequest",
    "Slow",
    "Stall",
    "Status",
    "last_user_text",
]


@attrs.frozen
class Status:
    """Answer with this HTTP status and an OpenAI-style error body."""

    status: int = 429
    message: str = "Rate limit reached for requests. Please try again in 20ms."
    #: The ``Retry-After`` header, if any. codex 0.171 retries a 429 itself (up to its
    #: ``stream_max_retries``) only when the answer carries one; without it, it gives up at once.
    retry_after: str | None = None


@attrs.frozen
class Stall:
    """Send the start of the stream, then nothing more until the server stops."""


@attrs.frozen
class Failed:
    """Stream ``response.created``, then ``response.failed`` with this message."""

    message: str = "The model had an internal error."
    code: str = "server_error"


@attrs.frozen
class Slow:
    """Wait this many seconds, then answer normally."""

    seconds: float


Fault = Status | Stall | Failed | Slow

#: Makes the reply's text from the request's JSON body.
Responder = Callable[[Mapping[str, Any]], str]


def last_user_text(body: Mapping[str, Any]) -> str:
    """The text of the last ``user`` message in a Responses request's ``input``."""
    items = body.get("input")
    if not isinstance(items, list):
        return str(items or "")
    for item in reversed(items):
        if isinstance(item, dict) and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(
                    str(part.get("text", ""))
                    for part in content
                    if isinstance(part, dict) and part.get("type") in ("input_text", "text")
                )
    return ""


def echo(body: Mapping[str, Any]) -> str:
    """The default responder: ``echo: <the last user message's text>``."""
    return f"echo: {last_user_text(body)}"


@attrs.frozen
class RecordedRequest(_loopback_server.RecordedRequest):
    """One HTTP request the server received."""

    #: The fault it was answered with, if any.
    fault: Fault | None = None

    @property
    def last_user_text(self) -> str:
        return last_user_text(self.json) if isinstance(self.json, dict) else ""


class FakeResponses(LoopbackServer[RecordedRequest, Fault]):
    """An OpenAI Responses API server in a thread; a context manager that starts and stops it.

    :param responder: makes each reply's text (default ``echo: <last user text>``)
    :param input_tokens: the usage each completed response reports
    """

    def __init__(
        self,
        *,
        responder: Responder = echo,
        input_tokens: int = 1200,
        output_tokens: int = 34,
        cached_tokens: int = 1000,
    ) -> None:
        super().__init__(_Handler, "fake-responses")
        self.responder = responder
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.cached_tokens = cached_tokens
        #: The fault for every request once the queue is empty (``None``: answer normally).
        self.always: Fault | None = None
        #: Set when a :class:`Stall` has sent its partial stream (tests wait on it).
        self.stalled = threading.Event()

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, ending in ``/v1`` (what ``api_base=`` takes)."""
        return f"http://127.0.0.1:{self.port}/v1"

    # -- what tests set and look at ---------------------------------------------------------

    def queue(self, *faults: Fault) -> None:
        """Answer the next requests with these faults, one each, in order."""
        self._add_faults(*faults)

    @property
    def responses(self) -> list[RecordedRequest]:
        """The ``POST /v1/responses`` requests received so far."""
        return [r for r in self.requests if r.method == "POST" and _is_responses(r.path)]

    @property
    def prompts(self) -> list[str]:
        """The last user text of each ``POST /v1/responses`` answered normally."""
        return [r.last_user_text for r in self.responses if r.status == 200 and r.fault is None]


def _is_responses(path: str) -> bool:
    return path.split("?")[0].rstrip("/") in ("/v1/responses", "/responses")


class _Handler(LoopbackHandler):
    fake: FakeResponses
    server_version = "FakeResponses/1.0"

    def _record(self, body: Any, status: int, fault: Fault | None = None) -> None:
        headers = self._lowered_headers()
        self.fake._record(RecordedRequest(self.command, self.path, headers, body, status, fault))

    def do_GET(self) -> None:
        self._not_found(None)

    def do_POST(self) -> None:
        body = self._read_json()
        if not _is_responses(self.path):
            self._not_found(body)
            return
        if not isinstance(body, dict):
            self._record(body, 400)
            self._send_json(400, _error("the body must be a JSON object", "invalid_request_error"))
            return
        fault = self.fake._next_fault(self.fake.always)
        if isinstance(fault, Status):
            self._record(body, fault.status, fault)
            kind = "rate_limit_exceeded" if fault.status == 429 else "server_error"
            headers = {} if fault.retry_after is None else {"Retry-After": fault.retry_after}
            self._send_json(fault.status, _error(fault.message, kind), headers)
            return
        if isinstance(fault, Slow):
            # Wakes early when the server stops, so a slow answer never outlives its test.
            self.fake._stopping.wait(fault.seconds)
        self._record(body, 200, fault)
        self._stream(body, fault)

    def _not_found(self, body: Any) -> None:
        self._record(body, 404)
        self._send_json(404, _error(f"no route for {self.command} {self.path}", "not_found"))

    # -- the event stream -----------------------------------------------------------------

    def _stream(self, body: Mapping[str, Any], fault: Fault | None) -> None:
        self._start_event_stream(headers={"Transfer-Encoding": "chunked"})
        model = str(body.get("model", "fake"))
        response_id = f"resp_{uuid.uuid4().hex}"
        item_id = f"msg_{uuid.uuid4().hex}"
        created = int(time.time())
        shell: dict[str, Any] = {
            "id": response_id,
            "object": "response",
            "created_at": created,
            "status": "in_progress",
            "model": model,
            "output": [],
        }
        seq = iter(range(1_000_000))
        try:
            self._event("response.created", {"response": shell}, seq)
            if isinstance(fault, Failed):
                error = {"code": fault.code, "message": fault.message}
                failed = {**shell, "status": "failed", "error": error}
                self._event("response.failed", {"response": failed}, seq)
                self._end()
                return
            text = self.fake.responder(body)
            words = text.split(" ")
            deltas = [w + " " for w in words[:-1]] + [words[-1]]
            item = {
                "id": item_id,
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            self._event("response.output_item.added", {"output_index": 0, "item": item}, seq)
            part = {"type": "output_text", "text": "", "annotations": []}
            where = {"item_id": item_id, "output_index": 0, "content_index": 0}
            self._event("response.content_part.added", {**where, "part": part}, seq)
            for n, delta in enumerate(deltas):
                self._event("response.output_text.delta", {**where, "delta": delta}, seq)
                if n == 0 and isinstance(fault, Stall):
                    self.fake.stalled.set()
                    self.fake._stopping.wait()
                    return
            self._event("response.output_text.done", {**where, "text": text}, seq)
            done_part = {"type": "output_text", "text": text, "annotations": []}
            self._event("response.content_part.done", {**where, "part": done_part}, seq)
            done_item = {**item, "status": "completed", "content": [done_part]}
            self._event("response.output_item.done", {"output_index": 0, "item": done_item}, seq)
            usage = {
                "input_tokens": self.fake.input_tokens,
                "input_tokens_details": {"cached_tokens": self.fake.cached_tokens},
                "output_tokens": self.fake.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.fake.input_tokens + self.fake.output_tokens,
            }
            completed = {**shell, "status": "completed", "output": [done_item], "usage": usage}
            self._event("response.completed", {"response": completed}, seq)
            self._end()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the CLI went away mid-stream (killed by the test): nothing to answer

    def _event(self, kind: str, payload: Mapping[str, Any], seq: Any) -> None:
        data = json.dumps({"type": kind, "sequence_number": next(seq), **payload})
        self._chunk(f"event: {kind}\ndata: {data}\n\n".encode())

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": kind}}
