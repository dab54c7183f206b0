"""Routing strategies: rendezvous hashing, round-robin, sticky keys and least-busy."""

from __future__ import annotations

from collections import Counter

import pytest

from aimcluster._base.routing import ROUTINGS, RoundRobin, Router, Sticky, make_router, rendezvous

KEYS_1000 = [f"session-{i}" for i in range(1000)]
EIGHT_SLOTS = list(range(8))


# -- rendezvous -----------------------------------------------------------------------------


def test_rendezvous_gives_the_same_slot_for_the_same_key() -> None:
    assert [rendezvous(key, EIGHT_SLOTS) for key in KEYS_1000] == [
        rendezvous(key, EIGHT_SLOTS) for key in KEYS_1000
    ]


def test_rendezvous_does_not_depend_on_the_order_of_slots() -> None:
    reversed_slots = list(reversed(EIGHT_SLOTS))

    assert [rendezvous(key, reversed_slots) for key in KEYS_1000] == [
        rendezvous(key, EIGHT_SLOTS) for key in KEYS_1000
    ]


@pytest.mark.parametrize(
    ("key", "slot"),
    [("user-1", 3), ("user-2", 5), ("alpha", 3), ("", 7)],
)
def test_rendezvous_slots_are_stable_across_releases(key: str, slot: int) -> None:
    # Sticky keys would move on upgrade if the hash changed; these values pin it.
    assert rendezvous(key, EIGHT_SLOTS) == slot


def test_rendezvous_with_one_slot_returns_it() -> None:
    assert rendezvous("anything", [5]) == 5


def test_removing_a_slot_moves_only_the_keys_that_were_on_it() -> None:
    before = {key: rendezvous(key, EIGHT_SLOTS) for key in KEYS_1000}
    remaining = [slot for slot in EIGHT_SLOTS if slot != 3]

    after = {key: rendezvous(key, remaining) for key in KEYS_1000}

    moved = {key for key in KEYS_1000 if after[key] != before[key]}
    on_removed_slot = {key for key in KEYS_1000 if before[key] == 3}
    assert moved == on_removed_slot
    assert len(on_removed_slot) > 0


def test_adding_a_slot_moves_keys_only_to_the_new_slot() -> None:
    before = {key: rendezvous(key, EIGHT_SLOTS) for key in KEYS_1000}

    after = {key: rendezvous(key, [*EIGHT_SLOTS, 8]) for key in KEYS_1000}

    moved = {key for key in KEYS_1000 if after[key] != before[key]}
    assert moved == {key for key in KEYS_1000 if after[key] == 8}
    assert len(moved) > 0


def test_rendezvous_spreads_keys_evenly_over_slots() -> None:
    counts = Counter(rendezvous(f"key-{i}", EIGHT_SLOTS) for i in range(4000))

    assert sorted(counts) == EIGHT_SLOTS
    # 12.5 % each on average; allow 8 % .. 17 % (320 .. 680 of 4000).
    assert all(320 <= count <= 680 for count in counts.values()), counts


# -- routers --------------------------------------------------------------------------------


def test_round_robin_cycles_through_slots_in_order() -> None:
    router = RoundRobin()

    assert [router.route(None, [0, 1, 2]) for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_round_robin_skips_unhealthy_slots() -> None:
    router = RoundRobin()

    assert [router.route(None, [0, 2, 3]) for _ in range(6)] == [0, 2, 3, 0, 2, 3]


def test_round_robin_continues_in_order_when_a_slot_fails_and_returns() -> None:
    router = RoundRobin()

    routed = [router.route(None, [0, 1, 2]), router.route(None, [0, 1, 2])]
    routed += [router.route(None, [0, 2]), router.route(None, [0, 2])]
    routed += [router.route(None, [0, 1, 2]), router.route(None, [0, 1, 2])]

    assert routed == [0, 1, 2, 0, 1, 2]


def test_round_robin_ignores_the_key() -> None:
    router = RoundRobin()

    assert [router.route("same-key", [0, 1, 2]) for _ in range(3)] == [0, 1, 2]


def test_sticky_without_a_key_binds_late() -> None:
    assert Sticky().route(None, [0, 1, 2]) is None


def test_sticky_with_a_key_routes_by_rendezvous() -> None:
    router = Sticky()

    assert [router.route(key, EIGHT_SLOTS) for key in KEYS_1000[:50]] == [
        rendezvous(key, EIGHT_SLOTS) for key in KEYS_1000[:50]
    ]


def test_sticky_key_moves_only_when_its_slot_is_unhealthy() -> None:
    router = Sticky()
    slot = router.route("user-1", EIGHT_SLOTS)
    other = next(s for s in EIGHT_SLOTS if s != slot)

    assert router.route("user-1", [s for s in EIGHT_SLOTS if s != other]) == slot
    assert router.route("user-1", [s for s in EIGHT_SLOTS if s != slot]) != slot


def test_least_busy_always_binds_late() -> None:
    router = make_router("least_busy")

    assert [router.route(key, [0, 1]) for key in (None, "k")] == [None, None]


@pytest.mark.parametrize(
    ("name", "cls"),
    [("round_robin", RoundRobin), ("least_busy", Router), ("sticky", Sticky)],
)
def test_make_router_builds_the_named_router(name: str, cls: type[Router]) -> None:
    router = make_router(name)

    assert type(router) is cls
    assert router.name == name


def test_make_router_returns_a_fresh_router_each_time() -> None:
    first = make_router("round_robin")
    first.route(None, [0, 1, 2])

    assert make_router("round_robin").route(None, [0, 1, 2]) == 0


def test_make_router_rejects_an_unknown_name_and_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown routing 'nope'") as excinfo:
        make_router("nope")

    assert str(excinfo.value) == (
        "unknown routing 'nope'; valid routings are: round_robin, least_busy, sticky"
    )
    assert all(name in str(excinfo.value) for name in ROUTINGS)
