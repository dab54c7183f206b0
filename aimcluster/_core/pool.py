"""Pools: the instances of one tool in a cluster, and what a prompt must be to reach them.

A cluster is one or more pools. Each pool keeps its own spec, restart policy, queues and
rate-limit pause, so a rate limit from one vendor holds back that pool alone. Instances are
numbered across the whole cluster (``Reply.instance`` names one instance whatever its pool);
within its pool an instance also has a *slot*, its index in the pool's dispatcher.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import attrs

from .._base.dispatch import Dispatcher
from .._base.policy import RestartPolicy
from .._base.ratelimit import RateLimiter
from .._base.spec import ToolSpec
from .._base.statedir import StateDirectory
from .._slot.instance import InstanceState
from .._tools.registry import get as get_tool

if TYPE_CHECKING:
    from .._slot.instance import Instance

__all__ = ["Pool", "PoolInfo", "PoolState", "check_prompt", "pools_of"]

# Linux's canonical-mode line limit (N_TTY_BUF_SIZE): a longer line sent to a pty is truncated.
_PTY_MAX_LINE = 4095


def _to_spec(tool: str | ToolSpec) -> ToolSpec:
    if isinstance(tool, ToolSpec):
        return tool
    if isinstance(tool, str):
        return get_tool(tool)
    raise TypeError(f"a pool's tool must be a tool name or a ToolSpec, got {tool!r}")


def _default_name(pool: Pool) -> str:
    return pool.tool.name


def _check_count(instance: Pool, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"a pool's count must be an integer >= 1, got {value!r}")


def _check_name(instance: Pool, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value or any(c in value for c in "=,\n"):
        raise ValueError(
            f"a pool's name must be a non-empty str without '=', ',' or newlines, got {value!r}"
        )


def _to_tags(tags: Iterable[str]) -> frozenset[str]:
    if isinstance(tags, str):
        raise TypeError(f"tags must be a collection of strings, got the string {tags!r}")
    return frozenset(tags)


@attrs.frozen
class Pool:
    """*count* instances of one tool in a cluster of several tools::

        launch_cluster([Pool("aider", 4, tags={"cheap"}), Pool("claude", 2)])

    ``launch_cluster({"aider": 4, "claude": 2})`` is the short form (no tags, the cluster's
    restart policy). Prompts pick a pool by its name or a tag (``send(..., tool="cheap")``).
    """

    #: The tool: a registered name (see :func:`aimcluster.tools.names`) or a ToolSpec.
    tool: ToolSpec = attrs.field(converter=_to_spec)
    count: int = attrs.field(default=1, validator=_check_count)
    #: The pool's name, unique in the cluster (default: the tool's name). ``Reply.tool``,
    #: metrics and logs name the pool by it.
    name: str = attrs.field(
        default=attrs.Factory(_default_name, takes_self=True), kw_only=True, validator=_check_name
    )
    #: Other names prompts may pick this pool by; several pools may share a tag.
    tags: frozenset[str] = attrs.field(default=frozenset(), converter=_to_tags, kw_only=True)
    #: The pool's restart policy: ``None`` for the cluster's, ``True`` for the default one,
    #: ``False`` for none.
    restart: RestartPolicy | bool | None = attrs.field(default=None, kw_only=True)


def pools_of(
    tool: str | ToolSpec | Mapping[str, int] | Sequence[Pool | tuple[str | ToolSpec, int]],
    count: int,
) -> list[Pool]:
    """The pools ``launch_cluster(tool, count)`` describes, checked."""
    if isinstance(tool, (str, ToolSpec)):
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"count must be an integer >= 1, got {count!r}")
        return [Pool(tool, count)]
    if count != 1:
        raise ValueError("count is given per pool when tool names several pools")
    if isinstance(tool, Mapping):
        pools = [Pool(name, n) for name, n in tool.items()]
    else:
        pools = []
        for entry in tool:
            if isinstance(entry, Pool):
                pools.append(entry)
            elif isinstance(entry, tuple) and len(entry) == 2:
                pools.append(Pool(entry[0], entry[1]))
            else:
                raise TypeError(f"expected a Pool or a (tool, count) pair, got {entry!r}")
    if not pools:
        raise ValueError("a cluster needs at least one pool")
    names = [pool.name for pool in pools]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate is not None:
        raise ValueError(
            f"two pools are named {duplicate!r}: give one a name of its own (Pool(..., name=))"
        )
    clash = sorted({tag for pool in pools for tag in pool.tags} & set(names))
    if clash:
        raise ValueError(f"a tag may not be a pool's name: {', '.join(map(repr, clash))}")
    return pools


@attrs.frozen(kw_only=True)
class PoolInfo:
    """What :attr:`Cluster.pools` says of one pool."""

    name: str
    spec: ToolSpec
    tags: frozenset[str]
    #: The indices of its instances, in slot order.
    instances: tuple[int, ...]
    #: Whether a rate limit holds its prompts back now.
    paused: bool


def check_prompt(spec: ToolSpec, prompt: str) -> None:
    """Raise :class:`ValueError` if *spec*'s tool cannot take *prompt* as one input."""
    try:
        encoded = prompt.encode(spec.encoding)
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"the prompt cannot be written in the tool's encoding ({exc.encoding}): "
            f"{exc.object[exc.start : exc.end]!r} at position {exc.start}"
        ) from None
    # Refuses a prompt the tool would not read as one input (a line break, mostly). With the
    # largest input number it may go as: a numbered input's line grows with it.
    text = spec.input_for(prompt, 10**9)
    if spec.pty:
        data = encoded if text is prompt else text.encode(spec.encoding)
        if len(data) <= _PTY_MAX_LINE:
            return  # no line of it can be too long (the usual case: no split on every prompt)
        for line in data.split(b"\n"):
            if len(line) > _PTY_MAX_LINE:
                raise ValueError(
                    f"a prompt line of {len(line)} bytes is longer than a terminal accepts "
                    f"({_PTY_MAX_LINE} bytes); use pipes (pty=False) for long input"
                )


