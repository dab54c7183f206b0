"""Real aider, driven through pipes by a cluster, against the fake OpenAI server, offline.

aider lives in its own virtualenv (``.ci/install-aider``). The test finds it through
``$AIMCLUSTER_AIDER``, then ``./.venv-aider/bin/aider``, then ``PATH``; without it the test is
skipped, unless ``AIMCLUSTER_REQUIRE_INTEGRATION=1``, which turns the skip into a failure so that
CI can never pass by skipping.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import anyio
import pytest

import aimcluster
from aimcluster._cli.journal import read_journal

from .conftest import wait_gone
from .fake_openai import FakeOpenAI, chat_files, doc_id

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def write_model_metadata(path: Path, model: str, *, context_window: int = 128_000) -> Path:
    """A ``--model-metadata-file`` that tells aider *model*'s limits and that it costs nothing."""
    info = {
        "max_tokens": 8192,
        "max_input_tokens": context_window,
        "max_output_tokens": 8192,
        "input_cost_per_token": 0.0,
        "output_cost_per_token": 0.0,
        "litellm_provider": model.split("/")[0],
        "mode": "chat",
    }
    path.write_text(json.dumps({model: info}, indent=2))
    return path


def find_aider() -> str | None:
    configured = os.environ.get("AIMCLUSTER_AIDER")
    if configured:
        if not os.access(configured, os.X_OK):
            pytest.fail(f"AIMCLUSTER_AIDER={configured!r} is not an executable file")
        return configured
    for venv in (Path.cwd() / ".venv-aider", Path(__file__).parents[1] / ".venv-aider"):
        candidate = venv / "bin" / "aider"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("aider")


@pytest.fixture(scope="module")
def aider_executable() -> str:
    found = find_aider()
    if found is None:
        message = (
            "aider not found (set AIMCLUSTER_AIDER, or run .ci/install-aider to create "
            "./.venv-aider)"
        )
        if os.environ.get("AIMCLUSTER_REQUIRE_INTEGRATION") == "1":
            pytest.fail(f"{message}; AIMCLUSTER_REQUIRE_INTEGRATION=1 forbids skipping")
        pytest.skip(message)
    return found


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(model="fake") as server:
        yield server


# Nothing may leave the machine: a request to anything but the fake server (which NO_PROXY
# exempts) goes to a proxy that refuses connections, so it fails loudly instead of leaking.
OFFLINE_ENV = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "ALL_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "all_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}

ORIGINALS = {
    "a.py": "def answer():\n    return 42\n",
    "src/b.py": 'GREETING = "hello"\n\n\ndef greet(name):\n    return f"{GREETING}, {name}"\n',
}


