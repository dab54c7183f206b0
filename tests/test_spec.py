"""ToolSpec: an immutable, validated description of one kind of interactive tool."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs
import pytest

from aimcluster._base.spec import Probe, ToolSpec


def make_spec(**overrides: Any) -> ToolSpec:
    fields: dict[str, Any] = {"name": "repl", "argv": ["python", "-i"], "ready": r">>> "}
    fields.update(overrides)
    return ToolSpec(**fields)


def test_spec_is_frozen() -> None:
    spec = make_spec()

    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]


def test_spec_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        ToolSpec("repl", ["python", "-i"], ">>> ")  # type: ignore[call-arg]


def test_argv_list_is_stored_as_a_tuple() -> None:
    assert make_spec(argv=["python", "-i"]).argv == ("python", "-i")


def test_argv_from_a_generator_is_stored_as_a_tuple() -> None:
    assert make_spec(argv=(arg for arg in ["bash", "--norc"])).argv == ("bash", "--norc")


def test_executable_is_the_first_argument() -> None:
    assert make_spec(argv=["/usr/bin/python3", "-i"]).executable == "/usr/bin/python3"


def test_specs_with_equal_fields_are_equal_and_hashable() -> None:
    assert make_spec(argv=["python", "-i"]) == make_spec(argv=("python", "-i"))
    assert len({make_spec(), make_spec()}) == 1


def test_defaults() -> None:
    expected = {
        "pty": False,
        "merge_stderr": True,
        "env": None,
        "cwd": None,
        "startup_timeout": 30.0,
        "reply_timeout": None,
        "exit_command": None,
        "shutdown_grace": 3.0,
        "newline": "\n",
        "max_reply_bytes": 64 * 1024 * 1024,
        "ready_window": 4096,
        "stall_timeout": None,
        "encoding": "utf-8",
        "probe": None,
        "max_prompts": None,
        "max_age": None,
        "recycle_jitter": 0.1,
    }

    spec = make_spec()

    assert {name: getattr(spec, name) for name in expected} == expected


def test_optional_fields_are_kept() -> None:
    spec = make_spec(env={"TERM": "dumb"}, cwd=Path("/tmp"), exit_command="exit()", pty=True)

    assert (spec.env, spec.cwd, spec.exit_command, spec.pty) == (
        {"TERM": "dumb"},
        Path("/tmp"),
        "exit()",
        True,
    )


# -- validators -----------------------------------------------------------------------------


def test_empty_argv_is_rejected() -> None:
    with pytest.raises(
        ValueError, match=r"^argv must be a non-empty sequence of strings, got \(\)$"
    ):
        make_spec(argv=[])


def test_argv_with_a_non_string_is_rejected() -> None:
    with pytest.raises(
        ValueError, match=r"^argv must be a non-empty sequence of strings, got \('python', 3\)$"
    ):
        make_spec(argv=["python", 3])


def test_argv_given_as_a_single_string_is_rejected() -> None:
    with pytest.raises(ValueError, match="argv"):
        make_spec(argv="python")


def test_invalid_ready_regex_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"^ready is not a valid regex: '\(' \(") as excinfo:
        make_spec(ready="(")

    assert excinfo.value.__cause__ is None


@pytest.mark.parametrize("ready", ["", "a*", "$", "(>>> )?", "^"])
def test_ready_regex_matching_the_empty_string_is_rejected(ready: str) -> None:
    message = f"ready must not match the empty string, got {ready!r}"

    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make_spec(ready=ready)


@pytest.mark.parametrize(
    "field",
    [
        "startup_timeout",
        "reply_timeout",
        "shutdown_grace",
        "max_reply_bytes",
        "ready_window",
        "stall_timeout",
        "max_prompts",
        "max_age",
    ],
)
@pytest.mark.parametrize("value", [0, -1, -0.5])
def test_non_positive_limits_are_rejected_naming_the_field(field: str, value: float) -> None:
    message = f"{field} must be > 0, got {value!r}"

    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make_spec(**{field: value})


def test_nan_timeout_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"^startup_timeout must be > 0, got nan$"):
        make_spec(startup_timeout=float("nan"))


@pytest.mark.parametrize("field", ["reply_timeout", "stall_timeout", "max_prompts", "max_age"])
def test_optional_timeouts_accept_none(field: str) -> None:
    assert getattr(make_spec(**{field: None}), field) is None


def test_evolve_runs_the_validators() -> None:
    spec = make_spec()

    assert attrs.evolve(spec, reply_timeout=2.5).reply_timeout == 2.5
    with pytest.raises(ValueError, match=r"^reply_timeout must be > 0, got 0$"):
        attrs.evolve(spec, reply_timeout=0)


@pytest.mark.parametrize("value", [0, 0.5, 0.99])
def test_recycle_jitter_accepts_a_fraction_below_one(value: float) -> None:
    assert make_spec(recycle_jitter=value).recycle_jitter == value


@pytest.mark.parametrize("value", [-0.1, 1, 1.5])
def test_recycle_jitter_outside_zero_to_one_is_rejected(value: float) -> None:
    message = f"recycle_jitter must be in [0, 1), got {value!r}"

    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make_spec(recycle_jitter=value)


# -- Probe ----------------------------------------------------------------------------------


def test_probe_defaults_and_is_frozen() -> None:
    probe = Probe(command="1+1", expect=r"^2$")

    assert (probe.command, probe.expect, probe.interval, probe.timeout) == (
        "1+1",
        "^2$",
        30.0,
        10.0,
    )
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        probe.command = "2+2"  # type: ignore[misc]


def test_spec_keeps_its_probe() -> None:
    probe = Probe(command="1+1", expect="2", interval=5.0, timeout=1.0)

    assert make_spec(probe=probe).probe == Probe(command="1+1", expect="2", interval=5, timeout=1)


@pytest.mark.parametrize(
    ("expect", "message"),
    [
        ("(", "expect is not a valid regex: '('"),
        (".*", "expect must not match the empty string, got '.*'"),
    ],
)
def test_probe_rejects_an_unusable_expect_regex(expect: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        Probe(command="1+1", expect=expect)


@pytest.mark.parametrize("field", ["interval", "timeout"])
def test_probe_rejects_non_positive_durations(field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field} must be > 0, got 0$"):
        Probe(command="1+1", expect="2", **{field: 0})


def test_a_probe_the_tool_could_not_read_as_one_prompt_is_refused() -> None:
    # A probe is written as a prompt is, but no send() checks it first.
    probe = Probe(command="select 1;\nselect 2;", expect="1")
    with pytest.raises(ValueError, match=r"the probe's command cannot be sent: .*line break"):
        ToolSpec(name="repl", argv=["repl"], ready="> ", probe=probe)
