"""A stand-in Gemini API server on loopback, for driving the real Gemini CLI offline.

It listens on 127.0.0.1 on an ephemeral port, in a background thread::

    with FakeGemini() as server:
        spec = tools.gemini(executable=..., api_base=server.base_url, api_key="k", model="m")
        ...
        assert server.generations[-1].user_text.endswith("hello")

What Gemini CLI 0.61 calls (seen with this server's request log):

- ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` for every turn: server-sent
  events, each ``data: <GenerateContentResponse JSON>`` followed by a blank line, the last one
  with ``finishReason: "STOP"`` and ``usageMetadata``;
- ``POST /v1beta/models/{model}:generateContent`` (plain JSON) for the router's model choice in
  the default ``auto`` mode, and for other side requests (such as the next-speaker check);
- ``POST /v1beta/models/{model}:countTokens`` for some inputs.

Every request, known or not, is recorded in :attr:`FakeGemini.requests`. Modes, armed by the test
before or while the CLI runs:

- :meth:`FakeGemini.rate_limit` answers the next N model requests (or all) with the Gemini API's
  429 ``RESOURCE_EXHAUSTED`` error;
- :meth:`FakeGemini.fail` answers the next N with another HTTP error (500 by default);
- :meth:`FakeGemini.stall` makes the next N streams send their first chunk and then hang until the
  server stops;
- ``delay=`` waits before each answer.

Each answer reports ``usageMetadata`` with token counts the test can predict (:func:`usage_for`).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from ._loopback_server import LoopbackHandler, LoopbackServer

__all__ = ["FakeGemini", "RecordedRequest", "echo", "usage_for"]

#: The Gemini API's answer to a request over quota (``google.rpc.Status`` in an ``error``),
#: with the ``RetryInfo`` the real API sends for a per-minute quota. The CLI retries that
#: (``RetryableQuotaError``), waiting ``retryDelay`` at least.
QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
)

#: Makes a reply's text from the request's JSON body.
Responder = Callable[[Mapping[str, Any]], str]


def request_user_text(body: Mapping[str, Any]) -> str:
    """The last text part of the last ``user`` turn of a ``generateContent`` body: the prompt,
    which the CLI sends after a ``<session_context>`` part in the first turn."""
    for content in reversed(body.get("contents") or []):
        if isinstance(content, Mapping) and content.get("role") == "user":
            for part in reversed(content.get("parts") or []):
                if isinstance(part, Mapping) and part.get("text"):
                    return str(part["text"])
    return ""


def echo(body: Mapping[str, Any]) -> str:
    """The default responder: ``echo: <the prompt>``."""
    return f"echo: {request_user_text(body)}"


def usage_for(text: str) -> tuple[int, int]:
    """The ``(promptTokenCount, candidatesTokenCount)`` the server reports for a reply: the
    reply's length and 7, so a test can predict them."""
    return len(text), 7


#: ``cachedContentTokenCount`` reported with every answer.
CACHED_TOKENS = 3


@attrs.frozen
class _Fault:
    #: ``"429"``, ``"stall"`` or another HTTP status.
    kind: str
    #: How many more requests it answers (``None``: all).
    count: int | None
    message: str


@attrs.frozen
class RecordedRequest:
    """One HTTP request the server received."""

    #: ``GET``, ``POST``, ...
    method: str
    #: The path without the query string, e.g. ``/v1beta/models/m:streamGenerateContent``.
    path: str
    #: The query string, e.g. ``alt=sse``.
    query: str
    #: The request headers, names lower-cased.
    headers: Mapping[str, str]
    #: The parsed JSON body (``None`` without one, or if it was not JSON).
    json: Any
    #: The HTTP status the server answered with.
    status: int

    @property
    def method_name(self) -> str:
        """The API method after the colon: ``streamGenerateContent``, ``generateContent``..."""
        return self.path.rpartition(":")[2] if ":" in self.path else ""

    @property
    def model(self) -> str:
        """The model named in the path: ``m`` in ``/v1beta/models/m:streamGenerateContent``."""
        match = re.search(r"/models/([^/:]+)", self.path)
        return match[1] if match else ""

    @property
    def user_text(self) -> str:
        return request_user_text(self.json) if isinstance(self.json, Mapping) else ""


