"""Metric snapshots and the percentile helper."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest

from aimcluster import Usage
from aimcluster._base.metrics import ClusterMetrics, InstanceMetrics, percentile

INSTANCE_FIELDS = {
    "index",
    "tool",
    "pid",
    "state",
    "node",
    "sent",
    "completed",
    "failed",
    "timeouts",
    "restarts",
    "in_flight",
    "queued",
    "latency_p50",
    "latency_p95",
    "rate_limited",
    "usage",
    "tool_retries",
}


def make_instance(index: int, **overrides: Any) -> InstanceMetrics:
    fields: dict[str, Any] = {
        "index": index,
        "pid": 4700 + index,
        "state": "ready",
        "node": None,
        "sent": 0,
        "completed": 0,
        "failed": 0,
        "timeouts": 0,
        "restarts": 0,
        "in_flight": 0,
        "queued": 0,
        "latency_p50": None,
        "latency_p95": None,
    }
    fields.update(overrides)
    return InstanceMetrics(**fields)


def make_cluster() -> ClusterMetrics:
    return ClusterMetrics(
        instances=(
            make_instance(
                0, sent=10, completed=8, failed=2, timeouts=1, restarts=1, latency_p50=0.5
            ),
            make_instance(1, pid=None, state="restarting", sent=5, completed=5, restarts=3),
            make_instance(
                2, node="10.0.0.7", state="busy", sent=7, completed=3, failed=3, in_flight=1
            ),
        ),
        queued=4,
    )


# -- percentile -----------------------------------------------------------------------------


def test_percentile_of_no_samples_is_none() -> None:
    assert percentile([], 50) is None


def test_percentile_of_one_sample_is_that_sample() -> None:
    assert [percentile([0.25], q) for q in (1, 50, 95, 99)] == [0.25, 0.25, 0.25, 0.25]


@pytest.mark.parametrize(("q", "expected"), [(1, 1.0), (50, 50.0), (95, 95.0), (99, 99.0)])
def test_percentile_of_zero_to_one_hundred_is_q(q: int, expected: float) -> None:
    assert percentile(range(101), q) == expected


def test_percentile_interpolates_between_samples() -> None:
    samples = [5.0, 1.0, 4.0, 2.0, 3.0]

    assert [percentile(samples, 50), percentile(samples, 95)] == [3.0, 4.8]


def test_percentile_accepts_any_iterable_of_samples() -> None:
    assert percentile((x for x in (2.0, 4.0)), 50) == 3.0


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        pytest.param(99.9, 99.9, id="p99.9-IndexError"),
        pytest.param(0.4, 0.4, id="p0.4-returns-p99"),
        pytest.param(50.5, 50.5, id="p50.5-rounded-to-p50"),
    ],
)
def test_percentile_with_a_fractional_q(q: float, expected: float) -> None:
    assert percentile(range(101), q) == pytest.approx(expected)


# -- snapshots ------------------------------------------------------------------------------


def test_cluster_totals_are_sums_over_instances() -> None:
    metrics = make_cluster()

    assert (metrics.sent, metrics.completed, metrics.failed, metrics.restarts) == (22, 16, 5, 4)


def test_cluster_totals_with_no_instances_are_zero() -> None:
    metrics = ClusterMetrics(instances=(), queued=0)

    assert (metrics.sent, metrics.completed, metrics.failed, metrics.restarts) == (0, 0, 0, 0)


def test_instance_as_dict_has_every_field() -> None:
    instance = make_instance(3, latency_p95=1.5)

    assert instance.as_dict() == {
        "index": 3,
        "pid": 4703,
        "state": "ready",
        "node": None,
        "sent": 0,
        "completed": 0,
        "failed": 0,
        "timeouts": 0,
        "restarts": 0,
        "in_flight": 0,
        "queued": 0,
        "latency_p50": None,
        "latency_p95": 1.5,
        "rate_limited": 0,
        "usage": {
            "input_tokens": None,
            "output_tokens": None,
            "cached_tokens": None,
            "cost_usd": None,
            "requests": None,
        },
        "tool_retries": 0,
        "tool": "",
    }
    assert set(instance.as_dict()) == {field.name for field in attrs.fields(InstanceMetrics)}


def test_cluster_as_dict_has_totals_queue_and_every_instance() -> None:
    data = make_cluster().as_dict()

    assert {key: value for key, value in data.items() if key != "instances"} == {
        "sent": 22,
        "completed": 16,
        "failed": 5,
        "restarts": 4,
        "queued": 4,
        "rate_limited": 0,
        "tool_retries": 0,
        "usage": Usage().as_dict(),
        "failovers": 0,
        "pools": [],
    }
    assert [instance["index"] for instance in data["instances"]] == [0, 1, 2]
    assert all(set(instance) == INSTANCE_FIELDS for instance in data["instances"])


def test_cluster_as_dict_round_trips_through_json() -> None:
    data = make_cluster().as_dict()

    assert json.loads(json.dumps(data)) == data


def test_snapshots_are_frozen() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        make_instance(0).sent = 1  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        make_cluster().queued = 1  # type: ignore[misc]


def test_cluster_usage_and_tool_retries_are_sums_over_instances() -> None:
    metrics = ClusterMetrics(
        instances=(
            make_instance(0, usage=Usage(input_tokens=10, cost_usd=0.5), tool_retries=2),
            make_instance(1),
            make_instance(2, usage=Usage(input_tokens=5, output_tokens=1), tool_retries=1),
        ),
        queued=0,
    )

    assert metrics.usage == Usage(input_tokens=15, output_tokens=1, cost_usd=0.5)
    assert metrics.tool_retries == 3
