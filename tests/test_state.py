"""Each instance's private {state} directory and the files written into it (ToolSpec.files)."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import attrs
import pytest

import aimcluster
from aimcluster import ToolSpec

pytestmark = pytest.mark.anyio

# A tool that keeps its configuration in $HOME/cfg: `show` prints HOME and the file, `spoil`
# overwrites it and leaves a file of its own beside it, `mine` reads that one back.
CONFIG_TOOL = """
import os, sys
home = os.environ["HOME"]
cfg, mine = os.path.join(home, "cfg"), os.path.join(home, "mine")
sys.stdout.write("> "); sys.stdout.flush()
for line in sys.stdin:
    command = line.strip()
    if command == "show":
        out = home + "|" + open(cfg).read()
    elif command == "spoil":
        open(cfg, "w").write("spoiled")
        open(mine, "w").write("kept")
        out = "ok"
    else:
        out = open(mine).read()
    sys.stdout.write(out + "\\n> "); sys.stdout.flush()
"""


def config_tool(**options: object) -> ToolSpec:
    return ToolSpec(
        name="config",
        argv=[sys.executable, "-c", CONFIG_TOOL],
        ready="> ",
        env={"HOME": "{state}/home"},
        files={"{state}/home/cfg": "instance={instance} state={state}"},
        **options,  # type: ignore[arg-type]
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_each_instance_has_a_home_of_its_own_with_its_own_files(cluster_factory) -> None:
    cluster = await cluster_factory(config_tool(), count=2)
    homes = []
    for i in range(2):
        home, config = (await cluster.send("show", instance=i)).text.split("|")
        state = Path(home).parent
        assert config == f"instance={i} state={state}"
        assert mode(state) == 0o700
        assert mode(Path(home) / "cfg") == 0o600
        assert (Path(home) / "cfg").read_text() == config
        homes.append(home)
    assert homes[0] != homes[1]
    assert Path(homes[0]).parent.parent == Path(homes[1]).parent.parent  # one per cluster
    assert mode(Path(homes[0]).parent.parent) == 0o700


async def test_the_state_directories_are_gone_after_the_cluster() -> None:
    async with aimcluster.launch_cluster(config_tool(), 2) as cluster:
        homes = [(await cluster.send("show", instance=i)).text.split("|")[0] for i in range(2)]
        root = Path(homes[0]).parent.parent
        assert root.is_dir()
    assert not root.exists()


async def test_the_state_directory_is_gone_when_the_cluster_fails_to_start(tmp_path) -> None:
    # The tool tells where its HOME was, then exits before it is ready.
    script = f"import os; open({str(tmp_path / 'home')!r}, 'w').write(os.environ['HOME'])"
    spec = ToolSpec(
        name="dud", argv=[sys.executable, "-c", script], ready="> ", env={"HOME": "{state}"}
    )
    with pytest.raises(aimcluster.StartupError):
        async with aimcluster.launch_cluster(spec, restart=False):
            pytest.fail("must not start")
    home = Path((tmp_path / "home").read_text())
    assert home.name == "0"
    assert not home.parent.exists()


async def test_a_restart_keeps_the_state_directory_and_rewrites_the_files(
    cluster_factory,
) -> None:
    cluster = await cluster_factory(config_tool())
    before = (await cluster.send("show")).text
    assert (await cluster.send("spoil")).text == "ok"
    assert (await cluster.send("show")).text.endswith("|spoiled")
    await cluster.restart(0)
    assert (await cluster.send("show")).text == before  # the same HOME, the file as configured
    assert (await cluster.send("mine")).text == "kept"  # what the tool wrote there stays


async def test_instance_is_replaced_in_file_paths_and_contents(cluster_factory, tmp_path) -> None:
    spec = attrs.evolve(
        aimcluster.tools.mock(env={"HOME": "{state}"}),
        files={
            str(tmp_path / "slot-{instance}.txt"): "I am {instance}",
            "{state}/{instance}.toml": "home = '{state}'",
        },
    )
    cluster = await cluster_factory(spec, count=2)
    for i in range(2):
        home = (await cluster.send("/env HOME", instance=i)).text
        assert Path(home).name == str(i)
        assert (tmp_path / f"slot-{i}.txt").read_text() == f"I am {i}"
        assert (Path(home) / f"{i}.toml").read_text() == f"home = '{home}'"


async def test_a_relative_file_path_is_taken_from_the_tools_working_directory(
    cluster_factory, tmp_path
) -> None:
    spec = config_tool(cwd=tmp_path)
    spec = attrs.evolve(spec, files={**(spec.files or {}), "notes/{instance}.md": "x"})
    cluster = await cluster_factory(spec)
    await cluster.send("show")
    assert (tmp_path / "notes" / "0.md").read_text() == "x"


def test_files_repr_shows_sizes_not_contents() -> None:
    spec = ToolSpec(
        name="t", argv=["true"], ready="> ", files={"{state}/auth.json": '{"key": "sk-secret"}'}
    )
    assert "sk-secret" not in repr(spec)
    assert "'{state}/auth.json': <20 chars>" in repr(spec)
    assert spec.files == {"{state}/auth.json": '{"key": "sk-secret"}'}
    hash(spec)


def test_files_must_map_paths_to_text() -> None:
    with pytest.raises(ValueError, match="the content of 'a' must be a str, got bytes"):
        ToolSpec(name="t", argv=["true"], ready="> ", files={"a": b"x"})  # type: ignore[dict-item]


def test_the_ray_transport_refuses_a_state_directory() -> None:
    ray = pytest.importorskip("aimcluster.ray")
    with pytest.raises(ValueError, match=r"uses \{state\}, a directory on this machine"):
        ray.RayTransport().check(config_tool())
