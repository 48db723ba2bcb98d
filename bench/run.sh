#!/usr/bin/env bash
# Builds tokengate in release mode and runs the benchmark harness (benches/proxy.rs).
#
#   bench/run.sh           full run; writes BENCHMARKS.md
#   bench/run.sh --smoke   a few seconds, checks the harness and prints figures
#   bench/run.sh --quick   saturation and 1,000/s only, printed, for trying a change
#
# The full run starts a throwaway PostgreSQL cluster (or uses TOKENGATE_BENCH_PG_URL)
# for scenario B on PostgreSQL, and the pinned LiteLLM (or TOKENGATE_BENCH_LITELLM)
# for scenarios C and D. `--only B` runs scenarios A and O and the B scenarios only.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

args=("$@")
# --smoke and --quick print their figures and need no other service.
case " $* " in
  *" --smoke "* | *" --quick "*) full=false ;;
  *) full=true ;;
esac
if $full; then
  args+=(--out BENCHMARKS.md)
  if [ -z "${TOKENGATE_BENCH_LITELLM:-}" ]; then
    ensure_litellm
    export TOKENGATE_BENCH_LITELLM="$LITELLM_VENV/bin/litellm"
  fi
  if [ -z "${TOKENGATE_BENCH_PG_URL:-}" ]; then
    WORK=$(mktemp -d /tmp/tokengate-bench.XXXXXX)
    cleanup() {
      stop_throwaway_postgres
      rm -rf "$WORK"
    }
    trap cleanup EXIT
    start_throwaway_postgres "$WORK"
    export TOKENGATE_BENCH_PG_URL="$PG_URL"
  fi
fi
log "building tokengate (release)"
cargo build --release --quiet --bin tokengate
log "running the benchmark harness ${args[*]}"
timeout 900 cargo bench --quiet --bench proxy -- "${args[@]}"
