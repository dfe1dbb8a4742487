#!/usr/bin/env bash
# The whole test suite (unit, property, end-to-end and command-line tests), in release mode so
# the 10 M-record and 10 MB acceptance runs stay quick, plus a build of the benchmarks; before
# it, formatting, clippy and rustdoc with every warning an error.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
eval "$(./scripts/speedb-lib.sh)"
cargo fmt --all --check
cargo clippy --release --locked --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
cargo test --release --locked --workspace
cargo bench --locked --workspace --no-run
