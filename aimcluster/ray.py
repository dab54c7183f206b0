"""Tool instances hosted on a Ray cluster: ``launch_cluster(tool, n, transport=RayTransport())``.

Each instance's process is owned by one :class:`ToolHost` actor (the name ``ray list actors``
shows) on the node Ray places it on. The actor starts the tool in a session of its own with the
same code as :class:`aimcluster.LocalTransport`, buffers its output on the node and hands it
over in batches: a ``read`` call is a long poll that returns everything that has arrived (up to
``read_size`` bytes) as soon as anything has. Routing, framing, metrics, logs and supervision
stay in this process; only bytes, exit codes and signals cross the network.

If a node or an actor dies, the instance sees its process exit (``wait()`` returns ``-9``) and
the supervisor restarts it through its :class:`~aimcluster.RestartPolicy`, in a new actor on a
live node. Nothing outlives the cluster: closing a handle SIGKILLs the tool's whole session on
its node before ``ray.kill`` ends the actor (Ray reaps no children of a killed actor), and the
tool is started with ``PR_SET_PDEATHSIG`` so that it dies with its actor even when the actor
itself is killed or crashes.

Needs ``pip install 'aimcluster[ray]'``, with aimcluster installed on every node.

This module is the driver's side: the handle on a hosted process, the placement on nodes and
the transport; the actor that runs on a node is :mod:`aimcluster._transport.ray_host`. It is
a little past the 500-line guide because placement (the feasible nodes, the fewest of our
instances first, nodes suspected after a loss avoided) and the handle's recovery from a lost
node share the record of suspect nodes, and read best side by side.
"""

from __future__ import annotations

import errno
import re
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio
import anyio.lowlevel
import attrs

try:
    import ray
    from ray.exceptions import RayError, RayTaskError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ModuleNotFoundError as _exc:  # pragma: no cover - depends on the environment
    if _exc.name != "ray":
        raise
    raise ImportError(
        "aimcluster.ray needs Ray, which is not installed: pip install 'aimcluster[ray]'"
    ) from _exc

from ._base.logs import library_logger
from ._base.redact import redacted_repr
from ._base.statedir import uses_state

# The actor's side, which runs on the nodes. Its names stay importable from here.
from ._transport.ray_host import _STDERR, _STDOUT, _Exited, _Started, _StartFailed
from ._transport.ray_host import ToolHost as ToolHost
from .abc import ProcessHandle, Transport

if TYPE_CHECKING:
    from anyio.lowlevel import EventLoopToken
    from ray import ObjectRef

    from ._base.spec import ToolSpec

__all__ = ["RayTransport", "ToolHost"]

T = TypeVar("T")

# Silent unless the application configured logging (see _logging.py).
_log = library_logger("aimcluster.ray")

# The exit code reported for a process whose host (actor or node) died: it died with it.
_HOST_LOST_CODE: Final = -signal.SIGKILL
# How long a node whose actor died unexpectedly is avoided by new instances: longer than Ray's
# health check takes to declare a node that vanished without notice dead (15 s by default),
# until when it still lists the node as alive and would place new actors there.
_SUSPECT_FOR: Final = 30.0
# Bounds on closing a handle: the session kill and reap on the node, then actor death.
_CLOSE_TIMEOUT: Final = 5.0

# One ray.init() at a time, from whichever worker thread gets there first.
_init_lock = threading.Lock()

# Nodes on which an actor of ours died unexpectedly, and when (time.monotonic()). Shared by
# every RayTransport in this process, as the Ray connection is: a cluster started right after
# another one lost a node must not pick that node while Ray still lists it as alive.
_suspects: dict[str, float] = {}


def _suspect(node: str) -> None:
    _suspects[node] = time.monotonic()


def _current_suspects() -> set[str]:
    now = time.monotonic()
    for node, since in list(_suspects.items()):
        if now - since > _SUSPECT_FOR:
            del _suspects[node]
    return set(_suspects)


class _NodeLost(OSError):
    """An actor died before its tool started, on a node we chose: try another node."""


# -- the actor, as Ray schedules it ------------------------------------------------------------


