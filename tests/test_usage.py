"""What replies cost (ToolSpec.usage, Reply.usage, summed in metrics) and the tool's own retries
(ToolSpec.retry_event, counted as tool_retries)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import attrs
import pytest
import structlog

import aimcluster
from aimcluster import JsonlFraming, OneshotFraming, ToolSpec, Usage
from aimcluster._base.framing import Event
from aimcluster._base.usage import aider_usage, total

# A JSON-lines agent that reports usage the way claude's `result` does. A prompt is
# `key=value` words: in, out, cost (what the turn reports), retries (api_retry events before
# the result), fail (the turn fails). As a one-shot tool it answers its argv[1] and exits.
BILLING_AGENT = r"""
import json, sys

def turn(prompt):
    words = dict(w.split("=", 1) if "=" in w else (w, "1") for w in prompt.split())
    for n in range(int(words.get("retries", 0))):
        print(json.dumps({"type": "system", "subtype": "api_retry", "attempt": n + 1}))
    print(json.dumps({
        "type": "result",
        "result": "answer to " + prompt,
        "is_error": "fail" in words,
        "usage": {"input_tokens": int(words.get("in", 0)),
                  "output_tokens": int(words.get("out", 0))},
        "total_cost_usd": float(words.get("cost", 0)),
    }), flush=True)

if len(sys.argv) > 1:
    turn(sys.argv[1])
else:
    for line in sys.stdin:
        turn(json.loads(line)["prompt"])
