#!/usr/bin/env bash
# The test command (the README's, and the one .ci/run uses): sets up everything the tests need
# in ./.venv (the package with its test and ray extras) and runs the whole suite with coverage.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k sticky`.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${AIMCLUSTER_VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
fi
"$venv/bin/python" -m pip install -q -e ".[test,ray]"

# aider pins its own dependency versions, so it lives in a virtualenv of its own, as with
# pipx; the integration tests find it through AIMCLUSTER_AIDER.
AIMCLUSTER_AIDER="$(bash .ci/install-aider | tail -n 1)"
export AIMCLUSTER_AIDER
# The real Claude Code, Codex CLI and Gemini CLI, at pinned versions, in a local npm prefix.
clis="$(bash .ci/install-clis | tail -n 1)"
export AIMCLUSTER_CLAUDE="$clis/claude" AIMCLUSTER_CODEX="$clis/codex" AIMCLUSTER_GEMINI="$clis/gemini"
# In CI a missing tool is a failure, never a silent skip.
if [ "${CI:-}" = "true" ]; then
    export AIMCLUSTER_REQUIRE_INTEGRATION=1
    export AIMCLUSTER_REQUIRE_RAY=1
fi

# pytest exits 5 when it collects no test; like any non-zero status, that fails the run.
# No test reads the terminal; stand-ins that read an open stdin (as codex does) must not
# inherit it, so the suite runs the same from a shell as in CI.
# Coverage starts before pytest (not through pytest-cov): the package's own pytest plugin is
# imported while pytest starts, and its module-level code would otherwise count as unrun.
# Nothing a tool under test tries on its own (telemetry, update checks, model lists) may leave
# the machine: where it can (as root, with unshare and ip), pytest runs in a network namespace
# of its own that has only loopback, so such a call fails at once instead of reaching out or
# hanging. Ray's local test cluster works there too. AIMCLUSTER_NETNS=0 runs without it.
isolated=()
if [ "${AIMCLUSTER_NETNS:-1}" = 0 ]; then
    echo "tests/run.sh: note: AIMCLUSTER_NETNS=0: the tests may reach the network" >&2
elif [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && command -v ip >/dev/null \
    && unshare --net true 2>/dev/null; then
    isolated=(unshare --net -- sh -c 'ip link set lo up && exec "$@"' sh)
    export AIMCLUSTER_NETNS_ACTIVE=1  # tests/test_netns.py checks that it holds
    echo "tests/run.sh: running the tests in a network namespace with only loopback" >&2
else
    echo "tests/run.sh: note: no network namespace (needs root, unshare and ip):" \
        "the tests may reach the network" >&2
fi
"$venv/bin/python" -m coverage erase
${isolated[@]+"${isolated[@]}"} "$venv/bin/python" -m coverage run -m pytest "$@" </dev/null
"$venv/bin/python" -m coverage report --fail-under=90