def offline_aider(
    profile: Callable[..., aimcluster.ToolSpec],
    executable: str,
    server: FakeOpenAI,
    tmp_path: Path,
    cwd: Path,
) -> aimcluster.ToolSpec:
    """*profile* (``tools.aider`` or ``tools.aider_oneshot``) talking to the fake *server* only,
    with a home of its own under *tmp_path*."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return profile(
        executable=executable,
        model="openai/fake",
        api_base=server.base_url,
        api_key="sk-fake-key",
        cwd=cwd,
        model_metadata_file=write_model_metadata(tmp_path / "models.json", "openai/fake"),
        env={"HOME": str(home), **OFFLINE_ENV},
    )


def tree(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): path.read_text()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def project_with(tmp_path: Path, files: Mapping[str, str]) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    for name, content in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(content)
    return project


@pytest.mark.timeout(300)
async def test_two_aiders_each_add_a_header_to_their_own_file_in_a_lease(
    aider_executable: str, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    project = project_with(tmp_path, ORIGINALS)
    # aider keeps analytics ids, install records and caches under ~/.aider.
    home = tmp_path / "home"
    home.mkdir()
    spec = aimcluster.tools.aider(
        executable=aider_executable,
        model="openai/fake",
        api_base=fake_openai.base_url,
        api_key="sk-fake-key",
        cwd=project,
        model_metadata_file=write_model_metadata(tmp_path / "models.json", "openai/fake"),
        env={"HOME": str(home), **OFFLINE_ENV},
    )
    replies: dict[str, list[str]] = {}
    instances: dict[str, int] = {}

    async with aimcluster.launch_cluster(spec, count=2) as cluster:
        pids = cluster.pids
        both_leased = anyio.Event()

        async def job(path: str) -> None:
            async with cluster.lease() as session:
                instances[path] = session.instance
                if len(instances) == 2:
                    both_leased.set()
                # Both leases are held at once, so each job has its own aider.
                with anyio.fail_after(60):
                    await both_leased.wait()
                replies[path] = [
                    (await session.send(prompt, timeout=120)).text
                    for prompt in (
                        f"/add {path}",
                        f"Add a DOC_ID header to {path}",
                        f"/drop {path}",
                    )
                ]

        async with anyio.create_task_group() as tg:
            for path in ORIGINALS:
                tg.start_soon(job, path)

    assert wait_gone(pids, timeout=10) == []
    assert sorted(instances.values()) == [0, 1]

    for path, (added, edited, dropped) in replies.items():
        # After each reply aider lists the files in the chat, one a line, before its prompt.
        assert added == f"\nAdded {path} to the chat\n\n{path}"
        assert f"+# DOC_ID: {doc_id(path)}\n" in edited
        assert edited.endswith(f"\nApplied edit to {path}\n\n{path}")
        assert dropped == f"\nRemoved {path} from the chat\n"

    # Exactly the instructed change, and no aider files (.aider.*) left in the project.
    assert tree(project) == {
        path: f"# DOC_ID: {doc_id(path)}\n{content}" for path, content in ORIGINALS.items()
    }

    # One completion per job, and nothing else: no model lookups, no retries, no reflections.
    requests = fake_openai.requests
    assert [(r.method, r.path, r.status) for r in requests] == [
        ("POST", "/v1/chat/completions", 200)
    ] * 2
    by_file = {}
    for request in requests:
        assert request.json["model"] == "fake"
        assert request.json.get("stream", False) is False
        assert request.headers["authorization"] == "Bearer sk-fake-key"
        files, _fence = chat_files(request.messages)
        (path,) = files
        by_file[path] = (files[path], request.last_user_text)
    assert set(by_file) == set(ORIGINALS)
    for path, (sent, instruction) in by_file.items():
        assert sent == ORIGINALS[path]
        assert instruction.startswith(f"Add a DOC_ID header to {path}\n")


@pytest.mark.timeout(300)
async def test_rate_limited_requests_are_retried_by_aider_and_the_notice_is_in_the_reply(
    aider_executable: str, tmp_path: Path
) -> None:
    long_answer = " ".join(["word"] * 60)
    with FakeOpenAI(model="fake", responder=lambda messages, body: long_answer) as server:
        spec = offline_aider(
            aimcluster.tools.aider, aider_executable, server, tmp_path, project_with(tmp_path, {})
        )
        async with aimcluster.launch_cluster(spec, count=1) as cluster:
            # The openai client inside litellm retries twice on its own, silently; the third
            # 429 reaches aider, which reports it and retries after 0.125 s, doubling.
            server.fail_next(429, count=3)
            reply = await cluster.send("hello", timeout=120)
    statuses = [r.status for r in server.requests]
    assert statuses == [429, 429, 429, 200]
    assert "The API provider has rate limited you." in reply.text
    # Not wrapped at 80 columns (COLUMNS), so the answer arrives as the model sent it.
    assert f"Retrying in 0.2 seconds...\n{long_answer}\n" in reply.text


@pytest.mark.timeout(300)
async def test_aider_oneshot_runs_one_process_per_message(
    aider_executable: str, tmp_path: Path
) -> None:
    with FakeOpenAI(model="fake", responder=lambda messages, body: "forty-two") as server:
        spec = offline_aider(
            aimcluster.tools.aider_oneshot,
            aider_executable,
            server,
            tmp_path,
            project_with(tmp_path, {}),
        )
        async with aimcluster.launch_cluster(spec, count=2) as cluster:
            replies = await cluster.map(["what is six times seven?", "--and again?"], timeout=120)
            assert cluster.pids == [None, None]
    assert all("forty-two" in reply.text for reply in replies)
    questions = sorted(r.last_user_text.splitlines()[0] for r in server.requests)
    assert questions == ["--and again?", "what is six times seven?"]


@pytest.mark.timeout(300)
async def test_an_instruction_of_several_lines_reaches_aider_as_one_message(
    aider_executable: str, tmp_path: Path
) -> None:
    # Sent as aider's {tag ... tag} block: one message to the model, one reply, and the
    # replies after it still answer their own prompts.
    with FakeOpenAI(model="fake", responder=lambda messages, body: "understood") as server:
        spec = offline_aider(
            aimcluster.tools.aider,
            aider_executable,
            server,
            tmp_path,
            project_with(tmp_path, ORIGINALS),
        )
        instruction = "First line of the task.\n\n> a quoted line\n}\n{\nLast line."
        async with aimcluster.launch_cluster(spec, count=1) as cluster:
            reply = await cluster.send(instruction, timeout=120)
            added = await cluster.send("/add a.py", timeout=120)
            dropped = await cluster.send("/drop a.py", timeout=120)
    # The model's answer, then aider's token count: the whole reply to the one message.
    assert reply.text.strip().splitlines()[0] == "understood"
    assert reply.text.splitlines()[-1].startswith("Tokens: ")
    assert added.text == "\nAdded a.py to the chat\n\na.py"
    assert dropped.text == "\nRemoved a.py from the chat\n"
    (request,) = server.completions
    assert request.last_user_text.startswith(instruction + "\n")


@pytest.mark.timeout(300)
def test_aider_in_worktrees_lands_each_verified_header_on_one_branch(
    aider_executable: str, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    # Issue 11's end-to-end scenario with real aider: two aiders, each in a worktree of its
    # own, add a header per file; --verify checks each file in its worktree, one file is
    # verified against a header it cannot have (so it fails and lands nothing), and the rest
    # land on one result branch as one commit each.
    files = {f"pkg/mod_{i}.py": f'"""Module {i}."""\nVALUE = {i}\n' for i in range(6)}
    project = project_with(tmp_path, files)
    run = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "the sources"]):
        subprocess.run([*run, *args], cwd=project, check=True, capture_output=True)
    base = subprocess.run(
        [*run, "rev-parse", "HEAD"], cwd=project, check=True, capture_output=True, text=True
    ).stdout.strip()
    home = tmp_path / "home"
    home.mkdir()
    metadata = write_model_metadata(tmp_path / "models.json", "openai/fake")
    tool = (
        f"aider --model openai/fake --openai-api-base {fake_openai.base_url} "
        f"--model-metadata-file {metadata}"
    )
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text("")
    env = {
        **os.environ,
        **OFFLINE_ENV,
        "HOME": str(home),
        "OPENAI_API_KEY": "sk-fake-key",
        "PATH": f"{Path(aider_executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GIT_CONFIG_GLOBAL": str(gitconfig),
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    # The fake model writes "# DOC_ID: <sha256(path)[:12]>"; mod_5 is checked for another id.
    verify = "python3 -c " + shlex.quote(
        "import hashlib, sys; path = sys.argv[1]; "
        "want = hashlib.sha256(('x' if path.endswith('5.py') else path).encode()).hexdigest()"
        "[:12]; sys.exit(open(path).readline() != '# DOC_ID: ' + want + chr(10))"
    )
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "aimcluster", "run", "--tool", tool, "--count", "2",
         "--isolation", "worktree", "pkg/*.py",
         "--step", "/add {item}", "--step", "Add a DOC_ID header to {item}",
         "--step", "/drop {item}", "--verify", f"{verify} {{item}}",
         "--journal", str(tmp_path / "journal.jsonl"), "--report", str(report),
         "--progress", "plain", "--timeout", "120"],
        cwd=project, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip

    assert done.returncode == 1, done.stdout + done.stderr
    records = {r["item"]: r for r in read_journal(tmp_path / "journal.jsonl").records}
    assert sorted(records) == sorted(files)
    assert records["pkg/mod_5.py"]["status"] == "failed"
    assert [r["status"] for item, r in records.items() if item != "pkg/mod_5.py"] == ["ok"] * 5
    branch = json.loads(report.read_text())["summary"]["landing"]["branch"]
    landed = subprocess.run(
        [*run, "diff", "--name-only", base, branch],
        cwd=project, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    assert sorted(landed) == sorted(f for f in files if f != "pkg/mod_5.py")
    for path in landed:
        content = subprocess.run(
            [*run, "show", f"{branch}:{path}"], cwd=project, check=True, capture_output=True
        ).stdout.decode()
        assert content == f"# DOC_ID: {doc_id(path)}\n{files[path]}"
    # The user's checkout is untouched.
    assert (
        subprocess.run(
            [*run, "status", "--porcelain"], cwd=project, check=True, capture_output=True
        ).stdout
        == b""
    )
