"""aimcluster: run a fleet of interactive command-line tools as one supervised async cluster."""

from __future__ import annotations

from ._cluster import Cluster as Cluster
from ._cluster import launch_cluster as launch_cluster
from ._compare import CompareRun as CompareRun
from ._compare import Comparison as Comparison
from ._compare import ToolTotals as ToolTotals
from ._compare import compare_jobs as compare_jobs
from ._exceptions import AimclusterError as AimclusterError
from ._exceptions import AutoAnswerLimitError as AutoAnswerLimitError
from ._exceptions import ClusterClosedError as ClusterClosedError
from ._exceptions import DesyncError as DesyncError
from ._exceptions import InstanceCrashedError as InstanceCrashedError
from ._exceptions import NoHealthyInstancesError as NoHealthyInstancesError
from ._exceptions import PromptCancelledError as PromptCancelledError
from ._exceptions import RateLimitedError as RateLimitedError
from ._exceptions import ReplyTimeoutError as ReplyTimeoutError
from ._exceptions import ReplyTooLargeError as ReplyTooLargeError
from ._exceptions import StartupError as StartupError
from ._exceptions import ToolError as ToolError
from ._exceptions import ToolNotFoundError as ToolNotFoundError
from ._exceptions import single_error as single_error
from ._framing import JsonlFraming as JsonlFraming
from ._framing import OneshotFraming as OneshotFraming
from ._framing import PromptFraming as PromptFraming
from ._instance import InstanceStalledError as InstanceStalledError
from ._instance import InstanceState as InstanceState
from ._jobs import Job as Job
from ._jobs import JobResult as JobResult
from ._jobs import JobRun as JobRun
from ._jobs import Workspace as Workspace
from ._jobs import run_jobs as run_jobs
from ._lease import Session as Session
from ._metrics import ClusterMetrics as ClusterMetrics
from ._metrics import InstanceMetrics as InstanceMetrics
from ._metrics import PoolMetrics as PoolMetrics
from ._policy import RestartPolicy as RestartPolicy
from ._pool import Pool as Pool
from ._pool import PoolInfo as PoolInfo
from ._redact import redact_argv as redact_argv
from ._request import Reply as Reply
from ._request import Ticket as Ticket
from ._routing import ROUTINGS as ROUTINGS
from ._spec import Probe as Probe
from ._spec import ToolSpec as ToolSpec
from ._transport import LocalTransport as LocalTransport
from ._usage import Usage as Usage

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
