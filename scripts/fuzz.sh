#!/usr/bin/env bash
# Coverage-guided fuzzing with cargo-fuzz (libFuzzer) on the stable toolchain, of the
# SSE scanner, the request-body parsing and rewriting, and the header decoding,
# against the properties in fuzz/checks.rs. Sanitizers need a nightly compiler and the
# crate forbids unsafe code, so the targets run without them (`-s none`).
#
#   scripts/fuzz.sh                 # 20 s per target: the test command's bounded run
#   scripts/fuzz.sh 3600            # an hour per target
#   scripts/fuzz.sh 600 body        # ten minutes of one target (sse, body, headers)
#
# The corpus grows in fuzz/corpus/<target>/ (not committed), seeded from
# fuzz/seeds/ and fuzz/regressions/. A finding is saved in fuzz/artifacts/<target>/:
# fix it, then copy the file into fuzz/regressions/<target>/, where
# tests/fuzz_regressions.rs replays it on every test run.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(sse body headers)

# The same flags for build and run, or `cargo fuzz run` builds again.
flags=(-s none --codegen-units 16)
ensure_cargo_fuzz
log "building the fuzz targets (coverage instrumentation; a few minutes the first time)"
if ! cargo fuzz build "${flags[@]}" >fuzz/build.log 2>&1; then
  tail -n 40 fuzz/build.log >&2
  if grep -q "No space left on device" fuzz/build.log; then
    die "the disk is full ($(df -Pm . | awk 'NR==2 {print $4}') MB free): the fuzz build needs about 1,000 MB"
  fi
  die "the fuzz targets do not build (log: fuzz/build.log)"
fi
status=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  cp -n fuzz/seeds/"$t"/* fuzz/regressions/"$t"/* "fuzz/corpus/$t/" 2>/dev/null || true
  log "fuzzing $t for ${seconds} s"
  if ! cargo fuzz run "${flags[@]}" "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 >"fuzz/$t.log" 2>&1; then
    tail -n 40 "fuzz/$t.log" >&2
    log "fuzz target $t failed: the input is in fuzz/artifacts/$t/ (log: fuzz/$t.log)"
    status=1
  else
    grep -E "^stat::number_of_executed_units|^Done" "fuzz/$t.log" | tr '\n' ' ' || true
    echo
  fi
done
exit "$status"
