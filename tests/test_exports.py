"""The public names are a contract: code outside this repository is written against them."""

from __future__ import annotations

import aimcluster
import aimcluster.abc
import aimcluster.tools

EXPECTED = {
    "ROUTINGS",
    "AimclusterError",
    "AutoAnswerLimitError",
    "Cluster",
    "ClusterClosedError",
    "CompareRun",
    "Comparison",
    "DesyncError",
    "ClusterMetrics",
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
}
#: Public values that are neither classes nor functions (they have no ``__module__``).
CONSTANTS = {"ROUTINGS"}


def test_all_lists_exactly_the_public_names() -> None:
    assert set(aimcluster.__all__) == EXPECTED


def test_every_public_name_is_importable_and_reports_the_package_as_home() -> None:
    for name in set(aimcluster.__all__) - CONSTANTS:
        obj = getattr(aimcluster, name)
        assert obj.__module__.startswith("aimcluster"), name


def test_errors_share_one_base() -> None:
    for name in (
        "ToolNotFoundError",
        "StartupError",
        "ReplyTimeoutError",
        "InstanceCrashedError",
        "ClusterClosedError",
        "NoHealthyInstancesError",
        "ReplyTooLargeError",
        "InstanceStalledError",
        "PromptCancelledError",
        "ToolError",
        "AutoAnswerLimitError",
    ):
        assert issubclass(getattr(aimcluster, name), aimcluster.AimclusterError), name
    # read_any's own TimeoutError must not be confused with a prompt's timeout.
    assert not issubclass(aimcluster.ReplyTimeoutError, TimeoutError)


def test_cluster_api_names() -> None:
    for name in ("send", "submit", "read_any", "map", "lease", "metrics", "shutdown", "size"):
        assert hasattr(aimcluster.Cluster, name), name


def test_submodules() -> None:
    assert set(aimcluster.abc.__all__) == {"ProcessHandle", "Transport"}
    assert {"mock", "python", "bash", "get", "names", "register"} <= set(aimcluster.tools.__all__)


def test_instance_states_are_the_documented_strings() -> None:
    assert [s.value for s in aimcluster.InstanceState] == [
        "starting",
        "ready",
        "busy",
        "restarting",
        "failed",
        "stopped",
    ]


def test_routings_are_the_documented_names() -> None:
    assert aimcluster.ROUTINGS == ("round_robin", "least_busy", "sticky")