# num_cpus=0: a tool host holds no CPU in Ray's books (the tool's own use is outside them), so
# a node takes as many instances as it has memory for. max_restarts=0 and max_task_retries=0: the
# supervisor restarts instances, and a prompt must never be written twice.
# Typed as Any: Ray types `actor.method.remote()` only for methods decorated with a bare
# @ray.method, which older Ray versions do not accept. The results are annotated where awaited.
_ToolHostActor: Any = ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)(ToolHost)


# -- in this process: the handle ----------------------------------------------------------------


async def _resolve(ref: ObjectRef[T], token: EventLoopToken) -> T:
    """The value of *ref*, awaited on any anyio backend without a thread.

    ObjectRefs are awaitable only from asyncio. ``ref.future()`` is what ``await ref`` uses
    there too; its done callback runs on a Ray thread and wakes this task with the event
    loop's thread-safe, non-blocking ``run_sync_soon`` (anyio's BlockingPortal does the same).
    Cancelling the wait leaves the call running and its result in *ref*.
    """
    return await _result(ref.future(), token)


async def _result(future: Future[T], token: EventLoopToken) -> T:
    if not future.done():
        done = anyio.Event()

        def wake(_: object) -> None:
            try:
                token.backend_class.run_sync_soon(done.set, (), token.native_token)
            except anyio.RunFinishedError:
                pass  # nobody is waiting any more

        future.add_done_callback(wake)
        await done.wait()
    else:
        await anyio.lowlevel.checkpoint()
    return future.result()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _describe(error: RayError) -> str:
    """The line of a Ray error that says what happened."""
    lines = [line for line in _ANSI.sub("", str(error)).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    # A task error is "ray::ToolHost.start() (pid=...)", a traceback, then the exception.
    return (lines[-1] if isinstance(error, RayTaskError) else lines[0])[:300]


def _discard(ref: ObjectRef[Any]) -> None:
    """Let a call run without waiting for it. Fetching its result in the background keeps Ray
    from logging an 'unhandled error' if the actor is gone by then."""
    ref.future()


class _RayProcess(ProcessHandle):
    def __init__(
        self,
        transport: RayTransport,
        actor: Any,
        started: _Started,
        *,
        separate_stderr: bool,
        read_size: int,
        token: EventLoopToken,
    ) -> None:
        self._transport = transport
        self._actor = actor
        self._started = started
        self._read_size = read_size
        self._token = token
        # A read call that was issued and not yet consumed: a receive() cancelled while it
        # waited leaves it here for the next one, so that no output is lost in between.
        self._reads: list[ObjectRef[bytes] | None] = [None, None]
        self._eof = [False, not separate_stderr]
        self._exit_code: int | None = None
        self._lost = False
        self._closed = False
        self._serve: ObjectRef[None] = actor.serve.remote()
        _discard(self._serve)
        self._wait: ObjectRef[_Exited] = actor.wait.remote()

    @property
    def pid(self) -> int:
        return self._started.pid

    @property
    def node(self) -> str:
        """The Ray node id of the node the tool runs on."""
        return self._started.node_id

    @property
    def node_ip(self) -> str:
        """The IP address of that node."""
        return self._started.node_ip

    async def receive(self) -> bytes:
        return await self._read(_STDOUT)

    async def receive_stderr(self) -> bytes:
        return await self._read(_STDERR)

    async def _read(self, stream: int) -> bytes:
        if self._eof[stream]:
            raise anyio.EndOfStream
        ref = self._reads[stream]
        if ref is None:
            ref = self._reads[stream] = self._actor.read.remote(stream, self._read_size)
        try:
            data: bytes = await _resolve(ref, self._token)
        except RayError as exc:
            self._reads[stream] = None
            self._eof[stream] = True
            self._host_lost(exc)
            raise anyio.EndOfStream from None
        self._reads[stream] = None
        if not data:
            self._eof[stream] = True
            raise anyio.EndOfStream
        return data

    async def send(self, data: bytes) -> None:
        if self._lost or self._closed:
            raise anyio.BrokenResourceError
        try:
            delivered: bool = await _resolve(self._actor.send.remote(data), self._token)
        except RayError as exc:
            # The host died during the call, and Ray cannot say whether the write happened. It
            # counts as sent, as a pipe write into a dying tool does: the exit that follows
            # fails the prompt, and only a caller who opted into retries gets it sent again.
            # (BrokenResourceError would requeue it as surely undelivered: sent twice, maybe.)
            self._host_lost(exc)
            return
        if not delivered:
            raise anyio.BrokenResourceError

    async def wait(self) -> int:
        if self._exit_code is None:
            try:
                exited: _Exited = await _resolve(self._wait, self._token)
            except RayError as exc:
                self._host_lost(exc)
                self._exit_code = _HOST_LOST_CODE
                return self._exit_code
            if not exited.node_alive:
                # No Ray error, yet the node is going: keep the restart off it.
                _suspect(self.node)
                _log.warning("ray_node_lost", pid=self.pid, node=self.node, exit_code=exited.code)
            self._exit_code = exited.code
        return self._exit_code

    def signal_group(self, signum: int) -> None:
        if not self._lost and not self._closed:
            _discard(self._actor.signal_group.remote(signum))

    def kill_all(self) -> None:
        if not self._lost and not self._closed:
            _discard(self._actor.kill_all.remote())

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if not self._lost:
                # The session first: ray.kill alone would leave the tool running on the node.
                with anyio.move_on_after(_CLOSE_TIMEOUT):
                    try:
                        await _resolve(self._actor.close.remote(), self._token)
                    except RayError:
                        pass
        finally:
            for ref in self._reads:
                if ref is not None:
                    _discard(ref)
            ray.kill(self._actor, no_restart=True)
            self._transport._release(self._started.node_id)

    def _host_lost(self, error: RayError) -> None:
        if self._lost or self._closed:
            return
        self._lost = True
        if not isinstance(error, RayTaskError):  # the actor or its node died: not our code
            _suspect(self._started.node_id)
        _log.warning(
            "ray_host_lost",
            pid=self.pid,
            node=self.node,
            error=type(error).__name__,
            detail=_describe(error),
        )


# -- the transport ------------------------------------------------------------------------------


def _check_node_ids(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, str) or not all(isinstance(node, str) for node in value):  # type: ignore[attr-defined]
        raise ValueError(f"node_ids must be a sequence of Ray node id strings, got {value!r}")
    if not value:
        raise ValueError("node_ids must name at least one node, got an empty sequence")


def _check_resources(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, Mapping) or not all(
        isinstance(name, str) and isinstance(amount, int | float) and amount > 0
        for name, amount in value.items()
    ):
        raise ValueError(f"resources must map resource names to amounts > 0, got {value!r}")


def _check_placement(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, str) and value not in ("spread", "default"):
        raise ValueError(
            f"placement must be 'spread', 'default' or a Ray scheduling strategy, got {value!r}"
        )


def _node_ids_tuple(value: Sequence[str] | None) -> Sequence[str] | None:
    # A str is a sequence too: leave it for the validator to reject.
    return value if value is None or isinstance(value, str) else tuple(value)


@attrs.define(eq=False)
class RayTransport(Transport):
    """Runs each instance's process on a Ray cluster, in an actor of its own.

    ::

        async with launch_cluster("mock", 8, transport=RayTransport("auto")) as cluster:
            print([i.node for i in cluster.metrics().instances])

    If Ray is not initialised when the first instance starts, ``ray.init(address,
    **init_options)`` connects to (or starts) a cluster, in a worker thread. Each instance's
    ``node`` in the metrics is the Ray node id it runs on.

    The ToolSpec is applied on the node: ``argv[0]`` is looked up on that node's ``PATH``,
    ``env`` is added to the environment of the node's Ray worker, and ``cwd`` (``None``: the
    worker's working directory) must exist there.
    """

    #: Passed to ``ray.init`` if Ray is not initialised yet: ``None`` (``RAY_ADDRESS``, else a
    #: new local Ray), ``"auto"`` (the running local cluster) or ``"ray://host:10001"``, etc.
    address: str | None = None
    #: ``"spread"``: each new instance goes to the alive node that hosts the fewest of this
    #: transport's instances, avoiding nodes that just lost one. ``"default"``: Ray's scheduler
    #: decides (it tends to fill the driver's node first). Or any Ray scheduling strategy object
    #: (a placement group, node labels), passed on as it is.
    placement: object = attrs.field(default="spread", kw_only=True, validator=_check_placement)
    #: Only these Ray node ids host instances (spread over those alive); with ``"spread"`` only.
    node_ids: Sequence[str] | None = attrs.field(
        default=None, kw_only=True, converter=_node_ids_tuple, validator=_check_node_ids
    )
    #: Ray resources each instance's actor needs, e.g. ``{"aimcluster": 1}`` for nodes started
    #: with ``--resources '{"aimcluster": 8}'`` (which also caps instances per node).
    resources: Mapping[str, float] = attrs.field(
        factory=dict, kw_only=True, validator=_check_resources
    )
    #: CPUs each actor reserves in Ray's books (0: as many instances per node as memory allows).
    num_cpus: float = attrs.field(default=0.0, kw_only=True)
    #: Further ``ActorClass.options()`` for each actor, e.g. ``{"runtime_env": {...}}``.
    actor_options: Mapping[str, Any] = attrs.field(factory=dict, kw_only=True, repr=redacted_repr)
    #: Further ``ray.init`` keyword arguments, used only if this transport initialises Ray.
    init_options: Mapping[str, Any] = attrs.field(factory=dict, kw_only=True, repr=redacted_repr)
    #: The most output bytes one read call brings back.
    read_size: int = attrs.field(default=1 << 20, kw_only=True)

    # Our live instances per node.
    _load: dict[str, int] = attrs.field(init=False, repr=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.node_ids is not None and self.placement != "spread":
            raise ValueError(
                f"node_ids works with placement='spread' only, got placement={self.placement!r}"
            )
        if self.num_cpus < 0:
            raise ValueError(f"num_cpus must be >= 0, got {self.num_cpus!r}")
        if self.read_size < 1:
            raise ValueError(f"read_size must be >= 1, got {self.read_size!r}")

    def check(self, spec: ToolSpec) -> None:
        """Refuse ``{state}``: the cluster creates that directory on this machine, and the
        instances run on other nodes. (``files`` are written on the node, by the actor.)

        The executable is looked up on the node that runs each instance when it starts, and
        a missing one fails that start (StartupError).
        """
        if uses_state(spec):
            raise ValueError(
                f"tool {spec.name!r} uses {{state}}, a directory on this machine, which the "
                "RayTransport's nodes do not share: give its instances paths that exist on "
                "every node (for example with {instance}) instead"
            )

    async def spawn(self, spec: ToolSpec, *, instance: int) -> ProcessHandle:
        token = anyio.lowlevel.current_token()
        if not ray.is_initialized():
            await anyio.to_thread.run_sync(self._init_ray)
        deadline = anyio.current_time() + spec.startup_timeout
        tried: set[str] = set()
        while True:
            node = await self._choose_node(avoid=tried) if self.placement == "spread" else None
            try:
                return await self._start(spec, instance, node, deadline, token)
            except _NodeLost as lost:
                # The node died between Ray's list and the actor's start (Ray lists a node
                # that died without notice as alive until its health check gives up, 15 s by
                # default): place the instance again, elsewhere, within the same time.
                assert node is not None
                tried.add(node)
                if not await self._can_place(avoid=tried):
                    raise OSError(errno.EHOSTDOWN, lost.strerror) from lost.__cause__
                _log.warning("ray_placement_retried", instance=instance, lost_node=node)

    async def _start(
        self,
        spec: ToolSpec,
        instance: int,
        node: str | None,
        deadline: float,
        token: EventLoopToken,
    ) -> ProcessHandle:
        """Start *spec* in a new actor, on *node* if given, by *deadline*."""
        actor = _ToolHostActor.options(**self._options(node)).remote()
        start: Future[_Started | _StartFailed] = actor.start.remote(
            spec, instance, self.read_size
        ).future()
        try:
            with anyio.fail_at(deadline):
                started = await _result(start, token)
        except BaseException as exc:
            if start.done() and start.exception() is None and isinstance(start.result(), _Started):
                # Cancelled just as the tool started: its session goes before its actor.
                with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
                    try:
                        await _resolve(actor.close.remote(), token)
                    except RayError:
                        pass
            # Otherwise the start is still queued or running: if it forks the tool before the
            # kill lands, PR_SET_PDEATHSIG ends it with the actor.
            ray.kill(actor, no_restart=True)
            if node is not None:
                self._release(node)
            if isinstance(exc, TimeoutError):
                raise OSError(
                    errno.ETIMEDOUT,
                    f"Ray placed no actor for instance {instance} within {spec.startup_timeout} s "
                    f"(placement={self.placement!r}, resources={dict(self.resources)!r})",
                ) from None
            if isinstance(exc, RayError):
                message = (
                    f"the Ray actor for instance {instance} failed before the tool started: "
                    f"{_describe(exc)}"
                )
                if isinstance(exc, RayTaskError) or node is None:
                    raise OSError(errno.EHOSTDOWN, message) from exc
                _suspect(node)  # the actor died, or its node did: not our code
                raise _NodeLost(errno.EHOSTDOWN, message) from exc
            raise
        if isinstance(started, _StartFailed):
            ray.kill(actor, no_restart=True)
            if node is not None:
                self._release(node)
            raise OSError(started.errno, f"{started.message} (on Ray node {node})")
        if node is None:  # Ray chose
            self._load[started.node_id] = self._load.get(started.node_id, 0) + 1
        return _RayProcess(
            self,
            actor,
            started,
            separate_stderr=not spec.merge_stderr and not spec.pty,
            read_size=self.read_size,
            token=token,
        )

    # -- placement ------------------------------------------------------------------------

    def _init_ray(self) -> None:
        with _init_lock:
            if not ray.is_initialized():
                ray.init(address=self.address, **self.init_options)
                _log.info("ray_connected", address=self.address)

    def _options(self, node: str | None) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.resources:
            options["resources"] = dict(self.resources)
        if node is not None:
            # Hard: a soft affinity lets Ray put the actor elsewhere even on a live node (Ray
            # 2.60 does so for about one actor in six), which defeats the spreading. If the node
            # dies before the actor is placed, the start fails and the restart goes elsewhere.
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        elif self.placement != "default":
            options["scheduling_strategy"] = self.placement
        options.update(self.actor_options)
        return options

    async def _choose_node(self, *, avoid: set[str]) -> str:
        nodes = [n for n in await anyio.to_thread.run_sync(self._feasible_nodes) if n not in avoid]
        if not nodes:
            where = f"of {list(self.node_ids)!r} " if self.node_ids is not None else ""
            raise OSError(
                errno.EHOSTDOWN,
                f"no alive Ray node {where}has the resources an instance needs "
                f"(num_cpus={self.num_cpus}, resources={dict(self.resources)!r})",
            )
        suspects = _current_suspects()
        trusted = [node for node in nodes if node not in suspects] or nodes
        # Fewest of our instances first; ties go to the first node in Ray's order, so that N
        # instances on N empty nodes land one per node.
        node = min(trusted, key=lambda node: self._load.get(node, 0))
        self._load[node] = self._load.get(node, 0) + 1
        return node

    async def _can_place(self, *, avoid: set[str]) -> bool:
        nodes = await anyio.to_thread.run_sync(self._feasible_nodes)
        return any(node not in avoid for node in nodes)

    def _feasible_nodes(self) -> list[str]:
        needs = dict(self.resources)
        if self.num_cpus:
            needs["CPU"] = self.num_cpus
        feasible = []
        list_nodes: Callable[[], list[dict[str, Any]]] = ray.nodes
        for info in list_nodes():
            node = info["NodeID"]
            if not info["Alive"] or (self.node_ids is not None and node not in self.node_ids):
                continue
            total = info.get("Resources", {})
            if all(total.get(name, 0) >= amount for name, amount in needs.items()):
                feasible.append(node)
        return feasible

    def _release(self, node: str) -> None:
        count = self._load.get(node, 0) - 1
        if count > 0:
            self._load[node] = count
        else:
            self._load.pop(node, None)
