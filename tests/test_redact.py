"""Secrets never shown: secret-looking environment values and options are redacted in every
repr, error message, log line and traceback, and still reach the tool unchanged."""

from __future__ import annotations

import io
import pickle
import traceback
from collections.abc import Callable

import anyio
import attrs
import pytest
import structlog
from rich.console import Console
from rich.traceback import Traceback
from structlog.testing import capture_logs

import aimcluster
from aimcluster import ToolSpec, tools
from aimcluster._base.redact import REDACTED, Environment, looks_secret, redact_argv, redacted_repr

SECRET = "sk-ant-api03-VERY-SECRET-0123456789"

PROFILES: dict[str, Callable[[], ToolSpec]] = {
    "aider": lambda: tools.aider(api_key=SECRET),
    "aider_oneshot": lambda: tools.aider_oneshot(api_key=SECRET),
    "claude": lambda: tools.claude(api_key=SECRET),
    "codex": lambda: tools.codex(api_key=SECRET),
    "gemini": lambda: tools.gemini(api_key=SECRET),
    "mock": lambda: tools.mock(env={"MY_SERVICE_TOKEN": SECRET}),
    "bash": lambda: tools.bash(env={"DB_PASSWORD": SECRET}),
}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_a_profile_api_key_shows_in_no_repr_or_str(profile: str) -> None:
    spec = PROFILES[profile]()
    assert SECRET in spec.env.values()  # type: ignore[union-attr]
    for shown in (repr(spec), str(spec), repr(spec.env), str(spec.env), f"{spec!r}"):
        assert SECRET not in shown
        assert REDACTED in shown


def test_the_redacted_repr_names_the_variable_and_keeps_plain_values() -> None:
    spec = tools.mock(env={"ANTHROPIC_API_KEY": SECRET, "TERM": "dumb"})
    assert "env={'ANTHROPIC_API_KEY': '<redacted>', 'TERM': 'dumb'}" in repr(spec)


def test_an_evolved_spec_stays_redacted_and_equal_to_a_dict() -> None:
    original = tools.mock(env={"ANTHROPIC_API_KEY": SECRET})
    spec = attrs.evolve(original, name="other", reply_timeout=5)
    assert SECRET not in repr(spec)
    assert isinstance(spec.env, Environment)
    assert spec.env == {"ANTHROPIC_API_KEY": SECRET}
    assert dict(spec.env.items()) == {"ANTHROPIC_API_KEY": SECRET}
    # Replacing env with a plain dict is redacted too.
    replaced = attrs.evolve(spec, env={"GITHUB_TOKEN": SECRET})
    assert SECRET not in repr(replaced)


def test_the_environment_pickles_with_its_real_values() -> None:
    # How a spec travels to a Ray node: the tool there must get the real key.
    env = tools.claude(api_key=SECRET).env
    copied = pickle.loads(pickle.dumps(env))
    assert isinstance(copied, Environment)
    assert copied["ANTHROPIC_API_KEY"] == SECRET
    assert SECRET not in repr(copied)


def test_a_non_string_env_value_is_refused_without_showing_it() -> None:
    with pytest.raises(ValueError, match=r"^env must map str names to str values") as caught:
        tools.mock(env={"API_KEY": 12345678})  # type: ignore[dict-item]
    assert str(caught.value) == "env must map str names to str values, got int for 'API_KEY'"


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("OPENAI_API_KEY", True),
        ("github_token", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("PGPASSWORD", True),
        ("MYSQL_PASSWD", True),
        ("HTTP_AUTHORIZATION", True),
        ("GOOGLE_APPLICATION_CREDENTIALS", True),
        ("SESSION_COOKIE", True),
        ("SSH_PRIVATE", True),
        ("TERM", False),
        ("PATH", False),
        ("HOME", False),
        ("PYTHON_BASIC_REPL", False),
    ],
)
def test_which_names_look_secret(name: str, secret: bool) -> None:
    assert looks_secret(name) is secret


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["tool", "--api-key", SECRET, "-v"], ["tool", "--api-key", REDACTED, "-v"]),
        (["tool", f"--api-key={SECRET}"], ["tool", f"--api-key={REDACTED}"]),
        (["tool", "--token", "--verbose"], ["tool", "--token", "--verbose"]),
        (["tool", "--model", "gpt-5", "x"], ["tool", "--model", "gpt-5", "x"]),
        (
            ["tool", f"postgres://me:{SECRET}@db/x"],
            ["tool", f"postgres://me:{REDACTED}@db/x"],
        ),
    ],
)
def test_secret_options_are_redacted_in_a_shown_argv(argv: list[str], shown: list[str]) -> None:
    assert redact_argv(argv) == shown


