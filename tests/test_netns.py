"""tests/run.sh runs the suite in a network namespace with only loopback, where it can: what a
real vendor CLI tries on its own (telemetry, update checks) must fail at once, not leave."""

from __future__ import annotations

import os
import socket

import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("AIMCLUSTER_NETNS_ACTIVE") != "1",
    reason="not run in tests/run.sh's network namespace",
)


def test_only_loopback_is_reachable() -> None:
    # A documentation address (TEST-NET-3): with no route, connecting fails before any packet.
    with pytest.raises(OSError, match="Network is unreachable"):
        socket.create_connection(("203.0.113.1", 443), timeout=5)
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname(), timeout=5),
    ):
        pass


def test_names_of_the_outside_do_not_resolve() -> None:
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("registry.npmjs.org", 443)