class FakeGemini(LoopbackServer[RecordedRequest, _Fault]):
    """A Gemini API server in a thread; a context manager that starts and stops it.

    :param responder: makes each reply's text (default :func:`echo`)
    :param delay: seconds to wait before answering each model request
    """

    def __init__(self, *, responder: Responder = echo, delay: float = 0.0) -> None:
        super().__init__(_Handler, "fake-gemini")
        self.responder = responder
        self.delay = delay
        #: Set each time a stream has sent its first chunk and stalled.
        self.stalled = threading.Event()

    @property
    def base_url(self) -> str:
        """The server's root, as ``GOOGLE_GEMINI_BASE_URL`` takes it (no ``/v1beta``)."""
        return f"http://127.0.0.1:{self.port}"

    # -- what tests arm -----------------------------------------------------------------------

    def rate_limit(self, count: int | None = 1, *, message: str = QUOTA_MESSAGE) -> None:
        """Answer the next *count* model requests with a 429 ``RESOURCE_EXHAUSTED`` whose
        ``message`` is *message*; ``None``: every one from now on."""
        self._arm(_Fault("429", count, message))

    def fail(self, count: int = 1, *, status: int = 500) -> None:
        """Answer the next *count* model requests with HTTP *status*."""
        self._arm(_Fault(str(status), count, "Internal error encountered."))

    def stall(self, count: int = 1) -> None:
        """The next *count* streams send one chunk, then hang until the server stops."""
        self._arm(_Fault("stall", count, ""))

    def clear(self) -> None:
        """Forget every armed fault: answer normally from now on."""
        with self._lock:
            self._faults.clear()

    def _arm(self, fault: _Fault) -> None:
        self._add_faults(fault)

    def _take_fault(self, streaming: bool) -> _Fault | None:
        with self._lock:
            if not self._faults:
                return None
            fault = self._faults[0]
            if fault.kind == "stall" and not streaming:
                return None
            if fault.count is not None:
                if fault.count <= 1:
                    self._faults.pop(0)
                else:
                    self._faults[0] = attrs.evolve(fault, count=fault.count - 1)
            return fault

    # -- what tests look at -----------------------------------------------------------------

    @property
    def generations(self) -> list[RecordedRequest]:
        """The ``streamGenerateContent`` requests (one per model turn) received so far."""
        return [r for r in self.requests if r.method_name == "streamGenerateContent"]


class _Handler(LoopbackHandler):
    fake: FakeGemini
    server_version = "FakeGemini/1.0"
    json_content_type = "application/json; charset=UTF-8"

    def _record(self, body: Any, status: int) -> None:
        url = urlsplit(self.path)
        headers = self._lowered_headers()
        self.fake._record(RecordedRequest(self.command, url.path, url.query, headers, body, status))

    def do_GET(self) -> None:
        self._record(None, 404)
        self._send_json(404, _error(404, f"unknown path {self.path}", "NOT_FOUND"))

    def do_POST(self) -> None:
        body = self._read_json()
        method = urlsplit(self.path).path.rpartition(":")[2]
        if method == "countTokens":
            self._record(body, 200)
            text = json.dumps(body)
            self._send_json(200, {"totalTokens": len(text) // 4 + 1})
            return
        if method not in ("generateContent", "streamGenerateContent"):
            self._record(body, 404)
            self._send_json(404, _error(404, f"unknown method {self.path}", "NOT_FOUND"))
            return
        streaming = method == "streamGenerateContent"
        fault = self.fake._take_fault(streaming)
        if fault is not None and fault.kind == "429":
            self._record(body, 429)
            self._send_json(429, _quota_error(fault.message))
            return
        if fault is not None and fault.kind != "stall":
            status = int(fault.kind)
            self._record(body, status)
            self._send_json(status, _error(status, fault.message, "INTERNAL"))
            return
        self._record(body, 200)
        if self.fake.delay:
            time.sleep(self.fake.delay)
        if not streaming:
            self._send_json(200, self._side_answer(body))
            return
        text = self.fake.responder(body if isinstance(body, Mapping) else {})
        self._send_stream(text, stall=fault is not None)

    def _side_answer(self, body: Any) -> dict[str, Any]:
        # The router (auto mode) asks for JSON naming a model; other side requests get the
        # responder's text. Both as one candidate, like the real API.
        config = body.get("generationConfig", {}) if isinstance(body, Mapping) else {}
        if config.get("responseMimeType") == "application/json":
            text = json.dumps({"reasoning": "stand-in", "model_choice": "flash"})
        else:
            text = self.fake.responder(body if isinstance(body, Mapping) else {})
        return _response(text, "STOP", usage_for(text))

    def _send_stream(self, text: str, *, stall: bool) -> None:
        self._start_event_stream()
        pieces = re.findall(r".{1,24}", text, re.DOTALL) or [""]
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            chunk = _response(piece, "STOP" if last else None, usage_for(text) if last else None)
            self.wfile.write(f"data: {json.dumps(chunk)}\r\n\r\n".encode())
            self.wfile.flush()
            if stall:
                self.fake.stalled.set()
                self.fake._stopping.wait()
                return


def _response(text: str, finish: str | None, usage: tuple[int, int] | None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if finish is not None:
        candidate["finishReason"] = finish
    candidate["index"] = 0
    response: dict[str, Any] = {"candidates": [candidate], "modelVersion": "stand-in"}
    if usage is not None:
        prompt, output = usage
        response["usageMetadata"] = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": output,
            "cachedContentTokenCount": CACHED_TOKENS,
            "totalTokenCount": prompt + output,
        }
    return response


def _error(code: int, message: str, status: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}


def _quota_error(message: str) -> dict[str, Any]:
    error = _error(429, message, "RESOURCE_EXHAUSTED")
    error["error"]["details"] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                }
            ],
        },
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"},
    ]
    return error
