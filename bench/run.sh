#!/usr/bin/env bash
# Builds tokengate in release mode and runs the benchmark harness (benches/proxy.rs).
#
#   bench/run.sh           full run; writes BENCHMARKS.md
#   bench/run.sh --smoke   a few seconds, checks the harness and prints figures
#
# With TOKENGATE_BENCH_PG_URL (a PostgreSQL database URL) scenario B also runs on
# PostgreSQL; with TOKENGATE_BENCH_LITELLM (the litellm executable; scripts/lib.sh's
# ensure_litellm installs the pinned one) scenarios C and D run too.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

args=("$@")
if [ "${1:-}" != "--smoke" ]; then
  args+=(--out BENCHMARKS.md)
  if [ -z "${TOKENGATE_BENCH_LITELLM:-}" ]; then
    ensure_litellm
    export TOKENGATE_BENCH_LITELLM="$LITELLM_VENV/bin/litellm"
  fi
fi
log "building tokengate (release)"
cargo build --release --quiet --bin tokengate
log "running the benchmark harness ${args[*]}"
timeout 900 cargo bench --quiet --bench proxy -- "${args[@]}"
