"""Framing a tool's output stream into replies: the ready prompt at the end of the output."""

from __future__ import annotations

import re
import types
from collections.abc import Iterable, Mapping

import pytest

from aimcluster._base import framing as _framing
from aimcluster._base.spec import ToolSpec
from aimcluster._slot.framer import FrameDesync, FrameOverflow, Framer, clean_reply

PROMPT = ">>> "


def make_framer(
    ready: str = re.escape(PROMPT),
    *,
    window: int = 4096,
    max_bytes: int = 64 * 1024 * 1024,
) -> Framer:
    return Framer(ready, window=window, max_bytes=max_bytes, encoding="utf-8")


def feed_all(framer: Framer, chunks: Iterable[bytes]) -> list[str | None]:
    return [framer.feed(chunk) for chunk in chunks]


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


class SearchSpy:
    """A compiled pattern that records how many characters each search may scan."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self._pattern = pattern
        self.searched: list[int] = []

    @property
    def groupindex(self) -> Mapping[str, int]:
        return self._pattern.groupindex

    def search(self, text: str, pos: int = 0) -> re.Match[str] | None:
        self.searched.append(len(text) - pos)
        return self._pattern.search(text, pos)


# -- finding the ready prompt ---------------------------------------------------------------


def test_prompt_is_found_when_output_arrives_one_byte_at_a_time() -> None:
    framer = make_framer()
    data = b"line one\nline two\n" + PROMPT.encode()

    results = feed_all(framer, one_byte_at_a_time(data))

    assert results == [None] * (len(data) - 1) + ["line one\nline two\n"]


def test_prompt_split_across_reads_is_found_once_complete() -> None:
    framer = make_framer()

    results = feed_all(framer, [b"result\n>", b">", b"> "])

    assert results == [None, None, "result\n"]


def test_prompt_alone_frames_an_empty_reply() -> None:
    assert make_framer().feed(PROMPT.encode()) == ""


def test_prompt_in_the_middle_of_the_output_does_not_end_the_reply() -> None:
    framer = make_framer()

    results = feed_all(framer, [b"a\n>>> b\n", b"c\n>>> "])

    assert results == [None, "a\n>>> b\nc\n"]


def test_consecutive_replies_are_framed_separately() -> None:
    framer = make_framer()

    results = feed_all(framer, [b"first\n>>> ", b"second\n", b">>> "])

    assert results == ["first\n", None, "second\n"]


def test_caret_in_ready_regex_matches_at_the_start_of_a_line() -> None:
    framer = make_framer(r"^>>> ")

    assert framer.feed(b"x = 1\n>>> ") == "x = 1\n"


def test_caret_in_ready_regex_does_not_match_mid_line() -> None:
    framer = make_framer(r"^>>> ")

    results = feed_all(framer, [b"say >>> ", b"\n>>> "])

    assert results == [None, "say >>> \n"]


def test_caret_in_ready_regex_matches_at_the_start_of_the_output() -> None:
    assert make_framer(r"^>>> ").feed(b">>> ") == ""


def test_caret_does_not_match_where_the_window_cuts_a_line() -> None:
    # In the whole stream "prompt> " is preceded by a space on the same line, so ^\w+> does
    # not match; only the window's cut makes "prompt> " look like the start of a line.
    framer = make_framer(r"^\w+> ", window=8)

    assert framer.feed(b"this is not a prompt> ") is None


def test_ready_regex_accepted_by_toolspec_with_inline_flags_is_usable_by_framer() -> None:
    spec = ToolSpec(name="tool", argv=["tool"], ready="(?i)ready> ")

    framer = make_framer(spec.ready, window=spec.ready_window, max_bytes=spec.max_reply_bytes)

    assert framer.feed(b"done\nREADY> ") == "done\n"


# -- decoding -------------------------------------------------------------------------------


def test_multibyte_character_split_across_reads_is_decoded_whole() -> None:
    framer = make_framer()
    # "é" is c3 a9 and "€" is e2 82 ac: both are cut between reads.
    results = feed_all(framer, [b"caf\xc3", b"\xa9 \xe2\x82", b"\xac\n>>> "])

    assert results == [None, None, "café €\n"]


def test_multibyte_characters_fed_one_byte_at_a_time_are_decoded_whole() -> None:
    framer = make_framer()
    text = "naïve 😀 ünïcödé\n"

    results = feed_all(framer, one_byte_at_a_time((text + PROMPT).encode()))

    assert results[-1] == text
    assert results[:-1] == [None] * (len((text + PROMPT).encode()) - 1)


def test_invalid_utf8_becomes_replacement_characters() -> None:
    framer = make_framer()

    assert framer.feed(b"bad \xff\xfe byte\n>>> ") == "bad \ufffd\ufffd byte\n"


def test_truncated_utf8_sequence_followed_by_ascii_becomes_one_replacement_character() -> None:
    framer = make_framer()

    results = feed_all(framer, [b"\xe2\x82", b"x\n>>> "])

    assert results == [None, "\ufffdx\n"]


# -- big replies and the bounded search window ----------------------------------------------


def test_four_megabyte_reply_fed_in_64k_chunks_comes_back_whole() -> None:
    body = b"".join(b"line %07d of a long reply\n" % i for i in range(160_000))
    assert len(body) > 4 * 1024 * 1024
    data = body + PROMPT.encode()
    chunk = 64 * 1024
    framer = make_framer()

    results = feed_all(framer, [data[i : i + chunk] for i in range(0, len(data), chunk)])

    assert results[:-1] == [None] * (len(results) - 1)
    assert results[-1] == body.decode()


def test_pattern_that_needs_more_than_the_window_does_not_match() -> None:
    data = b"BEGIN" + b"x" * 20 + b"> "
    ready = r"BEGIN[^\n]*> "

    assert make_framer(ready, window=16).feed(data) is None
    assert make_framer(ready, window=64).feed(data) == ""


def test_search_looks_only_at_the_last_window_characters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spies: list[SearchSpy] = []

    def spy_compile(pattern: str, flags: int = 0) -> SearchSpy:
        spies.append(SearchSpy(re.compile(pattern, flags)))
        return spies[-1]

    monkeypatch.setattr(
        _framing, "re", types.SimpleNamespace(**{**vars(re), "compile": spy_compile})
    )
    framer = make_framer(window=64)
    body = b"y" * 1024 * 1024

    results = feed_all(framer, [body[i : i + 1024] for i in range(0, len(body), 1024)])
    results.append(framer.feed(PROMPT.encode()))

    assert results[-1] == body.decode()
    # Every search sees the same 64 characters, however much output is buffered before it, so
    # one feed() costs the same after 1 KiB as after 1 MiB.
    assert [length for spy in spies for length in spy.searched] == [64] * 1025


# -- overflow, discard and partial ----------------------------------------------------------


def test_overflow_raises_with_size_and_partial_output() -> None:
    framer = make_framer(max_bytes=10)
    assert framer.feed(b"abcdef") is None

    with pytest.raises(FrameOverflow) as excinfo:
        framer.feed(b"ghijk")

    assert excinfo.value.size == 11
    # The chunk that crossed the limit is never buffered.
    assert excinfo.value.partial == "abcdef"
    assert framer.buffered_bytes == 0


def test_framer_discards_everything_after_an_overflow() -> None:
    framer = make_framer(max_bytes=10)
    with pytest.raises(FrameOverflow):
        framer.feed(b"0123456789!")

    results = feed_all(framer, [b">>> ", b"reply\n>>> "])

    assert results == [None, None]
    assert framer.partial() == ""
    assert framer.buffered_bytes == 0


def test_output_up_to_max_bytes_is_framed() -> None:
    framer = make_framer(max_bytes=10)

    assert framer.feed(b"123456>>> ") == "123456"


def test_discard_forgets_buffered_output() -> None:
    framer = make_framer()
    framer.feed(b"stray notice\n")

    framer.discard()

    assert framer.partial() == ""
    assert framer.buffered_bytes == 0
    assert framer.feed(b"reply\n>>> ") == "reply\n"


def test_discard_forgets_a_prompt_prefix_seen_before() -> None:
    framer = make_framer()
    framer.feed(b">>")

    framer.discard()

    assert framer.feed(b"> ") is None


def test_partial_returns_the_output_since_the_last_prompt() -> None:
    framer = make_framer()
    framer.feed(b"ab")
    framer.feed(b"cd")

    assert framer.partial() == "abcd"
    assert framer.buffered_bytes == 4
    assert framer.feed(b"\n>>> ") == "abcd\n"
    assert framer.partial() == ""
    assert framer.buffered_bytes == 0


# -- what begin() says the output starts with ---------------------------------------------


def test_the_echo_is_skipped_before_the_prompt_is_searched() -> None:
    # A terminal echoes the input; node's readline does it in pieces, one ending in "=> ".
    framer = make_framer(r"> ")
    framer.begin(echo="[1,2,3].map(x => x*2)\n")
    results = feed_all(framer, [b"[1,2,3].map(x => ", b"x*2)\r\r\n[ 2, 4, 6 ]\r\n> "])
    assert results == [None, "[ 2, 4, 6 ]\r\n"]


def test_the_echo_is_skipped_when_it_comes_one_byte_at_a_time() -> None:
    framer = make_framer(r"> ")
    framer.begin(echo="a > b\n")
    results = feed_all(framer, one_byte_at_a_time(b"a > b\r\nout\r\n> "))
    assert results == [None] * (len(results) - 1) + ["out\r\n"]


@pytest.mark.parametrize("chunks", [[b"quiet\n> "], [b"qu", b"iet\n> "]])
def test_output_that_is_not_the_echo_is_the_reply(chunks: list[bytes]) -> None:
    # A tool that does not echo loses nothing of its reply, not even what began like an echo.
    framer = make_framer(r"> ")
    framer.begin(echo="question\n")
    assert feed_all(framer, chunks)[-1] == "quiet\n"


def test_the_prompt_a_tool_repeats_for_each_line_of_a_block_is_skipped() -> None:
    framer = make_framer(r"^(?:[a-z]+)?> ")
    assert framer.feed(b"files\nask> ") == "files\n"
    framer.begin(repeats=3)
    results = feed_all(framer, [b"ask", b"> ask> as", b"k> reply\nask> "])
    assert results == [None, None, "reply\n"]


def test_a_block_whose_lines_do_not_each_repeat_the_prompt_is_a_desync() -> None:
    framer = make_framer(r"> ")
    assert framer.feed(b"> ") == ""
    framer.begin(repeats=2)
    with pytest.raises(FrameDesync, match="expected the prompt '> ' again"):
        framer.feed(b"> oops\n> ")
    # Nothing it prints afterwards is framed.
    assert framer.feed(b"reply\n> ") is None


def test_a_ready_prompt_must_name_the_input_in_flight() -> None:
    framer = make_framer(r"\[(?P<seq>\d+)\]> ")
    assert framer.feed(b"banner\n[0]> ") == "banner\n"  # start-up: no input yet
    framer.begin(seq=1)
    assert framer.feed(b"one\n[1]> ") == "one\n"
    framer.begin(seq=2)
    with pytest.raises(FrameDesync, match=r"the ready prompt '\[1\]> ' does not end input 2"):
        framer.feed(b"two\n[1]> ")
    assert framer.feed(b"[2]> ") is None


def test_a_numbered_prompt_settles_as_any_other() -> None:
    framer = Framer(r"\[(?P<seq>\d+)\]> ", window=4096, max_bytes=1 << 20, encoding="utf-8",
                    settle=True)  # fmt: skip
    framer.begin(seq=3)
    assert framer.feed(b"a\n[3]> ") is None
    assert framer.commit() == "a\n"


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([b"a\n[3]> ", b"b\n[3]> "], id="at-the-end-of-a-read-then-more"),
        pytest.param([b"a\n[3]> b\n[4]> "], id="two-in-one-read"),
        pytest.param([b"a\n[3]> b\n"], id="inside-one-read"),
    ],
)
def test_a_numbered_prompt_before_the_end_of_the_output_is_a_desync(chunks: list[bytes]) -> None:
    # Only the last ready prompt of a read ends a reply; an earlier one that shows a number
    # means the reply quoted the prompt, or the tool answered twice: never the next reply.
    framer = Framer(r"\[(?P<seq>\d+)\]> ", window=4096, max_bytes=1 << 20, encoding="utf-8",
                    settle=True)  # fmt: skip
    framer.begin(seq=3)
    with pytest.raises(FrameDesync, match=r"came before the output ended"):
        feed_all(framer, chunks)


def test_discard_forgets_what_begin_said() -> None:
    framer = make_framer(r"> ")
    framer.begin(echo="never echoed\n", repeats=4)
    framer.discard()
    assert framer.feed(b"reply\n> ") == "reply\n"


# -- clean_reply ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("a\r\nb\r\n", "a\nb", id="crlf"),
        pytest.param("a\r\r\nb\r\r\n", "a\nb", id="cr-cr-lf"),
        pytest.param("50%\r100%\n", "50%\r100%", id="lone-cr-kept"),
        pytest.param("a\nb\n", "a\nb", id="lf-unchanged"),
        pytest.param("a\r\r\r\r\nb\r\n\r\r\n", "a\nb\n", id="runs-of-cr"),
    ],
)
def test_clean_reply_turns_crlf_into_lf(raw: str, expected: str) -> None:
    assert clean_reply(raw) == expected


def test_clean_reply_takes_a_long_run_of_carriage_returns_in_one_pass() -> None:
    # A spinner, or hostile output, up to max_reply_bytes: a pass per carriage return of
    # the run would take hours; the suite's timeout fails the test long before.
    raw = "progress" + "\r" * 200_000 + "\ndone\n"
    assert clean_reply(raw) == re.sub(r"\r+\n", "\n", raw)[:-1] == "progress\ndone"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("a\n", "a", id="one"),
        pytest.param("a\n\n", "a\n", id="two"),
        pytest.param("a\r\n\r\n", "a\n", id="two-crlf"),
        pytest.param("\n", "", id="only-newline"),
        pytest.param("", "", id="empty"),
        pytest.param("a", "a", id="none"),
    ],
)
def test_clean_reply_strips_a_single_trailing_newline(raw: str, expected: str) -> None:
    assert clean_reply(raw) == expected
