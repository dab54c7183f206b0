"""What the loopback HTTP stand-ins for model APIs share (fake_openai.py, vendor_*.py).

:class:`LoopbackServer` runs a ``ThreadingHTTPServer`` on 127.0.0.1, on an ephemeral port, in a
background thread, as a context manager; it records every request and keeps a queue of faults
for the next answers. A subclass passes its :class:`LoopbackHandler` subclass, which reaches the
server as ``self.fake``, and adds its API's URLs, faults and answers.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

import attrs

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["LoopbackHandler", "LoopbackServer", "RecordedRequest"]

#: What a server records of each request.
RequestT = TypeVar("RequestT")
#: What its fault queue holds.
FaultT = TypeVar("FaultT")


@attrs.frozen
class RecordedRequest:
    """One HTTP request a server received; a server's own adds what its API needs."""

    #: ``HEAD``, ``GET``, ``POST``, ...
    method: str
    #: The request path, query string included.
    path: str
    #: The request headers, names lower-cased.
    headers: Mapping[str, str]
    #: The parsed JSON body (``None`` without a body or if it was not JSON).
    json: Any
    #: The HTTP status the server answered with.
    status: int


class LoopbackServer(Generic[RequestT, FaultT]):
    """An HTTP server on loopback in a thread; a context manager that starts and stops it.

    :param handler: the request handler; its instances reach this server as ``self.fake``
    :param thread_name: the name of the thread that serves
    """

    def __init__(self, handler: type[LoopbackHandler], thread_name: str) -> None:
        self._handler = handler
        self._thread_name = thread_name
        self._requests: list[RequestT] = []
        self._faults: list[FaultT] = []
        #: From the n-th fault lookup on, this fault whenever the queue is empty (for good).
        self._from: tuple[int, FaultT] | None = None
        self._lookups = 0
        self._lock = threading.Lock()
        #: Set when the server stops: what stalled or slow answers wait on.
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Self:
        handler = type("_BoundHandler", (self._handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=self._thread_name, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        assert self._thread is not None
        self._stopping.set()  # releases stalled and slow answers
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def port(self) -> int:
        assert self._server is not None, "the server is not running"
        return self._server.server_address[1]

    # -- what tests look at -----------------------------------------------------------------

    @property
    def requests(self) -> list[RequestT]:
        """Every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    # -- the fault queue ----------------------------------------------------------------------

    def _add_faults(self, *faults: FaultT) -> None:
        with self._lock:
            self._faults.extend(faults)

    def _fail_from(self, number: int, fault: FaultT) -> None:
        """Answer with *fault*, for good, from the *number*-th fault lookup on (counting from
        1, those made so far included), whenever no queued fault comes first."""
        with self._lock:
            self._from = (number, fault)

    def _next_fault(self, default: FaultT | None = None) -> FaultT | None:
        """The oldest fault queued, taken off the queue; else the fault of :meth:`_fail_from`
        once it is due; else *default*."""
        with self._lock:
            self._lookups += 1
            if self._faults:
                return self._faults.pop(0)
            if self._from is not None and self._lookups >= self._from[0]:
                return self._from[1]
            return default

    # -- called by the handler threads ------------------------------------------------------

    def _record(self, request: RequestT) -> None:
        with self._lock:
            self._requests.append(request)


class LoopbackHandler(BaseHTTPRequestHandler):
    """Reads JSON requests and sends JSON answers, one request per connection."""

    fake: Any  # the LoopbackServer (a subclass narrows it)
    protocol_version = "HTTP/1.1"
    #: The ``Content-Type`` of :meth:`_send_json` answers.
    json_content_type = "application/json"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; the requests are recorded instead

    def _read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def _lowered_headers(self) -> dict[str, str]:
        return {name.lower(): value for name, value in self.headers.items()}

    def _send_json(self, status: int, payload: Any, headers: Mapping[str, str] = {}) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", self.json_content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        # One request per connection: no idle keep-alive threads outlive the test.
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.close_connection = True

    def _start_event_stream(
        self, content_type: str = "text/event-stream", headers: Mapping[str, str] = {}
    ) -> None:
        """Send the status line and headers of a server-sent events answer; events follow."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