def test_a_secret_option_on_the_command_line_shows_in_no_repr() -> None:
    spec = ToolSpec(name="t", argv=["tool", "--api-key", SECRET], ready="> ")
    assert spec.argv == ("tool", "--api-key", SECRET)
    assert repr(spec).startswith(f"ToolSpec(name='t', argv=('tool', '--api-key', '{REDACTED}'),")


@pytest.mark.parametrize(
    "make",
    [
        lambda: ToolSpec(name="t", argv=f"tool --api-key {SECRET}", ready="> "),  # type: ignore[arg-type]
        lambda: ToolSpec(
            name="t",
            argv=["tool", f"--token={SECRET}"],
            framing=aimcluster.OneshotFraming(),
        ),
    ],
    ids=["argv-as-a-string", "oneshot-without-prompt"],
)
def test_a_spec_error_message_shows_no_secret_option(make: Callable[[], ToolSpec]) -> None:
    with pytest.raises(ValueError, match="argv") as caught:
        make()
    assert SECRET not in str(caught.value)
    assert REDACTED in str(caught.value)


def _raise_with_spec_in_locals() -> None:
    spec = tools.claude(api_key=SECRET)
    env = spec.env
    raise RuntimeError(f"failed with {spec.name}, {len(env or ())} variables")


def test_a_traceback_with_locals_shows_no_secret() -> None:
    with pytest.raises(RuntimeError) as caught:
        _raise_with_spec_in_locals()
    stdlib = "".join(
        traceback.TracebackException.from_exception(caught.value, capture_locals=True).format()
    )
    assert "spec = ToolSpec(name='claude'" in stdlib
    assert SECRET not in stdlib
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(
        Traceback.from_exception(
            type(caught.value), caught.value, caught.value.__traceback__, show_locals=True
        )
    )
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "ANTHROPIC_API_KEY" in shown
    assert SECRET not in shown


def test_a_spec_in_a_log_event_is_rendered_without_its_secret() -> None:
    spec = tools.claude(api_key=SECRET)
    event = {"event": "tool_chosen", "spec": spec, "env": spec.env}
    for render in (
        structlog.processors.KeyValueRenderer(),
        structlog.processors.JSONRenderer(default=repr),
        structlog.dev.ConsoleRenderer(colors=False),
    ):
        shown = str(render(None, "info", dict(event)))
        assert SECRET not in shown
        assert "ANTHROPIC_API_KEY" in shown


def test_a_ray_transport_repr_shows_no_runtime_env_secret() -> None:
    ray = pytest.importorskip("aimcluster.ray")
    transport = ray.RayTransport(
        actor_options={"runtime_env": {"env_vars": {"OPENAI_API_KEY": SECRET, "A": "b"}}},
        init_options={"_redis_password": SECRET},
    )
    shown = repr(transport)
    assert SECRET not in shown
    assert "'env_vars': {'OPENAI_API_KEY': '<redacted>', 'A': 'b'}" in shown
    assert redacted_repr({"x": [f"https://u:{SECRET}@h"]}) == "{'x': ['https://u:<redacted>@h']}"


@pytest.mark.anyio
async def test_the_tool_gets_the_real_secret_and_no_log_event_shows_it() -> None:
    spec = tools.mock(env={"MY_API_KEY": SECRET})
    with capture_logs() as events:
        async with aimcluster.launch_cluster(spec, logger=structlog.get_logger()) as cluster:
            with anyio.fail_after(30):
                reply = await cluster.send("/env MY_API_KEY")
    assert reply.text == SECRET
    assert events, "the cluster logged nothing"
    for event in events:
        assert SECRET not in repr(event), event


def test_options_that_count_tokens_are_not_taken_for_secrets() -> None:
    # aider's --map-tokens 0 was shown as --map-tokens <redacted> by `aimcluster tools`.
    shown = redact_argv(["aider", "--map-tokens", "0", "--max-tokens=5", "--github_token", "t"])
    assert shown == ["aider", "--map-tokens", "0", "--max-tokens=5", "--github_token", REDACTED]
