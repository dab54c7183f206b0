"""The prompt-to-reply state machine, driven with bytes and a fake clock: no process, no loop.

Each test plays the instance's part: it writes what :meth:`Exchange.wire` makes, feeds the
output a tool would print, and checks the outcomes and the request's result.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pytest
import structlog

from aimcluster import (
    AutoAnswerLimitError,
    ClusterClosedError,
    DesyncError,
    InstanceCrashedError,
    ReplyTimeoutError,
    ReplyTooLargeError,
    ToolError,
    ToolSpec,
    Usage,
    tools,
)
from aimcluster._base.framing import JsonlFraming, OneshotFraming, PromptFraming
from aimcluster._base.ratelimit import RateLimiter
from aimcluster._base.request import Request, RequestState
from aimcluster._slot.exchange import (
    Answer,
    Desync,
    Exchange,
    Failure,
    InstanceStalledError,
    Overflow,
    TooManyQuestions,
    Unsolicited,
)
from aimcluster._slot.framer import Frame
from aimcluster._slot.oneshot import OneshotExchange


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def spec(**fields: Any) -> ToolSpec:
    fields.setdefault("ready", "> ")
    return ToolSpec(name="tool", argv=["tool"], **fields)


def exchange(
    tool: ToolSpec, *, failover: Callable[[Request], bool] | None = None
) -> tuple[Exchange, FakeClock]:
    return _exchange(Exchange, tool, failover=failover)


def oneshot_exchange(tool: ToolSpec) -> tuple[OneshotExchange, FakeClock]:
    return _exchange(OneshotExchange, tool, failover=None)


E = TypeVar("E", bound=Exchange)


def _exchange(
    cls: type[E], tool: ToolSpec, *, failover: Callable[[Request], bool] | None
) -> tuple[E, FakeClock]:
    clock = FakeClock()
    log = structlog.get_logger()
    ex = cls(
        spec=tool,
        index=3,
        tool=tool.name,
        clock=clock,
        limiter=RateLimiter(clock=clock, rng=random.Random(0)),
        log=log,
        failover=failover,
    )
    ex.reset(log)
    return ex, clock


def send(
    ex: Exchange, prompt: str, *, deadline: float | None = None, counted: bool = True
) -> tuple[Request, bytes]:
    """What the instance does to write a prompt: wire it, say it goes out, book it."""
    request = Request(prompt=prompt, key=None, target=0, deadline=deadline)
    return request, write(ex, request, counted=counted)


def write(ex: Exchange, request: Request, *, counted: bool = True) -> bytes:
    data = ex.wire(request)
    ex.begin_input()
    ex.written(request, counted=counted)
    return data


def reply_text(request: Request) -> str:
    return request.result().text


# -- replies ------------------------------------------------------------------------------


def test_a_reply_resolves_the_prompt_the_moment_its_ready_prompt_arrives() -> None:
    ex, clock = exchange(spec())
    request, data = send(ex, "hi")
    assert data == b"hi\n"
    assert ex.current is request
    assert ex.in_flight == 1
    assert ex.feed(b"echo h") == ()
    clock.now += 2.5
    outcomes = ex.feed(b"i\n> ")
    assert outcomes == [Frame("echo hi\n")]
    reply = request.result()
    assert (reply.text, reply.elapsed, reply.instance, reply.tool) == ("echo hi", 2.5, 3, "tool")
    assert ex.current is None
    assert ex.in_flight == 0
    assert (ex.sent, ex.completed, ex.failed, list(ex.latencies)) == (1, 1, 0, [2.5])


def test_an_internal_prompt_is_left_out_of_the_counters() -> None:
    ex, _ = exchange(spec())
    request, _ = send(ex, "probe", counted=False)
    ex.feed(b"ok\n> ")
    assert reply_text(request) == "ok"
    assert (ex.sent, ex.completed, list(ex.latencies)) == (0, 0, [])


def test_output_before_the_first_input_is_start_up_not_a_reply() -> None:
    ex, _ = exchange(spec())
    assert ex.feed(b"banner\n> ") == [Unsolicited(Frame("banner\n"))]
    # A tool that shows its prompt twice at start-up is not out of step yet.
    assert ex.feed(b"> ") == [Unsolicited(Frame(""))]
    assert ex.broken is None


def test_a_reply_while_no_prompt_is_in_flight_breaks_the_exchange() -> None:
    ex, _ = exchange(spec())
    request, _ = send(ex, "one")
    ex.feed(b"1\n> ")
    assert reply_text(request) == "1"
    outcomes = ex.feed(b"again\n> ")
    assert outcomes == [Desync("a reply ended while no prompt was in flight", "again\n", idle=True)]
    assert isinstance(ex.broken, DesyncError)
    assert not ex.idle()
    # Whatever it prints now is garbage until the process is replaced.
    assert ex.feed(b"more\n> ") == ()
    # A prompt the instance could not write in time is not to blame (it is requeued).
    late = Request(prompt="late", key=None, target=0, deadline=None)
    failure = ex.give_up(late, None, exit_code=None, counted=1)
    assert failure.unsent
    assert failure.error is ex.broken
    assert failure.request is late
    # A new process starts afresh.
    ex.reset(structlog.get_logger())
    assert ex.broken is None
    assert ex.idle()


def test_two_replies_in_one_read_complete_the_prompt_then_desync() -> None:
    ex, _ = exchange(spec(framing=tools.claude().framing, ready=None))
    request, _ = send(ex, "one")
    outcomes = ex.feed(b'{"type":"result","result":"a"}\n{"type":"result","result":"b"}\n')
    assert reply_text(request) == "a"
    assert isinstance(outcomes[0], Frame)
    assert isinstance(outcomes[1], Desync)
    assert outcomes[1].idle
    assert len(outcomes) == 2


def test_a_numbered_ready_prompt_that_names_another_input_is_a_desync() -> None:
    numbered = spec(ready=r"\[(?P<seq>\d+)\]> ", framing=PromptFraming(encode=lambda p, n: p))
    ex, _ = exchange(numbered)
    first, _ = send(ex, "a")
    ex.feed(b"A\n[1]> ")
    assert reply_text(first) == "A"
    second, _ = send(ex, "b")
    (outcome,) = ex.feed(b"B\n[3]> ")
    assert outcome == Desync("the ready prompt '[3]> ' does not end input 2", "B\n[3]> ")
    assert ex.broken is None  # a prompt was in flight: it fails, not the next one
    failure = ex.give_up(second, outcome, exit_code=None, counted=1)
    assert isinstance(failure.error, DesyncError)
    assert not failure.retry
    assert failure.error.prompt == "b"
    assert ex.failed == 1


def test_the_python_profile_numbers_each_input_and_its_prompt_must_name_it() -> None:
    python = tools.python()
    nonce = re.search(r"aimcluster-(\w+)", python.ready or "")
    assert nonce is not None
    ex, _ = exchange(python)
    first, data = send(ex, "1+1")
    assert data == b"__aimcluster__(1, '1+1')\n"
    ex.feed(f"2\n[aimcluster-{nonce.group(1)}:1]>>> ".encode())
    assert reply_text(first) == "2"
    _, data = send(ex, "2+2")
    assert data == b"__aimcluster__(2, '2+2')\n"
    (outcome,) = ex.feed(f"4\n[aimcluster-{nonce.group(1)}:1]>>> ".encode())
    assert isinstance(outcome, Desync)
    assert "does not end input 2" in outcome.why


def test_a_terminal_echo_is_skipped_even_when_it_shows_the_ready_prompt() -> None:
    ex, _ = exchange(spec(pty=True, echo=True))
    request, data = send(ex, "> x")
    assert data == b"> x\n"
    # Without the echo skipped, "> " in the echo would end the reply before it began.
    assert ex.feed(b"> x\r\n") == ()
    ex.feed(b"done\r\n> ")
    assert reply_text(request) == "done"


def test_output_that_is_not_the_echo_is_reply_all_the_same() -> None:
    ex, _ = exchange(spec(pty=True, echo=True))
    request, _ = send(ex, "hello")
    ex.feed(b"help\r\n> ")
    assert reply_text(request) == "help"


# -- aider: a block of lines, and the settle ------------------------------------------------


def test_a_block_of_lines_skips_the_prompt_the_tool_repeats_for_each_line() -> None:
    ex, _ = exchange(spec(framing=PromptFraming(encode=tools.aider_block, prompt_per_line=True)))
    ex.feed(b"banner\n> ")
    request, data = send(ex, "a\nb")
    assert data == b"{aimcluster\na\nb\naimcluster}\n"
    assert ex.feed(b"> > > ") == ()  # one for each further line, not the end of the reply
    ex.feed(b"reply\n> ")
    assert reply_text(request) == "reply"


def test_a_block_whose_repeated_prompts_do_not_come_is_a_desync() -> None:
    ex, _ = exchange(spec(framing=PromptFraming(encode=tools.aider_block, prompt_per_line=True)))
    ex.feed(b"banner\n> ")
    send(ex, "a\nb")
    (outcome,) = ex.feed(b"reply\n> ")
    assert isinstance(outcome, Desync)
    assert not outcome.idle
    assert outcome.why.startswith("expected the prompt '> ' again for each line")


def test_with_settle_a_ready_prompt_ends_the_reply_only_once_output_went_quiet() -> None:
    ex, _ = exchange(spec(framing=PromptFraming(settle=0.1)))
    assert ex.settle == 0.1
    request, _ = send(ex, "quote")
    assert ex.feed(b"a quoted\n> ") == ()
    assert ex.pending
    assert ex.feed(b"line\n> ") == ()  # more output: the earlier prompt was inside the reply
    assert not request.done
    assert ex.quiet() == [Frame("a quoted\n> line\n")]
    assert reply_text(request) == "a quoted\n> line"
    assert not ex.pending
    assert ex.quiet() == ()


def test_without_settle_there_is_nothing_to_wait_for() -> None:
    ex, _ = exchange(spec())
    assert ex.settle is None
    send(ex, "x")
    ex.feed(b"y\n> ")
    assert not ex.pending


# -- JSON lines -----------------------------------------------------------------------------


def result_framing(**fields: Any) -> JsonlFraming:
    return JsonlFraming(
        terminal=lambda event: event["type"] == "result",
        answer=lambda events: str(events[-1]["result"]),
        failure=lambda events: str(events[-1]["result"]) if events[-1].get("is_error") else None,
        **fields,
    )


def lines(*events: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(event).encode() + b"\n" for event in events)


def test_a_json_reply_ends_with_its_terminal_event() -> None:
    ex, _ = exchange(spec(framing=result_framing(), ready=None))
    request, data = send(ex, "hi")
    assert json.loads(data) == {"prompt": "hi"}
    progress = lines({"type": "progress", "n": 1})
    assert ex.feed(progress + b'not json\n{"type": "res') == ()
    ex.feed(b'ult", "result": "hello"}\n')
    reply = request.result()
    assert reply.text == "hello"
    assert [event["type"] for event in reply.events] == ["progress", "result"]


def test_a_json_failure_event_is_a_tool_error_carrying_the_events() -> None:
    ex, _ = exchange(spec(framing=result_framing(), ready=None))
    request, _ = send(ex, "hi")
    ex.feed(lines({"type": "result", "result": "boom", "is_error": True}))
    error = request.exception()
    assert isinstance(error, ToolError)
    assert error.events == ({"type": "result", "result": "boom", "is_error": True},)
    assert (ex.completed, ex.failed) == (0, 1)


def test_a_json_ready_event_is_start_up() -> None:
    framing = result_framing(ready=lambda event: event["type"] == "init")
    ex, _ = exchange(spec(framing=framing, ready=None))
    (outcome,) = ex.feed(lines({"type": "log"}, {"type": "init"}))
    assert isinstance(outcome, Unsolicited)
    assert [event["type"] for event in outcome.frame.events] == ["log", "init"]


def test_the_last_json_line_completes_at_the_end_of_output() -> None:
    ex, _ = exchange(spec(framing=result_framing(), ready=None))
    request, _ = send(ex, "hi")
    assert ex.feed(b'{"type": "result", "result": "last"}') == ()
    (outcome,) = ex.eof()
    assert isinstance(outcome, Frame)
    assert outcome.text == "last"
    assert reply_text(request) == "last"


# -- overflow -------------------------------------------------------------------------------


def test_a_flood_with_a_prompt_in_flight_fails_that_prompt() -> None:
    ex, _ = exchange(spec(max_reply_bytes=10))
    request, _ = send(ex, "x")
    assert ex.feed(b"12345") == ()
    (outcome,) = ex.feed(b"678901")
    assert outcome == Overflow(11, "12345", idle=False)
    failure = ex.give_up(request, outcome, exit_code=None, counted=1)
    assert isinstance(failure.error, ReplyTooLargeError)
    assert not failure.retry
    assert not failure.exited
    assert not failure.unsent


def test_a_flood_while_idle_breaks_the_exchange_and_blames_no_prompt() -> None:
    ex, _ = exchange(spec(max_reply_bytes=10))
    request, _ = send(ex, "x")
    ex.feed(b"ok\n> ")
    assert reply_text(request) == "ok"
    (outcome,) = ex.feed(b"x" * 11)
    assert outcome == Overflow(11, "", idle=True)
    assert isinstance(ex.broken, ReplyTooLargeError)
    assert ex.broken.prompt is None
    assert ex.feed(b"y\n> ") == ()


# -- questions ------------------------------------------------------------------------------


def test_questions_are_answered_up_to_max_auto_answers_per_prompt() -> None:
    ex, _ = exchange(spec(responders=[(r"Continue\? ", "y")], max_auto_answers=2))
    request, _ = send(ex, "go")
    assert ex.feed(b"step 1. Continue? ") == (Answer(b"y\n"),)
    assert ex.feed(b"step 2. Continue? ") == (Answer(b"y\n"),)
    ex.feed(b"done\n> ")
    assert reply_text(request) == "step 1. Continue? step 2. Continue? done"
    # The count starts again with each prompt.
    request, _ = send(ex, "again")
    assert ex.feed(b"Continue? ") == (Answer(b"y\n"),)
    assert ex.feed(b"Continue? ") == (Answer(b"y\n"),)
    (outcome,) = ex.feed(b"Continue? ")
    assert isinstance(outcome, TooManyQuestions)
    assert outcome.pattern == r"Continue\? "
    assert not outcome.idle
    failure = ex.give_up(request, outcome, exit_code=None, counted=1)
    assert isinstance(failure.error, AutoAnswerLimitError)
    assert not failure.retry


# -- rate limits ----------------------------------------------------------------------------


def test_a_rate_limited_reply_is_sent_again_within_its_retries() -> None:
    ex, _ = exchange(spec(rate_limit="429", rate_limit_retries=1))
    request, _ = send(ex, "x")
    ex.feed(b"error 429\n> ")
    assert not request.done
    assert request.state is RequestState.QUEUED
    assert ex.resend is request
    assert ex.rate_limited == 1
    assert request.rate_limited == 1
    assert ex.limiter.paused
    assert not ex.idle()
    assert ex.take_resend() is request
    assert ex.resend is None
    # Out of retries: the reply is the tool's answer after all.
    write(ex, request)  # sent again
    ex.feed(b"error 429\n> ")
    assert reply_text(request) == "error 429"
    assert ex.resend is None


def test_with_a_failover_a_rate_limited_prompt_goes_to_the_hook() -> None:
    taken: list[Request] = []

    def failover(request: Request) -> bool:
        taken.append(request)
        return True

    ex, _ = exchange(spec(rate_limit="429", rate_limit_retries=0), failover=failover)
    request, _ = send(ex, "x")
    ex.feed(b"429\n> ")
    # It moves whatever its retries left: it is no longer this instance's.
    assert taken == [request]
    assert ex.resend is None
    assert not request.done
    assert request.state is RequestState.QUEUED


def test_a_prompt_the_failover_declines_is_sent_again_or_answered() -> None:
    ex, _ = exchange(spec(rate_limit="429", rate_limit_retries=1), failover=lambda r: False)
    request, _ = send(ex, "x")
    ex.feed(b"429\n> ")
    assert ex.take_resend() is request
    write(ex, request)
    ex.feed(b"429 again\n> ")
    assert reply_text(request) == "429 again"


def test_a_json_answer_that_mentions_a_rate_limit_is_a_reply() -> None:
    ex, _ = exchange(spec(framing=result_framing(), ready=None, rate_limit="429"))
    request, _ = send(ex, "x")
    ex.feed(lines({"type": "result", "result": "HTTP 429 means too many requests"}))
    assert reply_text(request) == "HTTP 429 means too many requests"
    failed, _ = send(ex, "y")
    ex.feed(lines({"type": "result", "result": "429", "is_error": True}))
    assert ex.resend is failed


def test_a_probe_is_never_held_back_for_a_rate_limit() -> None:
    ex, _ = exchange(spec(rate_limit="429"))
    request, _ = send(ex, "probe", counted=False)
    ex.feed(b"429\n> ")
    assert reply_text(request) == "429"
    assert ex.rate_limited == 0


# -- usage ----------------------------------------------------------------------------------


def billed(text: str, events: Sequence[dict[str, Any]]) -> Usage | None:
    return Usage(input_tokens=int(events[-1]["tokens"]))


def test_usage_and_the_tools_own_retries_are_counted_failed_turns_included() -> None:
    tool = spec(
        framing=result_framing(),
        ready=None,
        usage=billed,
        retry_event=lambda event: event["type"] == "retry",
    )
    ex, _ = exchange(tool)
    first, _ = send(ex, "a")
    ex.feed(
        lines({"type": "retry"}, {"type": "retry"}, {"type": "result", "result": "A", "tokens": 5})
    )
    assert first.result().usage == Usage(input_tokens=5)
    second, _ = send(ex, "b")
    ex.feed(lines({"type": "result", "result": "no", "is_error": True, "tokens": 7}))
    assert isinstance(second.exception(), ToolError)
    assert ex.usage == Usage(input_tokens=12)
    assert ex.tool_retries == 2


def test_a_usage_reader_that_fails_costs_the_count_not_the_reply() -> None:
    def broken(text: str, events: Sequence[dict[str, Any]]) -> Usage | None:
        raise KeyError("tokens")

    ex, _ = exchange(spec(usage=broken))
    request, _ = send(ex, "a")
    ex.feed(b"A\n> ")
    assert reply_text(request) == "A"
    assert request.result().usage is None
    assert ex.usage == Usage()


# -- deadlines, stalls, exits ---------------------------------------------------------------


def test_the_watchdog_wakes_before_the_deadline_and_output_pushes_it_back() -> None:
    ex, clock = exchange(spec(stall_timeout=5))
    request, _ = send(ex, "x", deadline=130.0)
    assert ex.wake_at() == 105.0
    clock.now = 103.0
    ex.feed(b"working")
    assert ex.watchdog() == 108.0
    clock.now = 128.0
    assert ex.watchdog() == 130.0  # never past the deadline
    clock.now = 110.0
    failure = ex.give_up(request, None, exit_code=None, counted=1)
    assert isinstance(failure.error, InstanceStalledError)
    assert failure.retry
    assert failure.error.partial_output == "working"
    assert ex.timeouts == 0


def test_a_wait_that_reaches_the_deadline_is_a_timeout_never_retried() -> None:
    ex, clock = exchange(spec(stall_timeout=5))
    request, _ = send(ex, "x", deadline=130.0)
    clock.now = 130.0
    failure = ex.give_up(request, None, exit_code=None, counted=1)
    assert isinstance(failure.error, ReplyTimeoutError)
    assert not failure.retry
    assert (ex.timeouts, ex.failed) == (1, 1)


def test_without_deadline_or_watchdog_the_wait_never_wakes() -> None:
    ex, _ = exchange(spec())
    send(ex, "x")
    assert ex.wake_at() == float("inf")


def test_an_exit_mid_reply_is_a_crash_retried_unless_internal() -> None:
    ex, _ = exchange(spec())
    request, _ = send(ex, "x")
    ex.feed(b"half a rep")
    failure = ex.give_up(request, None, exit_code=-9, counted=1)
    assert isinstance(failure.error, InstanceCrashedError)
    assert failure.exited
    assert failure.retry
    assert failure.error.exit_code == -9
    assert failure.error.partial_output == "half a rep"
    probe, _ = send(ex, "probe", counted=False)
    assert not ex.give_up(probe, None, exit_code=1, counted=0).retry


def test_the_prompt_the_reader_wrote_meanwhile_is_the_one_that_fails() -> None:
    ex, _ = exchange(spec())
    first, _ = send(ex, "a")
    ex.feed(b"A\n> ")
    second, _ = send(ex, "b")  # written by the reader, behind the task's back
    failure = ex.give_up(first, None, exit_code=1, counted=1)
    assert failure.request is second


def test_abandoning_fails_the_prompt_in_flight() -> None:
    ex, _ = exchange(spec())
    request, _ = send(ex, "a")
    ex.abandon(counted=1)
    assert isinstance(request.exception(), ClusterClosedError)
    assert ex.current is None
    assert ex.failed == 1
    ex.abandon(counted=1)  # nothing in flight: nothing to count
    assert ex.failed == 1


def test_output_nobody_claimed_is_dropped_before_the_next_prompt() -> None:
    ex, _ = exchange(spec())
    request, _ = send(ex, "a")
    ex.feed(b"A\n> ")
    assert reply_text(request) == "A"
    assert ex.feed(b"a notice") == ()
    assert not ex.idle()
    assert ex.discard_stray(0) is None
    assert ex.idle()
    assert ex.partial() == ""


# -- one-shot -------------------------------------------------------------------------------


def oneshot(**fields: Any) -> ToolSpec:
    fields.setdefault("framing", OneshotFraming())
    return ToolSpec(name="once", argv=["tool", "{prompt}"], **fields)


def test_a_one_shot_reply_is_the_output_up_to_a_clean_exit() -> None:
    ex, _ = oneshot_exchange(oneshot())
    request, _ = send(ex, "x")
    assert ex.feed(b"the ans") == ()
    assert ex.feed(b"wer\n") == ()
    assert ex.eof() == ()
    assert not request.done  # judged at the exit, not before
    assert ex.conclude(0, stderr="", overflow=None) is None
    assert reply_text(request) == "the answer"


def test_a_one_shot_exit_code_is_a_tool_error_with_its_stderr() -> None:
    ex, _ = oneshot_exchange(oneshot())
    request, _ = send(ex, "x")
    ex.feed(b"out\n")
    assert ex.conclude(2, stderr="bad flag\n", overflow=None) is None
    error = request.exception()
    assert isinstance(error, ToolError)
    assert str(error).endswith("exit code 2: out\nbad flag")


def test_a_one_shot_flood_is_too_large_and_killed() -> None:
    ex, _ = oneshot_exchange(oneshot(max_reply_bytes=4))
    _request, _ = send(ex, "x")
    (outcome,) = ex.feed(b"12345")
    assert isinstance(outcome, Overflow)
    failure = ex.conclude(None, stderr="", overflow=outcome)
    assert isinstance(failure, Failure)
    assert isinstance(failure.error, ReplyTooLargeError)
    assert "for one prompt; killed it" in str(failure.error)
    assert not failure.retry


def test_a_one_shot_killed_for_its_stall_or_its_deadline() -> None:
    ex, clock = oneshot_exchange(oneshot(stall_timeout=1))
    request, _ = send(ex, "x", deadline=110.0)
    stalled = ex.conclude(None, stderr="", overflow=None)
    assert stalled is not None
    assert isinstance(stalled.error, InstanceStalledError)
    assert stalled.retry
    assert str(stalled.error).endswith("killed it")
    send(ex, "y", deadline=110.0)
    clock.now = 110.0
    late = ex.conclude(None, stderr="", overflow=None)
    assert late is not None
    assert isinstance(late.error, ReplyTimeoutError)
    assert not late.retry
    assert request.state is RequestState.SENT  # the instance requeues or resolves it


def test_a_json_one_shot_without_its_terminal_event_crashed() -> None:
    ex, _ = oneshot_exchange(oneshot(framing=OneshotFraming(events=result_framing())))
    _request, _ = send(ex, "x")
    ex.feed(lines({"type": "progress"}))
    failure = ex.conclude(1, stderr="", overflow=None)
    assert failure is not None
    assert failure.exited
    assert isinstance(failure.error, InstanceCrashedError)
    assert failure.error.exit_code == 1
    done, _ = send(ex, "y")
    ex.feed(lines({"type": "result", "result": "fine"}))
    assert ex.conclude(0, stderr="", overflow=None) is None
    assert reply_text(done) == "fine"


def test_a_one_shot_refused_at_start_is_counted_as_failed() -> None:
    ex, _ = oneshot_exchange(oneshot())
    request = Request(prompt="x", key=None, target=0, deadline=None)
    ex.refused(request, ToolError("no such tool", instance=3, prompt="x"), counted=True)
    assert isinstance(request.exception(), ToolError)
    assert (ex.sent, ex.failed) == (1, 1)


@pytest.mark.parametrize("counted", [True, False])
def test_refusal_of_an_internal_prompt_counts_nothing(counted: bool) -> None:
    ex, _ = oneshot_exchange(oneshot())
    request = Request(prompt="x", key=None, target=0, deadline=None)
    ex.refused(request, ToolError("no", instance=3, prompt="x"), counted=counted)
    assert (ex.sent, ex.failed) == ((1, 1) if counted else (0, 0))
