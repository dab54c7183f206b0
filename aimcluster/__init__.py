"""aimcluster: run a fleet of interactive command-line tools as one supervised async cluster."""

from __future__ import annotations

from ._base.errors import AimclusterError as AimclusterError
from ._base.errors import AutoAnswerLimitError as AutoAnswerLimitError
from ._base.errors import ClusterClosedError as ClusterClosedError
from ._base.errors import DesyncError as DesyncError
from ._base.errors import InstanceCrashedError as InstanceCrashedError
from ._base.errors import InstanceStalledError as InstanceStalledError
from ._base.errors import NoHealthyInstancesError as NoHealthyInstancesError
from ._base.errors import PromptCancelledError as PromptCancelledError
from ._base.errors import RateLimitedError as RateLimitedError
from ._base.errors import ReplyTimeoutError as ReplyTimeoutError
from ._base.errors import ReplyTooLargeError as ReplyTooLargeError
from ._base.errors import StartupError as StartupError
from ._base.errors import ToolError as ToolError
from ._base.errors import ToolNotFoundError as ToolNotFoundError
from ._base.errors import single_error as single_error
from ._base.framing import JsonlFraming as JsonlFraming
from ._base.framing import OneshotFraming as OneshotFraming
from ._base.framing import PromptFraming as PromptFraming
from ._base.lease import Session as Session
from ._base.metrics import ClusterMetrics as ClusterMetrics
from ._base.metrics import InstanceMetrics as InstanceMetrics
from ._base.metrics import PoolMetrics as PoolMetrics
from ._base.policy import RestartPolicy as RestartPolicy
from ._base.redact import redact_argv as redact_argv
from ._base.request import Reply as Reply
from ._base.request import Ticket as Ticket
from ._base.routing import ROUTINGS as ROUTINGS
from ._base.spec import Probe as Probe
from ._base.spec import ToolSpec as ToolSpec
from ._base.usage import Usage as Usage
from ._core.cluster import Cluster as Cluster
from ._core.cluster import launch_cluster as launch_cluster
from ._core.compare import CompareRun as CompareRun
from ._core.compare import Comparison as Comparison
from ._core.compare import ToolTotals as ToolTotals
from ._core.compare import compare_jobs as compare_jobs
from ._core.jobs import Job as Job
from ._core.jobs import JobResult as JobResult
from ._core.jobs import Workspace as Workspace
from ._core.pool import Pool as Pool
from ._core.pool import PoolInfo as PoolInfo
from ._core.scheduler import JobRun as JobRun
from ._core.scheduler import run_jobs as run_jobs
from ._slot.instance import InstanceState as InstanceState
from ._transport.local import LocalTransport as LocalTransport

__all__ = [
    "ROUTINGS",
    "AimclusterError",
    "AutoAnswerLimitError",
    "Cluster",
    "ClusterClosedError",
    "ClusterMetrics",
    "CompareRun",
    "Comparison",
    "DesyncError",
    "InstanceCrashedError",
    "InstanceMetrics",
    "InstanceStalledError",
    "InstanceState",
    "Job",
    "JobResult",
    "JobRun",
    "JsonlFraming",
    "LocalTransport",
    "NoHealthyInstancesError",
    "OneshotFraming",
    "Pool",
    "PoolInfo",
    "PoolMetrics",
    "Probe",
    "PromptCancelledError",
    "PromptFraming",
    "RateLimitedError",
    "Reply",
    "ReplyTimeoutError",
    "ReplyTooLargeError",
    "RestartPolicy",
    "Session",
    "StartupError",
    "Ticket",
    "ToolError",
    "ToolNotFoundError",
    "ToolSpec",
    "ToolTotals",
    "Usage",
    "Workspace",
    "compare_jobs",
    "launch_cluster",
    "redact_argv",
    "run_jobs",
    "single_error",
]
