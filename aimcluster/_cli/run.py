"""``aimcluster run``: its options, and its stages in order.

The stages: the options make a checked plan (:mod:`.run_plan`: items, jobs, tools, checks),
then either --compare runs it on every tool side by side, or the journal says what is left to
do and the batch runs it (:mod:`.run_execute`); last come the report and the summary.
"""

from __future__ import annotations

from typing import Any

import click

from aimcluster import ROUTINGS, RestartPolicy, tools

from .common import _console, _progress_option
from .isolation import ISOLATIONS
from .run_execute import compare_run, execute_run, finish_run
from .run_plan import DEFAULT_RUN_TIMEOUT, RunOptions, plan_run


@click.command(
    epilog="Exit codes: 0 all items done, 1 some failed, 2 bad usage or input (checked "
    "before any work starts), 3 the tool did not start, 4 the --max-cost or --max-tokens "
    "budget was spent before every item was done, 130 stopped by Ctrl-C (143 by SIGTERM, "
    "129 by SIGHUP)."
)
@click.argument("paths", nargs=-1, metavar="[FILE|GLOB]...")
@click.option(
    "--items-from-glob",
    "globs",
    multiple=True,
    metavar="GLOB",
    help="Files matching GLOB ('**' recurses), relative to --cwd. Repeatable.",
)
@click.option(
    "--items-file",
    metavar="FILE",
    help="One item per line ('-': stdin); blank lines and '#' comments skipped.",
)
@click.option(
    "--jsonl", metavar="FILE", help="One JSON object per line; its fields are {placeholders}."
)
@click.option(
    "--item-field",
    default="item",
    show_default=True,
    metavar="FIELD",
    help="The JSONL field that names each item.",
)
@click.option(
    "-s",
    "--step",
    "steps",
    multiple=True,
    metavar="PROMPT",
    help="A prompt of the job script, with {item}/{field} placeholders. Repeatable.",
)
@click.option(
    "-t",
    "--tool",
    "tool_options",
    required=True,
    multiple=True,
    metavar="TOOL[=COUNT]",
    help=f"A built-in tool ({', '.join(tools.names())}), optionally with extra "
    "arguments ('mock --delay 0.1'), or a .toml/.json ToolSpec file; '=COUNT' runs COUNT "
    "instances of it. Repeat for a cluster of several tools: any job runs on any of them.",
)
@click.option(
    "-n",
    "--count",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Instances of each --tool given without '=COUNT' (never more than there are jobs).",
)
@click.option(
    "--fallback",
    metavar="TOOL,TOOL,...",
    help="With several --tool: the failover order. A job whose tool is rate-limited, has "
    "failed, or (--failover-after) keeps it waiting moves to the next tool of the order; "
    "'none': jobs never move [default: the --tool order].",
)
@click.option(
    "--failover-after",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="With several --tool: a job that waited this long for its tool moves to the next "
    "one of --fallback.",
)
@click.option(
    "--routing",
    type=click.Choice(ROUTINGS),
    default=None,
    help="How jobs pick instances [default: sticky with --sticky-by, else least_busy].",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="How long each step's reply (and --verify) may take; an instance "
    "that overruns is restarted and the job fails (or is retried) "
    f"[default: the tool's reply_timeout, else {DEFAULT_RUN_TIMEOUT:g}].",
)
@click.option(
    "--fail-on",
    "fail_on",
    multiple=True,
    metavar="REGEX",
    help="A step whose reply matches REGEX (searched, Python syntax) fails its item. "
    "Repeatable; adds to the tool's own failure replies.",
)
@click.option(
    "--no-default-fail-on",
    is_flag=True,
    help="Do not treat the tool's own failure replies (aider's \"Can't edit\"...) as failures.",
)
@click.option(
    "--verify",
    metavar="CMD",
    help="After each job, run CMD (split like a shell would, run without one; write "
    "'sh -c ...' for one) in the job's working directory, with the same {placeholders}: "
    "a non-zero exit fails the item.",
)
@click.option(
    "--exclude",
    "excludes",
    multiple=True,
    metavar="GLOB",
    help="Leave out items matching GLOB ('**' spans directories; without a '/' it also "
    "matches the file name at any depth). Repeatable.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Run at most N jobs (of those not done yet); the rest wait for the next run.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Show the jobs that would run, with their steps, and those skipped as done; "
    "start nothing.",
)
@click.option(
    "--max-restarts",
    type=click.IntRange(min=0),
    default=RestartPolicy().max_restarts,
    show_default=True,
    help="Restarts an instance may have within --restart-window before it is given up.",
)
@click.option(
    "--restart-window",
    type=click.FloatRange(min=0, min_open=True),
    default=RestartPolicy().window,
    show_default=True,
    metavar="SECONDS",
    help="The window --max-restarts counts in.",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Run a failed job again, from its first step, up to this many times.",
)
@click.option(
    "--max-cost",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="USD",
    help="Start no new job once the replies have cost USD dollars, as the tool reports "
    "(claude, aider; codex and gemini report no cost); jobs in flight finish. Exit code 4 "
    "if items are left.",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Start no new job once the replies have used N tokens (input plus output), as "
    "the tool reports. Exit code 4 if items are left.",
)
@click.option(
    "--sticky-by",
    metavar="FIELD",
    help="Jobs with the same FIELD value run one after another, on one instance.",
)
@click.option(
    "--isolation",
    type=click.Choice(ISOLATIONS),
    default="none",
    show_default=True,
    help="none: all instances in --cwd. dir: each instance runs in a directory of its own "
    "(for the tool's files), path items are absolute, and all edit the one tree. worktree: "
    "each instance in a git worktree of its own; each item's change is committed, and all "
    "land on one result branch.",
)
@click.option(
    "--result-branch",
    metavar="NAME",
    help="With --isolation worktree: the branch that gets every item's commit, in item "
    "order [default: aimcluster/run-<run id>].",
)
@click.option(
    "--keep-worktrees",
    is_flag=True,
    help="With --isolation worktree: keep the worktrees (under .git/aimcluster/) and the "
    "instance branches.",
)
@click.option(
    "--compare",
    is_flag=True,
    help="Run every job once on each --tool, each tool in git worktrees of its own with its "
    "results on a branch of its own (aimcluster/run-<run id>-<tool>), and show the results "
    "side by side: passed or which check failed, time, attempts, cost. Keeps no journal. "
    "Exit code 0 if every job passed on every tool.",
)
@click.option(
    "--journal",
    default="aimcluster-journal.jsonl",
    show_default=True,
    metavar="PATH",
    help="Append each finished job here; the next run skips the items done there by the "
    "same job (same steps, tool and checks).",
)
@click.option("--no-journal", is_flag=True, help="Keep no journal (and resume nothing).")
@click.option("--fresh", is_flag=True, help="Run every item, whatever the journal says.")
@click.option("--report", metavar="PATH", help="Write the summary as JSON to PATH.")
@click.option(
    "--cwd",
    type=click.Path(exists=True, file_okay=False),
    default=".",
    show_default=True,
    help="Where the tool runs and item paths are resolved.",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="On Ctrl-C (or SIGTERM, SIGHUP), how long jobs in flight may take to finish.",
)
@_progress_option
@click.pass_context
def run(ctx: click.Context, /, **given: Any) -> int:
    """Run a job script (the --step prompts) for every item, on a cluster of TOOL.

    Items are files (paths or globs), lines of --items-file, or objects of --jsonl. Each job
    holds one instance while its steps run, so '/add {item}', then an instruction, then
    '/drop {item}' reach the same agent. Jobs on the same item (or --sticky-by value) never
    overlap and run in order; the rest run in parallel.

    An item is done when its job got a reply to every step, no reply reports a failure (the
    tool's own failure replies and --fail-on), and --verify exits 0. The journal keeps each
    job's transcript ('aimcluster show ITEM'); a new run skips the items done by the same job
    (same steps, tool and checks) and runs the rest.

    Several --tool options make one cluster of several tools ('--tool aider=4 --tool
    claude=2'): each job runs, whole, on one instance of any of them, and moves to the next
    tool of --fallback when its own is rate-limited or has failed (never run twice). The
    summary, --report and the journal say which tool ran each job and which jobs moved.

    \b
    Example:
      aimcluster run --tool mock 'pkg/**/*.py' \\
        --step '/add {item}' --step 'Add a DOC_ID header to {item}' --step '/drop {item}'
    """
    # One keyword per option, named as RunOptions' fields: attrs refuses a missing or extra one.
    options = RunOptions(**given)
    console = _console()
    plan = plan_run(options)
    if options.compare:
        compare_run(ctx, console, options, plan)
    ran = execute_run(ctx, console, options, plan)
    finish_run(console, options, plan, ran)
    ctx.exit(ran.outcome.exit_code)