"""


def billed(text: str, events: Sequence[Event]) -> Usage | None:
    last = events[-1]
    if "usage" not in last:
        return None
    return Usage(
        input_tokens=last["usage"]["input_tokens"],
        output_tokens=last["usage"]["output_tokens"],
        cost_usd=last["total_cost_usd"],
        requests=1,
    )


EVENTS = JsonlFraming(
    terminal=lambda event: event.get("type") == "result",
    answer=lambda events: str(events[-1]["result"]),
    failure=lambda events: str(events[-1]["result"]) if events[-1]["is_error"] else None,
)


def billing_agent(*, oneshot: bool = False, **options: object) -> ToolSpec:
    fields: dict[str, object] = {
        "usage": billed,
        "retry_event": lambda event: event.get("subtype") == "api_retry",
        **options,
    }
    return ToolSpec(
        name="billing",
        argv=[sys.executable, "-c", BILLING_AGENT, *(["{prompt}"] if oneshot else [])],
        framing=OneshotFraming(events=EVENTS) if oneshot else EVENTS,
        **fields,  # type: ignore[arg-type]
    )


# -- Usage ----------------------------------------------------------------------------------


def test_a_sum_of_usages_is_none_only_where_no_part_reported() -> None:
    a = Usage(input_tokens=10, output_tokens=2, cost_usd=0.5)
    b = Usage(input_tokens=5, cached_tokens=3, requests=2)
    assert a + b == Usage(
        input_tokens=15, output_tokens=2, cached_tokens=3, cost_usd=0.5, requests=2
    )
    assert total([a, None, b]) == a + b
    assert total([]) == Usage()
    assert not Usage().known
    assert (a + b).tokens == 17


def test_usage_describes_itself_and_round_trips_through_a_dict() -> None:
    usage = Usage(input_tokens=1000, output_tokens=234, cost_usd=0.0123)
    assert usage.describe() == "1,234 tokens (1,000 in, 234 out), $0.0123"
    assert Usage().describe() == "no usage reported"
    assert Usage.from_dict(json.loads(json.dumps(usage.as_dict()))) == usage
    assert Usage.from_dict("nonsense") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Applied edit.\nTokens: 2.3k sent, 120 received. Cost: $0.01 message, $0.02 session.",
            Usage(input_tokens=2300, output_tokens=120, cost_usd=0.01, requests=1),
        ),
        (
            "Tokens: 12k sent, 11k cache hit, 1.5M received. Cost: $1,234.50 message, $2 session.",
            Usage(
                input_tokens=12000,
                output_tokens=1_500_000,
                cached_tokens=11000,
                cost_usd=1234.5,
                requests=1,
            ),
        ),
        (
            # A reflection: two requests for one reply, the second without a cost.
            "Tokens: 1,024 sent, 10 received. Cost: $0.50 message, $0.50 session.\n"
            "Tokens: 2k sent, 2.5k cache write, 0 received.",
            Usage(input_tokens=3024, output_tokens=10, cost_usd=0.5, requests=2),
        ),
        ("Added a.py to the chat", None),
    ],
)
def test_aider_usage_reads_its_tokens_lines(text: str, expected: Usage | None) -> None:
    assert aider_usage(text, ()) == expected


def test_the_aider_profiles_read_usage() -> None:
    assert aimcluster.tools.aider().usage is aider_usage
    assert aimcluster.tools.aider_oneshot().usage is aider_usage


# -- through a cluster ------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("oneshot", [False, True], ids=["long-lived", "one-shot"])
async def test_reply_usage_is_what_the_tool_reported_and_metrics_sum_it(
    cluster_factory, oneshot: bool
) -> None:
    cluster = await cluster_factory(billing_agent(oneshot=oneshot), count=2)
    first = await cluster.send("in=100 out=20 cost=0.25", instance=0)
    assert first.text == "answer to in=100 out=20 cost=0.25"
    assert first.usage == Usage(input_tokens=100, output_tokens=20, cost_usd=0.25, requests=1)
    await cluster.send("in=50 out=5 cost=0.5", instance=0)
    await cluster.send("in=7 out=3 cost=0.125", instance=1)
    # A failed turn was paid for too: it counts in the sums, though it raises.
    with pytest.raises(aimcluster.ToolError):
        await cluster.send("in=1000 out=1 cost=1 fail", instance=1)

    metrics = cluster.metrics()
    assert metrics.instances[0].usage == Usage(
        input_tokens=150, output_tokens=25, cost_usd=0.75, requests=2
    )
    assert metrics.instances[1].usage == Usage(
        input_tokens=1007, output_tokens=4, cost_usd=1.125, requests=2
    )
    assert metrics.usage == Usage(input_tokens=1157, output_tokens=29, cost_usd=1.875, requests=4)
    data = metrics.as_dict()
    assert data["usage"] == {
        "input_tokens": 1157,
        "output_tokens": 29,
        "cached_tokens": None,
        "cost_usd": 1.875,
        "requests": 4,
    }
    assert data["instances"][1]["usage"]["input_tokens"] == 1007
    assert json.loads(json.dumps(data)) == data


@pytest.mark.anyio
async def test_a_tool_without_a_usage_reader_reports_none(cluster_factory) -> None:
    cluster = await cluster_factory(attrs.evolve(billing_agent(), usage=None))
    assert (await cluster.send("in=1 out=1")).usage is None
    assert cluster.metrics().usage == Usage()


@pytest.mark.anyio
async def test_a_broken_usage_reader_is_logged_and_the_reply_still_arrives(
    cluster_factory,
) -> None:
    def broken(text: str, events: Sequence[Event]) -> Usage | None:
        raise KeyError("usage")

    cluster = await cluster_factory(attrs.evolve(billing_agent(), usage=broken))
    with structlog.testing.capture_logs() as logs:
        reply = await cluster.send("in=1 out=1")
    assert (reply.text, reply.usage) == ("answer to in=1 out=1", None)
    assert [e["error"] for e in logs if e["event"] == "usage_not_read"] == ["KeyError('usage')"]


@pytest.mark.anyio
@pytest.mark.parametrize("oneshot", [False, True], ids=["long-lived", "one-shot"])
async def test_the_tools_own_retries_are_counted_and_logged(cluster_factory, oneshot: bool) -> None:
    cluster = await cluster_factory(billing_agent(oneshot=oneshot), count=2)
    with structlog.testing.capture_logs() as logs:
        assert (await cluster.send("retries=3", instance=0)).text == "answer to retries=3"
        await cluster.send("retries=0", instance=0)
        await cluster.send("retries=2", instance=1)
    metrics = cluster.metrics()
    assert [m.tool_retries for m in metrics.instances] == [3, 2]
    assert metrics.tool_retries == 5
    assert metrics.as_dict()["tool_retries"] == 5
    retried = [(e["instance"], e["retries"]) for e in logs if e["event"] == "tool_retried"]
    assert retried == [(0, 3), (1, 2)]


def test_usage_and_retry_event_must_be_callable() -> None:
    with pytest.raises(TypeError, match="'usage' must be callable"):
        billing_agent(usage="claude")
    with pytest.raises(TypeError, match="'retry_event' must be callable"):
        attrs.evolve(billing_agent(), retry_event=True)


@pytest.mark.anyio
async def test_a_usage_reader_that_returns_no_usage_is_logged(cluster_factory) -> None:
    spec = attrs.evolve(billing_agent(), usage=lambda text, events: {"input_tokens": 1})
    cluster = await cluster_factory(spec)
    with structlog.testing.capture_logs() as logs:
        reply = await cluster.send("in=1 out=1")
    assert reply.usage is None
    assert [e["error"] for e in logs if e["event"] == "usage_not_read"] == [
        "TypeError(\"ToolSpec.usage returned {'input_tokens': 1}, not a Usage or None\")"
    ]
