#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/, one at a time (the machine has two cores), and
# prints one line per target: executions, seconds, and whether it crashed.
#
#   scripts/fuzz.sh                       # 20 s per target
#   scripts/fuzz.sh -runs=1000000         # the long run recorded in FUZZING.md
#   scripts/fuzz.sh -max_total_time=300 protocol jwt   # some targets only
#
# The first argument, when it starts with '-', is passed to libFuzzer; the rest name
# targets (default: all). Each target starts from its committed seeds (fuzz/seeds/<t>/)
# and keeps what it finds in fuzz/corpus/<t>/ (not committed); a crash input is written
# to fuzz/artifacts/<t>/. The toolchain is stable: RUSTC_BOOTSTRAP=1 unlocks the nightly
# flags cargo-fuzz passes. Not part of scripts/test.sh: the sanitizer build of the whole
# dependency tree takes several minutes on a fresh clone. CI runs the same checks as
# seeded property tests instead (tests/it/decoders.rs).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

limit="-max_total_time=20"
if [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; then
  limit="$1"
  shift
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(protocol awareness sharedb delta jwt docname rest event_id update)
fi

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O

failed=0
mkdir -p logs
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log="logs/$t.log"
  status=ok
  cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- "$limit" -print_final_stats=1 >"$log" 2>&1 || status=CRASHED
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  echo "$t: ${runs:-?} executions in ${secs:-?} s, $status ($limit; log fuzz/$log)"
  [ "$status" = ok ] || failed=1
done
exit $failed
