#!/usr/bin/env bash
# The fuzz smoke of `make test` (issue 14): every target for FUZZ_SMOKE_SECONDS, FUZZ_SMOKE_JOBS targets at a time
# (libFuzzer runs one process per target, so two jobs keep both cores of a 2-core CI machine busy and the pass costs
# half its serial time). Each run reads the committed corpus, rust/fuzz/corpus/<target>/, and writes what it finds
# to a scratch directory, so that the tree stays clean. Exits non-zero when any target fails; its output says which.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${FUZZ_SMOKE_SECONDS:-30}
jobs=${FUZZ_SMOKE_JOBS:-2}
limits=${FUZZ_LIMITS:-"-rss_limit_mb=1024 -malloc_limit_mb=64"}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

one() {
  local t=$1
  mkdir -p "$scratch/$t" "rust/fuzz/corpus/$t"
  # shellcheck disable=SC2086 # $limits is a list of flags
  if RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir rust/fuzz "$t" "$scratch/$t" "rust/fuzz/corpus/$t" -- \
      -max_total_time="$seconds" $limits >"$scratch/$t.log" 2>&1; then
    echo "fuzz $t: $(grep -E '^#[0-9]+[[:space:]]+DONE' "$scratch/$t.log" | tail -1)"
  else
    echo "fuzz $t: FAILED"
    { grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$scratch/$t.log" || tail -20 "$scratch/$t.log"; } | sed "s/^/fuzz $t: /"
    return 1
  fi
}
export -f one
export scratch seconds limits

printf '%s\n' "$@" | xargs -P "$jobs" -I{} bash -c 'one "$1"' _ {}
