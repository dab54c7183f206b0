"""Restart backoff and the sliding-window restart budget."""

from __future__ import annotations

import random

import attrs
import pytest

from aimcluster._base.policy import RestartBudget, RestartPolicy

# -- RestartPolicy.delay --------------------------------------------------------------------


def test_delay_grows_exponentially_and_is_capped_at_max_delay() -> None:
    policy = RestartPolicy(initial_delay=0.5, multiplier=2.0, max_delay=5.0, jitter=0)

    assert [policy.delay(attempt) for attempt in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_delay_before_the_first_attempt_is_the_initial_delay() -> None:
    policy = RestartPolicy(initial_delay=0.25, jitter=0)

    assert [policy.delay(0), policy.delay(1)] == [0.25, 0.25]


def test_delay_with_default_policy() -> None:
    policy = attrs.evolve(RestartPolicy(), jitter=0)

    assert [policy.delay(attempt) for attempt in range(1, 10)] == [
        0.05,
        0.1,
        0.2,
        0.4,
        0.8,
        1.6,
        3.2,
        5.0,
        5.0,
    ]


def test_delay_stays_at_max_delay_for_a_very_long_streak() -> None:
    policy = RestartPolicy(jitter=0)

    assert policy.delay(2000) == 5.0


@pytest.mark.parametrize("seed", range(20))
def test_jitter_stays_within_the_jitter_fraction(seed: int) -> None:
    policy = RestartPolicy(initial_delay=1.0, multiplier=2.0, max_delay=100.0, jitter=0.1)

    delays = [policy.delay(attempt, random.Random(seed)) for attempt in (1, 2, 3)]

    assert 0.9 <= delays[0] <= 1.1
    assert 1.8 <= delays[1] <= 2.2
    assert 3.6 <= delays[2] <= 4.4


def test_jitter_is_drawn_from_the_given_random_source() -> None:
    policy = RestartPolicy(initial_delay=1.0, multiplier=2.0, max_delay=100.0, jitter=0.1)
    expected = 2.0 + random.Random(7).uniform(-0.2, 0.2)

    assert policy.delay(2, random.Random(7)) == expected
    assert policy.delay(2, random.Random(7)) != 2.0


def test_jitter_applies_to_the_capped_delay() -> None:
    policy = RestartPolicy(initial_delay=1.0, multiplier=10.0, max_delay=3.0, jitter=0.5)

    delays = [policy.delay(5, random.Random(seed)) for seed in range(50)]

    assert all(1.5 <= delay <= 4.5 for delay in delays)


def test_zero_jitter_gives_the_exact_delay_without_drawing_randomness() -> None:
    policy = RestartPolicy(initial_delay=0.3, multiplier=3.0, max_delay=10.0, jitter=0)
    rng = random.Random(1)
    state = rng.getstate()

    assert [policy.delay(attempt, rng) for attempt in (1, 2, 3)] == [0.3, 0.3 * 3.0, 0.3 * 9.0]
    assert rng.getstate() == state


def test_jitter_larger_than_the_delay_never_gives_a_negative_delay() -> None:
    policy = RestartPolicy(initial_delay=1.0, jitter=5.0)

    assert min(policy.delay(1, random.Random(seed)) for seed in range(200)) == 0.0


@pytest.mark.parametrize(
    "field",
    ["initial_delay", "multiplier", "max_delay", "jitter", "max_restarts", "window", "quarantine"],
)
def test_policy_rejects_negative_values_naming_the_field(field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field} must be >= 0, got -1$"):
        RestartPolicy(**{field: -1})


def test_policy_accepts_zero_and_no_quarantine() -> None:
    policy = RestartPolicy(initial_delay=0, max_restarts=0, jitter=0, quarantine=None)

    assert (policy.delay(3), policy.quarantine) == (0, None)


def test_policy_is_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        RestartPolicy(0.1)  # type: ignore[call-arg]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        RestartPolicy().jitter = 0  # type: ignore[misc]


# -- RestartBudget --------------------------------------------------------------------------


def test_budget_allows_at_most_max_restarts_within_the_window() -> None:
    budget = RestartBudget(RestartPolicy(max_restarts=3, window=10.0))

    assert [budget.try_spend(now) for now in (0.0, 1.0, 2.0, 3.0, 9.9)] == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_budget_entries_expire_after_the_window() -> None:
    budget = RestartBudget(RestartPolicy(max_restarts=3, window=10.0))
    for now in (0.0, 1.0, 2.0):
        budget.try_spend(now)

    # At 10.0 the restart at 0.0 is a full window old and no longer counts; 1.0 and 2.0 do.
    assert [budget.try_spend(now) for now in (10.0, 10.5, 11.0)] == [True, False, True]
    assert budget.streak == 3


def test_refused_restarts_are_not_recorded() -> None:
    budget = RestartBudget(RestartPolicy(max_restarts=1, window=10.0))
    budget.try_spend(0.0)

    assert [budget.try_spend(now) for now in (5.0, 9.0, 10.0)] == [False, False, True]


def test_budget_with_zero_max_restarts_refuses_every_restart() -> None:
    budget = RestartBudget(RestartPolicy(max_restarts=0))

    assert [budget.try_spend(0.0), budget.try_spend(1000.0)] == [False, False]
    assert budget.streak == 0


def test_reset_gives_a_fresh_budget() -> None:
    budget = RestartBudget(RestartPolicy(max_restarts=2, window=60.0))
    budget.try_spend(0.0)
    budget.try_spend(1.0)
    assert budget.try_spend(2.0) is False

    budget.reset()

    assert budget.streak == 0
    assert [budget.try_spend(3.0), budget.try_spend(4.0), budget.try_spend(5.0)] == [
        True,
        True,
        False,
    ]


def test_streak_counts_the_restarts_inside_the_window() -> None:
    budget = RestartBudget(RestartPolicy(max_restarts=5, window=10.0))
    streaks = []
    for now in (0.0, 1.0, 2.0, 20.0):
        budget.try_spend(now)
        streaks.append(budget.streak)

    assert streaks == [1, 2, 3, 1]


def test_streak_drives_the_backoff_of_consecutive_restarts() -> None:
    policy = RestartPolicy(initial_delay=1.0, multiplier=2.0, max_delay=60.0, jitter=0)
    budget = RestartBudget(policy)
    delays = []
    for now in (0.0, 1.0, 2.0):
        budget.try_spend(now)
        delays.append(policy.delay(budget.streak))

    assert delays == [1.0, 2.0, 4.0]
