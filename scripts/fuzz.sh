#!/usr/bin/env bash
# Fuzzes every cargo-fuzz target in fuzz/ for SECONDS each (default 60), one
# after the other, and stops at the first failure.
#
#   scripts/fuzz.sh [SECONDS]
#
# Needs only the stable toolchain: cargo-fuzz is installed when missing, and
# RUSTC_BOOTSTRAP=1 lets stable rustc take the nightly-only flags it passes
# (sanitizer coverage, AddressSanitizer). Each target's corpus grows in
# fuzz/corpus/TARGET and is reused by the next run; an input that fails is
# saved under fuzz/artifacts/TARGET, and libFuzzer prints the command that
# replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
[[ $seconds =~ ^[1-9][0-9]*$ ]] || { echo "usage: scripts/fuzz.sh [SECONDS]" >&2; exit 2; }

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list)
[ -n "$targets" ] || { echo "fuzz: no targets in fuzz/" >&2; exit 1; }
for target in $targets; do
  echo "fuzz: $target for ${seconds}s"
  cargo fuzz run "$target" -- -max_total_time="$seconds"
done
