#!/usr/bin/env bash
# The whole test suite, from a fresh machine: formatting and lints, then every test
# on SQLite and again on a throwaway PostgreSQL cluster (and on SQLite once more from a
# month's last second and from a year's last second, so that no test depends on the
# date it runs on), with a real LiteLLM proxy
# and the official openai SDK installed from PyPI, and real SMTP servers (Debian's
# python3-aiosmtpd) and a headless Chromium (Debian's) started by the tests,
# LibreChat's own npm packages and Debian's docker-compose for the deployment pack,
# and Podman with a debootstrapped Debian base to build and run the Dockerfile, and
# the previous release's binary (built from its commit) beside this one.
# Stops everything it started. Browser screenshots land in test-artifacts/screenshots/.
# Ends with a bounded coverage-guided fuzzing run (scripts/fuzz.sh).
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -- FILTER       # only tests whose name matches FILTER
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

filter=()
if [ "${1:-}" = "--" ]; then shift; filter=("$@"); fi

command -v cargo >/dev/null || die "cargo is missing: install Rust (rustup) first"
# Incremental caches only speed up a second build of the same tree; a run from a clean
# clone would write about 1 GB of them for nothing.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# A full disk mid-run shows up as a compiler error far from its cause, so say up front
# what there is. Measured from a clean clone: 1.5 GB of test builds and 1 GB of fuzz
# builds; on a new machine also about 2.3 GB of LiteLLM, npm and crates.io caches and
# Debian packages (Chromium, PostgreSQL).
free_mb=$(df -Pm . | awk 'NR==2 {print $4}')
log "disk: ${free_mb} MB free here; a run from a clean clone on a new machine needs about 5,000 MB"
if [ "${free_mb:-0}" -lt 5000 ]; then
  warn "less than 5,000 MB free: builds may fail with \"No space left on device\""
fi
ensure_litellm
ensure_smtp_tools
ensure_browser
ensure_npm_packages
ensure_compose
ensure_podman
# The previous release's binary, for the rolling-upgrade test (built into the same
# target folder first: it shares the dependencies the tests build next).
ensure_previous_release
WORK=$(mktemp -d /tmp/tokengate-test.XXXXXX)
cleanup() {
  stop_throwaway_postgres
  rm -rf "$WORK"
}
trap cleanup EXIT
start_throwaway_postgres "$WORK"

export TOKENGATE_TEST_PG_URL="$PG_URL"
# libpq probes for Kerberos (GSSAPI) encryption on every connection by default, which
# starts libkrb5: a test process that exits while a pool thread is still connecting
# then aborts in libkrb5's teardown (an assertion in krb5int_getspecific) after its
# test passed. The throwaway cluster has no Kerberos; the tests and every process they
# start skip the probe.
export PGGSSENCMODE=disable
# For tests that stop and start a PostgreSQL server of their own.
export TOKENGATE_TEST_PG_BIN="$PGBIN"
export TOKENGATE_TEST_LITELLM="$LITELLM_VENV/bin/litellm"
export TOKENGATE_TEST_PYTHON="$LITELLM_VENV/bin/python"
export TOKENGATE_TEST_SMTP_PYTHON=/usr/bin/python3
export TOKENGATE_TEST_NODE_MODULES="$NPM_DIR/node_modules"
export TOKENGATE_TEST_PREVIOUS_BIN="$PREVIOUS_BIN"

# The container image is built and run by a test (deploy::the_image_runs_...) with
# Podman, on a Debian base made with debootstrap.
export TOKENGATE_TEST_PODMAN_BASE="$PODMAN_BASE"

log "cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
log "cargo clippy"
cargo clippy --quiet --all-targets --all-features -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
  run_tests() { cargo nextest run --no-fail-fast "${filter[@]}"; }
else
  run_tests() { cargo test --no-fail-fast -- "${filter[@]}"; }
fi

status=0
log "tests on SQLite"
TOKENGATE_TEST_BACKEND=sqlite run_tests || status=1
log "tests on PostgreSQL"
TOKENGATE_TEST_BACKEND=postgres run_tests || status=1
# No test may pass or fail by the calendar: every test's clock starts at
# TOKENGATE_TEST_START, and the processes and command lines it starts share it.
for start in 2026-11-30T23:59:59.999-03:00 2026-12-31T23:59:59.999-03:00; do
  log "tests on SQLite, the clock starting at $start (a month's and a year's last second)"
  TOKENGATE_TEST_BACKEND=sqlite TOKENGATE_TEST_START=$start run_tests || status=1
done
log "benchmark harness, smoke run (debug build; bench/run.sh gives the real figures)"
TOKENGATE_BENCH_BIN="$PWD/target/debug/tokengate" timeout 300 \
  cargo test --quiet --bench proxy -- --smoke || status=1
if [ ${#filter[@]} -eq 0 ]; then
  log "fuzzing, bounded run (scripts/fuzz.sh SECONDS runs longer)"
  bash scripts/fuzz.sh "${TOKENGATE_FUZZ_SECONDS:-20}" || status=1
fi
if [ "$status" -ne 0 ]; then die "some tests failed (see above)"; fi
log "all tests passed on SQLite and PostgreSQL"