@attrs.define(eq=False)
class PoolState:
    """A pool while its cluster runs: owned by the cluster, which alone changes it."""

    name: str
    spec: ToolSpec
    tags: frozenset[str]
    policy: RestartPolicy | None
    dispatcher: Dispatcher
    #: The pool's own rate-limit pause: a 429 from its vendor holds back this pool alone.
    limiter: RateLimiter = attrs.field(factory=RateLimiter)
    #: Its instances, in slot order.
    instances: list[Instance] = attrs.field(factory=list)
    #: The slots that can still take work (not failed, stopped or retiring), in order.
    healthy: list[int] = attrs.field(factory=list)
    #: The instances' ``{state}`` directories, while the cluster runs (``None``: none used).
    state: StateDirectory | None = None
    #: Prompts and leases that moved away from this pool, and into it.
    failovers_out: int = 0
    failovers_in: int = 0

    @classmethod
    def create(
        cls,
        described: Pool,
        restart: RestartPolicy | None,
        *,
        max_pending: int,
        clock: Callable[[], float],
    ) -> PoolState:
        """The pool *described* will be, before its instances; *restart* is the cluster's
        policy, for a pool without one of its own."""
        if described.restart is None:
            policy = restart
        elif described.restart is True:
            policy = RestartPolicy()
        elif described.restart is False:
            policy = None
        else:
            policy = described.restart
        pool = cls(
            name=described.name,
            spec=described.tool,
            tags=described.tags,
            policy=policy,
            dispatcher=Dispatcher(described.count, max_pending=max_pending),
        )
        pool.limiter.clock = clock
        return pool

    def refresh_healthy(self) -> None:
        self.healthy = [i.slot for i in self.instances if i.healthy]

    def healthy_indices(self) -> list[int]:
        return [self.instances[slot].index for slot in self.healthy]

    def load(self) -> float:
        """Work per healthy instance: the prompts in flight and queued, over the instances
        that can take them (lower is less busy)."""
        busy = sum(1 for i in self.instances if i.state is InstanceState.BUSY)
        queued = self.dispatcher.queued(None) + sum(
            self.dispatcher.queued(slot) for slot in self.healthy
        )
        return (busy + queued) / max(1, len(self.healthy))

    def accepts(self, prompt: str) -> bool:
        try:
            check_prompt(self.spec, prompt)
        except ValueError:
            return False
        return True

    def info(self) -> PoolInfo:
        return PoolInfo(
            name=self.name,
            spec=self.spec,
            tags=self.tags,
            instances=tuple(i.index for i in self.instances),
            paused=self.limiter.paused,
        )
