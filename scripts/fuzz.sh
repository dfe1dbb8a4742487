#!/usr/bin/env bash
# Runs libFuzzer on the wire-protocol decoder (netstack/fuzz, target frame_decoder) for SECONDS
# (default 60), starting from the committed corpus; new inputs that reach new code are added to
# netstack/fuzz/corpus/frame_decoder and crashes land in netstack/fuzz/artifacts/frame_decoder.
# Developers only: the test suite runs a bounded, seeded mutation loop instead
# (netstack/tests/frame_fuzz.rs), which needs neither cargo-fuzz nor nightly.
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept the sanitizer flags cargo-fuzz passes.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN="${1:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
RUSTC_BOOTSTRAP=1 exec cargo fuzz run frame_decoder --fuzz-dir netstack/fuzz -- -max_total_time="$SECONDS_TO_RUN"
