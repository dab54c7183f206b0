"""Routing strategies: which instance a prompt goes to, decided when it is queued."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

__all__ = ["ROUTINGS", "Router", "RoutingName", "make_router", "rendezvous"]

RoutingName = Literal["round_robin", "least_busy", "sticky"]
ROUTINGS: tuple[RoutingName, ...] = ("round_robin", "least_busy", "sticky")


def _score(key: bytes, slot: int) -> int:
    digest = hashlib.blake2b(key, digest_size=8, salt=slot.to_bytes(8, "little")).digest()
    return int.from_bytes(digest, "little")


def rendezvous(key: str, slots: Sequence[int]) -> int:
    """Highest-random-weight hashing: the slot with the highest score for *key*.

    Scores depend only on the key and the slot index (never on a pid), so a key keeps its slot
    across restarts, and when a slot leaves only the keys that were on it move.
    """
    encoded = key.encode()
    return max(slots, key=lambda slot: _score(encoded, slot))


class Router:
    """Decides the target of a prompt: an instance index, or ``None`` for the shared queue.

    *healthy* lists the slots that can still take work (starting, ready, busy or restarting,
    but not failed or stopped), in index order.
    """

    name: RoutingName = "least_busy"

    def route(self, key: str | None, healthy: Sequence[int]) -> int | None:
        return None


class RoundRobin(Router):
    name: RoutingName = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def route(self, key: str | None, healthy: Sequence[int]) -> int | None:
        # Walk the slot indices in order, skipping the failed ones, so sequential prompts go
        # to 0, 1, 2, 0, 1, 2, ... whatever slots came and went.
        start = self._next
        for slot in healthy:
            if slot >= start:
                self._next = slot + 1
                return slot
        self._next = healthy[0] + 1
        return healthy[0]


class Sticky(Router):
    name: RoutingName = "sticky"

    def route(self, key: str | None, healthy: Sequence[int]) -> int | None:
        if key is None:
            return None  # no affinity asked for: bind late, like least_busy
        return rendezvous(key, healthy)


def make_router(name: str) -> Router:
    routers: dict[str, type[Router]] = {
        "round_robin": RoundRobin,
        "least_busy": Router,
        "sticky": Sticky,
    }
    try:
        return routers[name]()
    except KeyError:
        raise ValueError(
            f"unknown routing {name!r}; valid routings are: {', '.join(ROUTINGS)}"
        ) from None
